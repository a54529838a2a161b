"""``bnfold serve --poll`` picks up a version that ``bnfold convert`` writes while
requests are running, and no request fails."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bnfold.converter.pipeline import ConvertOptions, convert

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_harness import base_settings, run_server  # noqa: E402

QUICK = ["--arch", "mlp", "--data", "digits", "--epochs", "1", "--limit", "200"]


def test_poll_serves_a_version_convert_writes_under_traffic(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    convert(ConvertOptions(arch="mlp", data="digits", repo=repo, name="m", epochs=1, limit=200))
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    with run_server(base_settings(repo, poll_s=0.2)) as server:

        def traffic() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                while not stop.is_set():
                    r = http.post("/v2/models/m/infer", json=body)
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.append(r.json()["model_version"])

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            written = subprocess.run(
                [sys.executable, "-m", "bnfold", "convert", *QUICK, "--repo", str(repo),
                 "--name", "m"],
                cwd=tmp_path, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert written.returncode == 0, written.stderr
            assert (repo / "m" / "2").is_dir()
            deadline = time.monotonic() + 120
            # Wait for the event: answers from version 2, then a few more after it.
            while versions.count("2") < 20:
                assert time.monotonic() < deadline, "version 2 never answered"
                assert sender.is_alive()
                time.sleep(0.05)
        finally:
            stop.set()
            sender.join(60)
    assert len(statuses) > 20 and set(statuses) == {200}
    first_v2 = versions.index("2")
    assert set(versions[:first_v2]) == {"1"} and set(versions[first_v2:]) == {"2"}
