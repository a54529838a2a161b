"""``python -m service`` in a process of its own, for what a thread cannot
show: several workers, SIGTERM, a crash. Bounded waits only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from service_harness import WAIT_S

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def server_process(
    repo: Path, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Start the server, wait until ready (``WAIT_S`` at most), kill it at
    the end if the test did not stop it."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BNFOLD_", "PROMETHEUS_"))}
    clean |= {
        "PYTHONPATH": str(ROOT),
        "BNFOLD_LOG_LEVEL": "warning",
        "BNFOLD_ACCESS_LOG": "false",
        "BNFOLD_API_TOKEN": "test-token",
        # Repositories here hold broken models on purpose: "ready" means started.
        "BNFOLD_STRICT_READINESS": "false",
        "BNFOLD_GRPC_PORT": "0",  # HTTP only: no shared port 8001 between test servers
        **(env or {}),
    }
    log = workdir / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bnfold.service",
                "--repo",
                str(repo),
                "--port",
                str(port),
                *args,
            ],
            cwd=workdir,
            env=clean,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers too can be stopped as one group
        )
    running = ServerProcess(proc, port, log)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if httpx.get(f"{running.url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{running.output()}")
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
