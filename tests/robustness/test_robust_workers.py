"""``--workers 2``: both worker processes serve, and ``/metrics`` counts the
requests of all of them, whichever worker answers the scrape."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from process import server_process
from prometheus_text import metric_with
from service_harness import WAIT_S, Repo

from bench.serve.loadgen import Request, load

INFER_ROUTE = {"method": "POST", "route": "/v2/models/{name}/infer", "status": "200"}


def mlp_request(n_rows: int = 2) -> Request:
    x = np.random.default_rng(0).standard_normal((n_rows, 64)).astype(np.float32)
    head = json.dumps(
        {"inputs": [{"name": "input", "shape": [n_rows, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": x.nbytes}}]}
    ).encode()  # fmt: skip
    return Request(
        "/v2/models/mlp/infer",
        head + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(head))},
    )


def test_two_workers_serve_and_metrics_sum_over_both(repo: Repo, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # a previous run's file
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with server_process(repo.path, tmp_path, "--workers", "2", env=env) as server:
        assert not (metrics_dir / "counter_999999.db").exists()  # cleaned at start
        workers: Counter[str] = Counter()
        sent = 0
        for _ in range(10):  # fresh connections each round, until both workers answered
            result = load(
                "127.0.0.1",
                server.port,
                mlp_request(),
                concurrency=8,
                requests=200,
                on_response=lambda status, headers, body: workers.update(
                    [headers["x-bnfold-worker"]]
                ),
            )
            assert result.statuses == {200: 200} and result.transport_errors == 0
            sent += 200
            if len(workers) == 2:
                break
        assert len(workers) == 2, workers  # two processes answered inference requests
        assert sum(workers.values()) == sent
        pids = {int(p) for p in workers}
        assert server.proc.pid not in pids  # the workers, not the supervisor

        scrapes = []
        for _ in range(6):  # a new connection each time: any worker may answer
            r = httpx.get(f"{server.url}/metrics", timeout=10)
            assert r.status_code == 200
            scrapes.append((r.headers["x-bnfold-worker"], r.text))
        for _, text in scrapes:
            assert metric_with(text, "bnfold_inference_requests_total", model="mlp") == sent
            assert metric_with(text, "bnfold_inference_duration_seconds_count", model="mlp") == sent
            assert metric_with(text, "bnfold_http_requests_total", **INFER_ROUTE) == sent
            ready = [
                metric_with(text, "bnfold_model_ready", model="mlp", version="1", pid=str(pid))
                for pid in pids
            ]
            assert ready == [1.0, 1.0]  # one live series per worker
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(WAIT_S) == 0
    assert not list(metrics_dir.glob("gauge_liveall_*.db"))  # dead workers' gauges dropped
    assert list(metrics_dir.glob("counter_*.db"))  # counts stay for the sums


def test_one_worker_keeps_plain_metrics(repo: Repo, tmp_path: Path) -> None:
    with server_process(repo.path, tmp_path) as server:
        result = load("127.0.0.1", server.port, mlp_request(), concurrency=4, requests=40)
        assert result.statuses == {200: 40}
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert metric_with(text, "bnfold_inference_requests_total", model="mlp") == 40
        assert 'pid="' not in text  # no multiprocess labels
        assert "bnfold_inference_requests_created" in text  # plain mode's extra samples
        server.proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once shut down: killed by SIGTERM, cleanly
        assert server.proc.wait(WAIT_S) in (0, -signal.SIGTERM)
