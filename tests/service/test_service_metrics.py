"""Back-pressure (503 + Retry-After), request timeouts, Prometheus metrics,
Triton statistics and request ids, on the real server."""

from __future__ import annotations

import re
from typing import Any

import httpx
import numpy as np
from prometheus_text import metric_with
from service_harness import Repo, RunningServer, post_in_background, rows, wait_until


def v2(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
    return {"inputs": [tensor], **extra}


def test_full_queue_is_503_with_retry_after(
    server: RunningServer, http: httpx.Client, repo: Repo
) -> None:
    x = rows(repo["slow"], 1)  # slow: max_queue_size 2, 1.5 s queue delay
    slow = server.served("slow")
    before = http.get("/metrics").text
    queued = post_in_background(server.url, "/v2/models/slow/infer", v2(x), 2)
    wait_until(lambda: slow.batcher.pending == 2, "both requests queued")
    r = http.post("/v2/models/slow/infer", json=v2(x))
    # refused at once, not queued: answered while the two queued requests
    # still wait for their batch
    assert queued.answers == [] and slow.batcher.pending == 2
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert "overloaded" in r.json()["error"]
    queued.join()
    assert [a.status_code for a in queued.answers] == [200, 200]  # the queued ones are served
    after = http.get("/metrics").text
    labels = {"model": "slow", "version": "1"}
    assert metric_with(after, "bnfold_inference_failures_total", reason="overloaded", **labels) == (
        metric_with(before, "bnfold_inference_failures_total", reason="overloaded", **labels) + 1
    )
    # both queued requests ran as one batch of 2
    assert (
        metric_with(after, "bnfold_batch_size_bucket", le="2.0", **labels)
        - metric_with(before, "bnfold_batch_size_bucket", le="2.0", **labels)
        == 1
    )


def test_request_timeout_is_503(server: RunningServer, http: httpx.Client, repo: Repo) -> None:
    x = rows(repo["slow"], 1)
    slow = server.served("slow")
    # no timeout: answered when the 1.5 s batch window ends
    witness = post_in_background(server.url, "/v2/models/slow/infer", v2(x))
    wait_until(lambda: slow.batcher.pending == 1, "the witness request queued")
    r = http.post("/v2/models/slow/infer", json=v2(x, parameters={"timeout": 100_000}))
    assert witness.answers == []  # answered at its 0.1 s deadline, not when the batch left
    assert r.status_code == 503
    assert "no result within 0.1 s" in r.json()["error"]
    assert r.headers["Retry-After"] == "1"
    witness.join()
    assert witness.answers[0].status_code == 200


def test_prometheus_metrics_per_model_and_version(http: httpx.Client, repo: Repo) -> None:
    before = http.get("/metrics").text
    x = rows(repo["mlp"], 3)
    for _ in range(4):
        assert http.post("/v2/models/mlp/infer", json=v2(x)).status_code == 200
    assert http.post("/v2/models/mlp/infer", json=v2(x[:, :10])).status_code == 400
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    mlp = {"model": "mlp", "version": "1"}

    def delta(name: str, **labels: str) -> float:
        return metric_with(after, name, **labels) - metric_with(before, name, **labels)

    assert delta("bnfold_inference_requests_total", **mlp) == 5
    assert delta("bnfold_inference_failures_total", reason="bad_request", **mlp) == 1
    assert delta("bnfold_inference_duration_seconds_count", **mlp) == 4
    assert delta("bnfold_queue_duration_seconds_count", **mlp) == 4
    assert delta("bnfold_batch_size_sum", **mlp) == 12
    route = {"method": "POST", "route": "/v2/models/{name}/infer"}
    assert delta("bnfold_http_requests_total", status="200", **route) == 4
    assert delta("bnfold_http_requests_total", status="400", **route) == 1
    assert metric_with(after, "bnfold_model_ready", model="cnn", version="2") == 1.0
    provider = http.get("/v2/models/cnn").json()["parameters"]["provider"]
    assert f'provider="{provider}"' in after


def test_statistics_extension(triton: Any, repo: Repo, http: httpx.Client) -> None:
    import tritonclient.http as httpclient

    before = triton.get_inference_statistics("cnn")["model_stats"][0]
    x = rows(repo["cnn"], 2)
    inp = httpclient.InferInput(repo["cnn"].input, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(3):
        triton.infer("cnn", [inp])
    stats = triton.get_inference_statistics("cnn", "2")["model_stats"][0]
    assert (stats["name"], stats["version"]) == ("cnn", "2")
    assert stats["inference_count"] - before["inference_count"] == 6
    inference = stats["inference_stats"]
    assert inference["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(inference[key]) == {"count", "ns"}
    assert inference["compute_infer"]["ns"] > 0
    assert any(b["batch_size"] == 2 for b in stats["batch_stats"])
    assert stats["last_inference"] > 1_600_000_000_000  # milliseconds since the epoch
    all_stats = http.get("/v2/models/stats").json()["model_stats"]
    assert {"mlp", "cnn"} <= {s["name"] for s in all_stats}


def test_request_id_is_echoed_or_generated(http: httpx.Client) -> None:
    r = http.get("/v2/health/live", headers={"X-Request-ID": "trace-42"})
    assert r.headers["X-Request-ID"] == "trace-42"
    r = http.get("/v2/models/nope", headers={"X-Request-ID": "bad id with spaces"})
    assert r.status_code == 404
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    assert re.fullmatch(r"[0-9a-f]{32}", http.get("/v2").headers["X-Request-ID"])
