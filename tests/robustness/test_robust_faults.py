"""Faults while a bounded concurrent client keeps sending: a new version
dropped into the repository and loaded, a corrupt version appearing, a
served file corrupted in place, a model unloaded, and SIGTERM.

No accepted request fails: every answer is a 200, or, for the model that
was unloaded, a clean 503 with ``Retry-After``; the corrupt versions are
reported in the index and everything else keeps serving; on SIGTERM the
requests in flight (and those sent while the server drains) complete.
(tests/service covers reloads and unload under traffic one at a time;
here they happen together, on several models, under heavier load.)
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from process import server_process
from robust_models import small_repo
from served_models import write_mlp
from service_harness import (
    TOKEN,
    WAIT_S,
    Repo,
    RunningServer,
    base_settings,
    run_server,
    wait_until,
)

from bench.serve.loadgen import LoadResult, Request, load
from bnfold.converter.repository import write_version

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def infer_request(model: str, input_name: str, row_shape: tuple[int, ...]) -> Request:
    x = np.random.default_rng(1).standard_normal((2, *row_shape)).astype(np.float32)
    head = json.dumps(
        {"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": x.nbytes}}]}
    ).encode()  # fmt: skip
    return Request(
        f"/v2/models/{model}/infer",
        head + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(head))},
    )


class Traffic:
    """One bounded load per model, each in a thread of its own, until stopped."""

    def __init__(self, port: int, repo: Repo, models: list[str], concurrency: int) -> None:
        self.stop = threading.Event()
        self.versions: dict[str, Counter[str]] = {m: Counter() for m in models}
        self.refused: Counter[str] = Counter()  # 503s per model
        self._pool = ThreadPoolExecutor(len(models))
        self.futures: dict[str, Future[LoadResult]] = {}
        for model in models:
            info = repo[model]
            self.futures[model] = self._pool.submit(
                load,
                "127.0.0.1",
                port,
                infer_request(model, info.input, info.row_shape),
                concurrency=concurrency,
                duration_s=600.0,  # a cap; the test stops it long before
                stop=self.stop.is_set,
                on_response=self._recorder(model),
            )

    def _recorder(self, model: str):  # type: ignore[no-untyped-def]
        def record(status: int, headers: dict[str, str], body: bytes) -> None:
            if status == 200:
                n = int(headers.get("inference-header-content-length", len(body)))
                self.versions[model][json.loads(body[:n])["model_version"]] += 1
            elif status == 503:
                self.refused[model] += 1

        return record

    def served(self, model: str) -> int:
        return sum(self.versions[model].values())

    def wait_for(self, model: str, n: int) -> None:
        """Until ``model`` has ``n`` more 200s than now."""
        target = self.served(model) + n
        wait_until(lambda: self.served(model) >= target, f"{n} more answers from {model}")

    def finish(self) -> dict[str, LoadResult]:
        self.stop.set()
        results = {m: f.result(timeout=WAIT_S) for m, f in self.futures.items()}
        self._pool.shutdown()
        return results


@pytest.fixture()
def fault_server(tmp_path: Path) -> Iterator[tuple[RunningServer, Repo]]:
    repo = small_repo(tmp_path / "models")
    with run_server(base_settings(repo.path)) as server:
        yield server, repo


def test_versions_corruption_and_unload_under_load(
    fault_server: tuple[RunningServer, Repo],
) -> None:
    server, repo = fault_server
    port = int(server.host_port.rsplit(":", 1)[1])
    http = httpx.Client(base_url=server.url, timeout=30, headers=AUTH)
    traffic = Traffic(port, repo, ["mlp", "other", "cnn"], concurrency=6)
    try:
        traffic.wait_for("mlp", 50)
        # 1. a new version dropped in and loaded
        write_mlp(repo.path, "mlp", seed=5)
        r = http.post("/v2/repository/models/mlp/load")
        assert r.status_code == 200 and r.json()["version"] == "2"
        traffic.wait_for("mlp", 50)
        # 2. a corrupt version appears: refused, version 2 keeps serving
        write_version(
            repo.path,
            "mlp",
            model_onnx=b"\x08\x07garbage" * 100,
            reference_onnx=b"nor this",
            manifest={"format": 1},
        )
        r = http.post("/v2/repository/models/mlp/load")
        assert r.status_code == 400 and "not an ONNX model" in r.json()["error"]
        # 3. the served file of another model corrupted in place: the session
        #    in memory keeps serving, a reload is refused by the sha256 check
        (repo.path / "other" / "1" / "model.onnx").write_bytes(b"\0" * 64)
        r = http.post("/v2/repository/models/other/load")
        assert r.status_code == 400 and "does not match the manifest" in r.json()["error"]
        traffic.wait_for("other", 50)
        # 4. a model unloaded while its clients keep sending
        traffic.wait_for("cnn", 50)
        assert http.post("/v2/repository/models/cnn/unload").status_code == 200
        # the cnn clients keep sending to the unloaded model, and are refused
        wait_until(lambda: traffic.refused["cnn"] > 0, "a 503 from the unloaded cnn")
        traffic.wait_for("mlp", 50)
        traffic.wait_for("other", 50)
    finally:
        results = traffic.finish()

    for model in ("mlp", "other"):
        assert results[model].transport_errors == 0
        assert set(results[model].statuses) == {200}, results[model].samples[:3]
    assert set(traffic.versions["mlp"]) == {"1", "2"}  # old, then new; never 3
    assert set(traffic.versions["other"]) == {"1"}
    cnn = results["cnn"]
    assert cnn.transport_errors == 0 and cnn.statuses[200] >= 50 and cnn.statuses[503] > 0
    assert set(cnn.statuses) == {200, 503}
    for status, headers, body in cnn.samples:  # the 503s: clean, with Retry-After
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body) == {"error": "model 'cnn' is not ready: unloaded"}

    index = {(e["name"], e.get("version")): e for e in http.post("/v2/repository/index").json()}
    assert index["mlp", "2"]["state"] == "READY"
    assert index["mlp", "3"]["state"] == "UNAVAILABLE"
    assert "not an ONNX model" in index["mlp", "3"]["reason"]
    assert index["other", "1"]["state"] == "READY"  # still the session loaded before
    assert index["cnn", "1"] == {
        "name": "cnn",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    }
    http.close()


def _send(port: int, path: str, body: bytes) -> http.client.HTTPConnection:
    """A request written to the server in full; its answer is read later."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    return conn


def _answer(conn: http.client.HTTPConnection) -> int:
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def test_sigterm_under_load_completes_every_accepted_request(repo: Repo, tmp_path: Path) -> None:
    """SIGTERM while 16 connections send and 4 slow requests wait in a queue.
    The client stops sending once readiness turns 503, as a load balancer
    would; the server keeps serving through the drain, then finishes what
    it holds and exits. The drain is long and ended by a second SIGTERM once
    the client has stopped, so no step races the drain's clock (the drain
    ending by itself: tests/service/test_service_shutdown.py)."""
    env = {"BNFOLD_DRAIN_S": "600", "BNFOLD_LOG_LEVEL": "info"}
    with server_process(repo.path, tmp_path, env=env) as server:
        stop = threading.Event()
        answered: Counter[int] = Counter()
        with ThreadPoolExecutor(1) as pool:
            fast = pool.submit(
                load,
                "127.0.0.1",
                server.port,
                infer_request("mlp", "input", (64,)),
                concurrency=16,
                duration_s=600.0,  # a cap; stopped long before
                stop=stop.is_set,
                on_response=lambda status, headers, body: answered.update([status]),
            )
            wait_until(lambda: answered[200] > 100 or fast.done(), "101 answers before SIGTERM")
            x = np.zeros((1, 64), np.float32).tolist()
            tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}
            body = json.dumps({"inputs": [tensor]}).encode()
            # sent in full before the signal; the slow model queues them 1.5 s
            slow = [_send(server.port, "/v2/models/slow/infer", body) for _ in range(4)]
            server.proc.send_signal(signal.SIGTERM)
            wait_until(
                lambda: (
                    httpx.get(f"{server.url}/v2/health/ready", timeout=WAIT_S).status_code == 503
                ),
                "readiness 503 after SIGTERM",
            )
            stop.set()  # not ready: the balancer sends no more
            result = fast.result(timeout=WAIT_S)
        server.proc.send_signal(signal.SIGTERM)  # the client has stopped: end the drain
        slow_statuses = [_answer(conn) for conn in slow]
        assert server.proc.wait(WAIT_S) in (0, -signal.SIGTERM)
    assert result.transport_errors == 0
    assert set(result.statuses) == {200} and result.ok > 100
    assert slow_statuses == [200, 200, 200, 200]
    log = server.output()
    assert "SIGTERM: not ready" in log and "models released" in log
