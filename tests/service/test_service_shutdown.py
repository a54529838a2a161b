"""``python -m service`` in its own process: SIGTERM reports not-ready,
finishes the request in flight, then exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from service_harness import Repo, rows

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_drains_then_exits(repo: Repo, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
    env |= {"BNFOLD_DRAIN_S": "0.5", "BNFOLD_LOG_LEVEL": "info", "PYTHONPATH": str(ROOT)}
    # The repository holds broken models on purpose; readiness here means "started".
    env["BNFOLD_STRICT_READINESS"] = "false"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bnfold.service", "--repo", str(repo.path), "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        r = httpx.get(f"{url}/v2", headers={"X-Request-ID": "trace-me-7"}, timeout=5)
        assert r.headers["X-Request-ID"] == "trace-me-7"
        x = rows(repo["slow"], 1)
        body = {
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.tolist()}]
        }
        answer: dict[str, httpx.Response] = {}

        def in_flight() -> None:  # the slow model holds it 1.5 s in its queue
            answer["r"] = httpx.post(f"{url}/v2/models/slow/infer", json=body, timeout=30)

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        ready = httpx.get(f"{url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json() == {"error": "server is not ready: draining"}
        assert httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200
        t.join(30)
        assert answer["r"].status_code == 200
        got = np.array(answer["r"].json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(1, 10), repo.expected(repo["slow"], x), rtol=1e-5)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "SIGTERM: not ready" in text
    assert "models released" in text
    assert "[trace-me-7] GET /v2 200" in text  # the access log carries the request id
    assert "ready on CPUExecutionProvider" in text or "ready on CUDAExecutionProvider" in text
