"""Triton's metrics families (``nv_*``, service/triton_metrics.py) on the real
server: the counts move as requests succeed and fail, by Triton's reasons;
Triton's metrics port serves them alone; its options (``--metrics-config``,
``--metrics-interval-ms``, ``--allow-metrics``) do what Triton's do; with
``--workers 2`` the port sums the workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_text import metric, metric_with
from pydantic import ValidationError
from server_process import free_port, spawn
from service_harness import WAIT_S, Repo, RunningServer, post_in_background, rows, wait_until

from bnfold.service.batching import QueueFull, QueueTimeout
from bnfold.service.errors import BadRequest, InferenceFailed, service_error
from bnfold.service.settings import Settings
from bnfold.service.triton_metrics import (
    DEFAULT_QUANTILES,
    MetricsServer,
    failure_reason,
    parse_metrics_config,
    parse_quantiles,
)

REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


def v2(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ]
    }


def nv(text: str, name: str, model: str, **labels: str) -> float:
    return metric_with(text, name, model=model, version="1", **labels)


# ------------------------------------------------------------ the session's server (/metrics)
def test_counts_move_as_requests_succeed_and_fail(
    server: RunningServer, http: httpx.Client, repo: Repo
) -> None:
    x = rows(repo["mlp"], 3)
    before = http.get("/metrics").text
    for _ in range(2):
        assert http.post("/v2/models/mlp/infer", json=v2(x)).status_code == 200
    wrong = http.post("/v2/models/mlp/infer", json=v2(x[:, :5]))  # a wrong shape
    assert wrong.status_code == 400
    after = http.get("/metrics").text

    def moved(name: str, **labels: str) -> float:
        return nv(after, name, "mlp", **labels) - nv(before, name, "mlp", **labels)

    assert moved("nv_inference_request_success") == 2
    assert moved("nv_inference_count") == 6  # rows
    assert 1 <= moved("nv_inference_exec_count") <= 2  # batches
    assert moved("nv_inference_request_failure", reason="OTHER") == 1
    for reason in ("REJECTED", "CANCELED", "BACKEND"):
        assert moved("nv_inference_request_failure", reason=reason) == 0
    for family in (
        "nv_inference_request_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert moved(family) > 0, family
    assert nv(after, "nv_inference_pending_request_count", "mlp") == 0
    # Triton's statistics and Triton's metrics are the same counts
    stats = http.get("/v2/models/mlp/versions/1/stats").json()["model_stats"][0]
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == nv(after, "nv_inference_request_success", "mlp")
    failed = sum(nv(after, "nv_inference_request_failure", "mlp", reason=r) for r in REASONS)
    assert inference["fail"]["count"] == failed
    assert stats["inference_count"] == nv(after, "nv_inference_count", "mlp")
    assert stats["execution_count"] == nv(after, "nv_inference_exec_count", "mlp")
    assert inference["queue"]["ns"] // 1000 == nv(after, "nv_inference_queue_duration_us", "mlp")
    # Triton's labels and no _total suffix; bnfold's own families stay beside them
    assert 'nv_inference_request_success{model="mlp",version="1"} ' in after
    assert "nv_inference_request_success_total" not in after
    assert "bnfold_inference_requests_total" in after


def test_a_full_queue_is_rejected_and_a_client_gone_is_canceled(
    server: RunningServer, http: httpx.Client, repo: Repo
) -> None:
    x = rows(repo["slow"], 1)  # slow: max_queue_size 2, 1.5 s queue delay
    slow = server.served("slow")
    before = http.get("/metrics").text

    def failures(reason: str) -> float:
        text = http.get("/metrics").text
        return nv(text, "nv_inference_request_failure", "slow", reason=reason) - nv(
            before, "nv_inference_request_failure", "slow", reason=reason
        )

    # REJECTED: a third request while two wait in the queue of two
    queued = post_in_background(server.url, "/v2/models/slow/infer", v2(x), 2)
    wait_until(lambda: slow.batcher.pending == 2, "both requests queued")
    pending = nv(http.get("/metrics").text, "nv_inference_pending_request_count", "slow")
    assert pending == 2
    assert http.post("/v2/models/slow/infer", json=v2(x)).status_code == 503
    queued.join()
    assert [a.status_code for a in queued.answers] == [200, 200]
    assert failures("REJECTED") == 1

    # CANCELED: a client that goes away while its request waits for a batch
    async def gone() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            sent = asyncio.ensure_future(c.post("/v2/models/slow/infer", json=v2(x)))
            async with asyncio.timeout(WAIT_S):
                while slow.batcher.pending != 1:
                    await asyncio.sleep(0.01)
            sent.cancel()  # httpx drops the connection: the server sees it close

    asyncio.run(gone())
    wait_until(lambda: failures("CANCELED") == 1, "the request counted CANCELED")
    assert failures("REJECTED") == 1 and failures("BACKEND") == 0 and failures("OTHER") == 0
    after = http.get("/metrics").text
    assert nv(after, "nv_inference_pending_request_count", "slow") == 0
    moved = nv(after, "nv_inference_request_success", "slow") - nv(
        before, "nv_inference_request_success", "slow"
    )
    assert moved == 2


# ------------------------------------------------------------ Triton's metrics port
def _ready(url: str, model: str) -> None:
    wait_until(
        lambda: httpx.get(f"{url}/v2/models/{model}/ready", timeout=5).status_code == 200,
        f"{model} ready",
    )


def test_the_metrics_port_serves_tritons_families_as_configured(repo: Repo, tmp_path: Path) -> None:
    port = free_port()
    config = ["summary_latencies=true", "histogram_latencies=true"]
    config += ["summary_quantiles=0.5:0.05,0.75:0.0.1", "counter_latencies=false"]
    env = {
        "BNFOLD_METRICS_PORT": str(port),
        "BNFOLD_METRICS_INTERVAL_MS": "50",
        "BNFOLD_METRICS_CONFIG": json.dumps(config),
    }
    with spawn(repo.path, tmp_path, **env) as server:
        _ready(server.url, "mlp")
        x = rows(repo["mlp"], 2)
        for _ in range(3):
            assert httpx.post(f"{server.url}/v2/models/mlp/infer", json=v2(x)).status_code == 200
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = scrape.text
        assert "bnfold_" not in text  # Triton's families alone, as on Triton's port
        kinds = {f.name: f.type for f in text_string_to_metric_families(text)}  # it parses
        assert kinds["nv_inference_request_summary_us"] == "summary"
        assert kinds["nv_inference_first_response_histogram_ms"] == "histogram"
        assert kinds["nv_inference_pending_request_count"] == "gauge"
        assert nv(text, "nv_inference_request_success", "mlp") == 3
        assert nv(text, "nv_inference_count", "mlp") == 6
        assert "nv_inference_request_duration_us" not in text  # counter_latencies=false
        labels = {"model": "mlp", "version": "1"}
        assert metric(text, "nv_inference_request_summary_us_count", **labels) == 3
        assert metric(text, "nv_inference_queue_summary_us_count", **labels) == 3
        for q in ("0.5", "0.75"):  # 0.0.1 is read as C++'s stod reads it
            assert metric(text, "nv_inference_request_summary_us", **labels, quantile=q) > 0
        assert 'quantile="0.9"' not in text
        histogram = "nv_inference_first_response_histogram_ms"
        assert metric(text, f"{histogram}_count", **labels) == 3
        assert metric(text, f"{histogram}_bucket", **labels, le="+Inf") == 3
        assert metric(text, f"{histogram}_bucket", **labels, le="100") == 3
        elsewhere = httpx.get(f"http://127.0.0.1:{port}/v2/health/live")
        assert elsewhere.status_code == 404 and "error" in elsewhere.json()
        posted = httpx.post(f"http://127.0.0.1:{port}/metrics")
        assert (posted.status_code, posted.json()) == (405, {"error": "Method Not Allowed"})

        # CPU families from /proc, sampled every interval: they move
        def cpu() -> tuple[float, float, float]:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
            values = (
                metric(text, "nv_cpu_utilization"),
                metric(text, "nv_cpu_memory_used_bytes"),
                metric(text, "nv_cpu_memory_total_bytes"),
            )
            assert None not in values
            return values  # type: ignore[return-value]

        first = cpu()
        utilization, used, total = first
        assert 0 <= utilization <= 1 and 0 < used <= total
        wait_until(lambda: cpu()[:2] != first[:2], "the CPU families sampled again")
        # the main port's /metrics has both sets
        main = httpx.get(f"{server.url}/metrics").text
        assert "nv_cpu_utilization" in main and "bnfold_inference_requests_total" in main


def test_without_allow_metrics_no_triton_family_and_no_port(repo: Repo, tmp_path: Path) -> None:
    port = free_port()
    env = {"BNFOLD_METRICS_PORT": str(port), "BNFOLD_ALLOW_METRICS": "false"}
    with spawn(repo.path, tmp_path, **env) as server:
        text = httpx.get(f"{server.url}/metrics").text
        assert "bnfold_http_requests_total" in text and "nv_" not in text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/metrics")


def test_with_two_workers_the_port_sums_the_workers(repo: Repo, tmp_path: Path) -> None:
    """Each request on a connection of its own, so the kernel spreads them
    over both workers; whichever worker answers the scrape counts them all."""
    one = tmp_path / "models"
    shutil.copytree(repo.path / "mlp", one / "mlp")
    port = free_port()
    env = {"BNFOLD_METRICS_PORT": str(port), "BNFOLD_METRICS_INTERVAL_MS": "50"}
    with spawn(one, tmp_path, "--workers", "2", **env) as server:
        _ready(server.url, "mlp")
        x = rows(repo["mlp"], 1)
        for _ in range(20):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                assert c.post("/v2/models/mlp/infer", json=v2(x)).status_code == 200

        def success() -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
            return nv(text, "nv_inference_request_success", "mlp")

        wait_until(lambda: success() == 20, "every worker's requests counted")
        for _ in range(5):  # whichever worker answers
            assert success() == 20


# ------------------------------------------------------------ Triton's option syntax
def test_metrics_config_is_read_as_triton_reads_it() -> None:
    assert parse_metrics_config([]).counter_latencies
    config = parse_metrics_config(
        ["counter_latencies=False", "summary_latencies=true", "histogram_latencies=yes", "x=1"]
    )
    # counters go off only for "false", the others on only for "true"; unknown: ignored
    assert config.counter_latencies and config.summary_latencies
    assert not config.histogram_latencies
    assert parse_quantiles("0.1:0.0.1,0.7:0.01,0.75:0.01") == (
        (0.1, 0.0),
        (0.7, 0.01),
        (0.75, 0.01),
    )
    assert parse_quantiles("0.5,x:1,0.9:0.01") == ((0.9, 0.01),)  # unreadable pairs skipped
    assert parse_metrics_config(["summary_quantiles=nonsense"]).quantiles == DEFAULT_QUANTILES
    for bad in ("summary_latencies", "model,summary_latencies=true", "=true", "counter_latencies="):
        with pytest.raises(ValidationError, match="--metrics-config option format is"):
            Settings(metrics_config=[bad])


def test_failure_reasons_are_tritons() -> None:
    def mapped(internal: Exception) -> BaseException:
        try:
            try:
                raise internal
            except Exception as e:
                error = service_error(e)
                assert error is not None
                raise error from None
        except Exception as e:
            return e

    assert failure_reason(mapped(QueueFull("Exceeds maximum queue size"))) == "REJECTED"
    assert failure_reason(mapped(QueueTimeout("Request timeout expired"))) == "REJECTED"
    assert failure_reason(asyncio.CancelledError()) == "CANCELED"
    assert failure_reason(InferenceFailed("onnxruntime failed")) == "BACKEND"
    assert failure_reason(BadRequest("wrong shape")) == "OTHER"


def test_a_busy_or_shared_metrics_port_exits_2_naming_it(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
        env["COLUMNS"] = "400"  # the error box on one line
        command = [sys.executable, "-m", "bnfold.service", "--repo", str(tmp_path), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    http, grpc = free_port(), free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        r = serve("--port", str(http), "--grpc-port", "0", "--metrics-port", str(busy))
    assert r.returncode == 2, r.stderr
    assert f"cannot listen on 127.0.0.1:{busy}" in r.stderr and "--metrics-port" in r.stderr
    r = serve("--port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(grpc))
    assert r.returncode == 2 and f"--metrics-port {grpc} is the HTTP or gRPC port too" in r.stderr
    r = serve("--port", str(http), "--metrics-config", "summary_latencies")
    assert r.returncode == 2
    assert "--metrics-config option format is <setting>=<value>. Got summary_latencies" in r.stderr


def test_the_metrics_port_closes_a_connection_past_its_limit_unanswered() -> None:
    """Clients that open connections and send nothing hold at most
    ``max_connections`` of them; one more is closed at once, and a scrape is
    answered again once one of them has gone."""

    async def scenario() -> None:
        server = MetricsServer(lambda: b"nv_x 1\n", max_connections=2, read_timeout_s=600)
        await server.start("127.0.0.1", 0)

        async def until(check: Any) -> None:
            async with asyncio.timeout(WAIT_S):
                while not check():
                    await asyncio.sleep(0.01)

        async def scrape() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            try:
                await writer.drain()
                answer = await reader.read()
            except ConnectionResetError:  # closed with the request unread
                answer = b""
            writer.close()
            return answer

        try:
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
            await until(lambda: server.connections == 2)
            assert await scrape() == b""  # closed unanswered
            assert server.connections == 2
            held[0][1].close()
            await until(lambda: server.connections == 1)
            answer = await scrape()
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(
                b"\r\n\r\nnv_x 1\n"
            )
            held[1][1].close()
        finally:
            await server.close()

    asyncio.run(scenario())
