"""``bnfold serve`` as a person starts it: a taken port is a clear usage error."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_a_taken_port_exits_2_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "bnfold", "serve", "--repo", str(tmp_path), "--port", str(port)],
            capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin"},
        )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
