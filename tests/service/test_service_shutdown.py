"""``python -m service`` in its own process: SIGTERM reports not-ready,
finishes the request in flight, then exits; and the drain's own clock."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from service_harness import WAIT_S, Repo, base_settings, rows, wait_until

from bnfold.service.deps import ServerState
from bnfold.service.shutdown import drain_on_sigterm

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_drains_then_exits(repo: Repo, tmp_path: Path) -> None:
    """SIGTERM: not ready at once, still serving while it drains; a second
    SIGTERM ends the drain (so that no check races the drain's clock); the
    request in flight is answered, then the process exits."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
    env |= {"BNFOLD_DRAIN_S": "600", "BNFOLD_LOG_LEVEL": "info", "PYTHONPATH": str(ROOT)}
    env["BNFOLD_ACCESS_LOG"] = "true"  # off by default; this test reads its request id
    # The repository holds broken models on purpose; readiness here means "started".
    env["BNFOLD_STRICT_READINESS"] = "false"
    env["BNFOLD_ACCESS_LOG"] = "true"  # off by default; its lines carry the request id
    env["BNFOLD_GRPC_PORT"] = "0"  # HTTP only: no shared port 8001 between test servers
    env["BNFOLD_METRICS_PORT"] = "0"  # nor 8002 (Triton's metrics port)
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
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        r = httpx.get(f"{url}/v2", headers={"X-Request-ID": "trace-me-7"}, timeout=WAIT_S)
        assert r.headers["X-Request-ID"] == "trace-me-7"
        x = rows(repo["slow"], 1)
        body = {
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.tolist()}]
        }
        # in flight: written in full before the signal; the slow model holds it 1.5 s
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("POST", "/v2/models/slow/infer", json.dumps(body))
        proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: httpx.get(f"{url}/v2/health/ready", timeout=WAIT_S).status_code == 503,
            "readiness 503 after SIGTERM",
        )
        ready = httpx.get(f"{url}/v2/health/ready", timeout=WAIT_S)
        assert ready.status_code == 503
        assert ready.json() == {"error": "server is not ready: draining"}
        assert httpx.get(f"{url}/v2/health/live", timeout=WAIT_S).status_code == 200
        proc.send_signal(signal.SIGTERM)  # a second SIGTERM skips the rest of the drain
        answer = conn.getresponse()
        assert answer.status == 200
        got = np.array(json.loads(answer.read())["outputs"][0]["data"], dtype=np.float32)
        conn.close()
        np.testing.assert_allclose(got.reshape(1, 10), repo.expected(repo["slow"], x), rtol=1e-5)
        assert proc.wait(timeout=WAIT_S) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "SIGTERM: not ready" in text
    assert "models released" in text
    assert "[trace-me-7] GET /v2 200" in text  # the access log carries the request id
    assert "ready on CPUExecutionProvider" in text or "ready on CUDAExecutionProvider" in text


def test_the_drain_ends_by_itself_then_hands_sigterm_on(tmp_path: Path) -> None:
    """``drain_on_sigterm`` in the main thread, as in a server process:
    SIGTERM turns readiness off at once and, ``drain_s`` later with no
    second signal, hands the signal to the handler installed before it
    (uvicorn's, which then stops the server)."""
    handed: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda sig, frame: handed.append(sig))
    state = ServerState(base_settings(tmp_path))
    state.started = True

    async def main() -> float:
        with drain_on_sigterm(state, 0.2):
            started = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                while not state.draining:
                    await asyncio.sleep(0.001)
                assert not state.ready and handed == []  # not ready, still serving
                while not handed:
                    await asyncio.sleep(0.01)
            return time.monotonic() - started

    try:
        seconds = asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, before)
    assert handed == [signal.SIGTERM]
    assert seconds >= 0.2  # a lower bound: the drain lasted at least drain_s
