"""What operators watch a server with (issue 21): a client that goes away
cancels its queued request, Triton's trace settings, OpenTelemetry spans
over OTLP and JSON log lines.

- Cancellation is counted, never timed: requests wait in a model whose
  batch window (60 s, 4 rows) holds them until a fourth row arrives; the
  test waits for the queue-depth gauge, disconnects real clients (httpx,
  grpc.aio), waits for the gauge to fall, then fills a batch and reads how
  many rows and batches ran.
- Spans are received by a collector in this process (a real HTTP server on
  127.0.0.1 decoding OTLP/HTTP protobuf with opentelemetry-proto) from a
  server process whose stderr is parsed line by line as JSON.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_harness import run_grpc_server
from prometheus_text import QueueGauges, metric
from served_models import ModelInfo, write_mlp
from server_process import free_port, spawn
from service_harness import TOKEN, base_settings, rows, wait_until
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bnfold.service.batching import Batcher

TIMEOUT = 60.0  # a guard against a hang, never a measure
WINDOW = "window"  # holds requests for its batch window until 4 rows wait
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lowercase
INFO = ModelInfo(WINDOW, "input", (64,))


def v2(x: np.ndarray) -> dict[str, Any]:
    data = x.ravel().tolist()
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": data}]}


def grpc_request(x: np.ndarray, name: str = WINDOW) -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=list(x.shape)
    )
    return service_pb2.ModelInferRequest(
        model_name=name, inputs=[tensor], raw_input_contents=[x.astype(np.float32).tobytes()]
    )


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("observability")
    # not eager, a 60 s window and 4 rows a batch: requests wait in the queue
    # until the fourth row arrives, whatever the machine's speed
    write_mlp(repo, WINDOW, max_batch_size=4, delay_ms=60_000.0, queue=16, eager=False)
    write_mlp(repo, "mlp", seed=1)
    return repo


# ------------------------------------------------------------ the batcher alone
class Seen:
    """A batcher observer: batches that ran and callers that went away."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cancelled: list[str] = []

    def batch_done(self, rows: int, queue_s: Sequence[float], *timings: float) -> None:
        self.rows.append(rows)

    def batch_failed(self, requests: int, error: BaseException) -> None:
        pass

    def request_cancelled(self, stage: str) -> None:
        self.cancelled.append(stage)


async def until(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.001)


def test_a_cancelled_queued_request_leaves_the_queue_and_never_runs() -> None:
    """Queued: out of the queue at once, never in a batch. Computing: its
    batch finishes (the rows ran), its result is dropped."""
    ran: list[int] = []

    async def main() -> None:
        seen = Seen()
        gate, started = threading.Event(), threading.Event()

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            ran.append(len(feeds["x"]))
            started.set()
            assert gate.wait(TIMEOUT)
            return {"y": feeds["x"] * 2}

        def x(n: int) -> dict[str, np.ndarray]:
            return {"x": np.ones((n, 3), dtype=np.float32)}

        with ThreadPoolExecutor(1) as pool:
            b = Batcher(
                run, executor=pool, max_rows=64, max_delay_s=0.0, max_queue_size=10, observer=seen
            )
            b.start()
            computing = asyncio.ensure_future(b.submit(x(1), 1, timeout=TIMEOUT))
            await until(started.is_set)
            queued = [asyncio.ensure_future(b.submit(x(2), 2, timeout=TIMEOUT)) for _ in range(3)]
            kept = asyncio.ensure_future(b.submit(x(5), 5, timeout=TIMEOUT))
            await until(lambda: b.pending == 4)
            for task in queued:
                task.cancel()
            computing.cancel()
            await asyncio.gather(*queued, computing, return_exceptions=True)
            assert b.pending == 1  # out of the queue at once, not when a batch is taken
            assert sorted(seen.cancelled) == ["computing", "queued", "queued", "queued"]
            gate.set()
            result = await kept
            assert result["y"].shape == (5, 3)
            await b.close(timeout=TIMEOUT)
        # the computing batch finished; the three cancelled never ran
        assert ran == [1, 5] and seen.rows == [1, 5]
        assert (b.queued, b.in_flight) == (0, 0)

    asyncio.run(main())


# ------------------------------------------------------------ a real server
def test_clients_that_go_away_cancel_their_queued_requests(windowed: Path) -> None:
    """Three HTTP clients disconnect and two gRPC calls are cancelled while
    their requests wait in the batcher: none of them runs (the one batch
    that runs has the 4 rows of the request sent afterwards), and
    ``bnfold_requests_cancelled_total`` says so per protocol."""
    settings = base_settings(windowed, request_timeout_s=TIMEOUT * 2)
    labels = {"model": WINDOW, "version": "1"}
    with run_grpc_server(settings) as server:

        async def main() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
                gauges = QueueGauges(http, labels, TIMEOUT)

                # HTTP: three clients, each on its own connection
                clients = [
                    httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) for _ in range(3)
                ]
                sent = [
                    asyncio.ensure_future(
                        c.post(f"/v2/models/{WINDOW}/infer", json=v2(rows(INFO, 1, i)))
                    )
                    for i, c in enumerate(clients)
                ]
                await gauges.wait((3, 3))
                for task in sent:
                    task.cancel()  # httpx drops the connection: the server sees it close
                for c in clients:
                    await c.aclose()
                await gauges.wait((0, 0))

                # gRPC: two calls, cancelled by the client
                async with grpc.aio.insecure_channel(server.grpc) as channel:
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                    calls = [stub.ModelInfer(grpc_request(rows(INFO, 1, 9 + i))) for i in range(2)]
                    await gauges.wait((2, 2))
                    for call in calls:
                        call.cancel()
                    for call in calls:
                        with pytest.raises(asyncio.CancelledError):
                            await call
                    await gauges.wait((0, 0))

                    text = (await http.get("/metrics")).text
                    cancelled = "bnfold_requests_cancelled_total"
                    for protocol, n in (("http", 3), ("grpc", 2)):
                        got = metric(text, cancelled, **labels, protocol=protocol, stage="queued")
                        assert got == n, protocol
                    route = "/v2/models/{name}/infer"
                    closed = {"method": "POST", "route": route, "status": "499"}
                    assert metric(text, "bnfold_http_requests_total", **closed) == 3
                    # nothing has run yet; four rows fill one batch, which runs alone
                    stats = (await http.get(f"/v2/models/{WINDOW}/stats")).json()
                    assert stats["model_stats"][0]["execution_count"] == 0
                    r = await http.post(f"/v2/models/{WINDOW}/infer", json=v2(rows(INFO, 4, 7)))
                    assert r.status_code == 200
                    assert r.json()["outputs"][0]["shape"] == [4, 10]
                    stats = (await http.get(f"/v2/models/{WINDOW}/stats")).json()
                    model = stats["model_stats"][0]
                    assert (model["inference_count"], model["execution_count"]) == (4, 1)
                    text = (await http.get("/metrics")).text
                    assert metric(text, "bnfold_batch_size_sum", **labels) == 4
                    assert metric(text, "bnfold_batch_size_count", **labels) == 1
                    assert await gauges.read() == (0, 0)

        asyncio.run(main())


# ------------------------------------------------------------ trace settings
TRITON_DEFAULTS = {
    "trace_file": "",
    "trace_level": ["OFF"],
    "trace_rate": "1",
    "trace_count": "-1",
    "log_frequency": "0",
    "trace_mode": "opentelemetry",
}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"trace_level": ["TIMESTAMPS"]}, "needs an OTLP endpoint"),
        ({"trace_level": ["TENSORS"]}, "'TENSORS' is not supported"),
        ({"trace_level": ["LOUD"]}, "unknown trace_level 'LOUD'"),
        ({"trace_file": "/tmp/trace.json"}, "'trace_file' cannot be changed"),
        ({"log_frequency": "10"}, "'log_frequency' cannot be changed"),
        ({"trace_rate": "0"}, "'trace_rate' must be at least 1"),
        ({"trace_rate": "often"}, "must be an integer"),
        ({"trace_count": "-2"}, "'trace_count' must be -1"),
        ({"colour": "blue"}, "unknown trace setting 'colour'"),
        ({"trace_rate": 5}, ""),  # a number, not its string
    ],
)
def test_trace_settings_refused_without_changing_anything(
    windowed: Path, body: dict[str, Any], problem: str
) -> None:
    with (
        run_grpc_server(base_settings(windowed)) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http,
    ):
        r = http.post("/v2/trace/setting", json={"trace_count": "3", **body})
        assert r.status_code == 400, r.text
        assert problem in r.json()["error"]
        assert http.get("/v2/trace/setting").json() == TRITON_DEFAULTS


def test_trace_settings_over_http_and_grpc_with_tritonclient(windowed: Path) -> None:
    with run_grpc_server(base_settings(windowed)) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        rpc = triton_grpc.InferenceServerClient(server.grpc)
        assert http.get_trace_settings(headers=AUTH) == TRITON_DEFAULTS
        assert "trace" in http.get_server_metadata()["extensions"]
        # a model's own values; the server's stay
        after = http.update_trace_settings(
            WINDOW, {"trace_rate": "5", "trace_count": "10"}, headers=AUTH
        )
        assert after == {**TRITON_DEFAULTS, "trace_rate": "5", "trace_count": "10"}
        assert http.get_trace_settings(headers=AUTH) == TRITON_DEFAULTS
        got = rpc.get_trace_settings(WINDOW, headers=GRPC_AUTH, as_json=True)["settings"]
        assert got["trace_rate"] == {"value": ["5"]} and got["trace_level"] == {"value": ["OFF"]}
        # server-wide over gRPC; the model keeps its own rate, takes the count back
        rpc.update_trace_settings(settings={"trace_rate": "3"}, headers=GRPC_AUTH)
        cleared = http.update_trace_settings(WINDOW, {"trace_count": None}, headers=AUTH)
        assert (cleared["trace_rate"], cleared["trace_count"]) == ("5", "-1")
        assert http.get_trace_settings(headers=AUTH)["trace_rate"] == "3"
        # the token guards them; an unknown model is 404
        with httpx.Client(base_url=server.url, timeout=30) as plain:
            assert plain.get("/v2/trace/setting").status_code == 401
            r = plain.get("/v2/models/nope/trace/setting", headers=AUTH)
            assert r.status_code == 404
        with pytest.raises(Exception, match=r"UNAUTHENTICATED|bearer token"):
            rpc.get_trace_settings()
        http.close()
        rpc.close()


# ------------------------------------------------------------ spans and JSON logs
class Collector:
    """An OTLP/HTTP trace collector on 127.0.0.1: every span it receives."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[Any] = []
        self.paths: list[str] = []
        lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with lock:
                    collector.paths.append(self.path)
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            collector.spans.extend(scope.spans)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def by_request(self, rid: str) -> dict[str, Any]:
        """The spans of the request whose id is ``rid``, by name."""
        requests = [s for s in list(self.spans) if attribute(s, "bnfold.request_id") == rid]
        if len(requests) != 1:
            return {}
        root = requests[0]
        found = {"request": root}
        for span in list(self.spans):
            if span.trace_id == root.trace_id and span.parent_span_id == root.span_id:
                found[span.name] = span
        return found


def attribute(span: Any, key: str) -> str | None:
    for kv in span.attributes:
        if kv.key == key:
            return str(kv.value.string_value)
    return None


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def access_line(text: str, rid: str) -> dict[str, Any]:
    lines = [j for j in json_lines(text) if j["logger"] == "bnfold.access"]
    mine = [j for j in lines if j.get("request_id") == rid]
    assert len(mine) == 1, lines
    return mine[0]


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    pytest.importorskip("opentelemetry.sdk")
    with Collector() as running:
        yield running


def test_spans_share_the_trace_id_of_the_log_line(
    windowed: Path, collector: Collector, tmp_path: Path
) -> None:
    grpc_port = free_port()
    args = ("--log-format", "json", "--access-log", "--otlp-endpoint", collector.url)
    env = {"OTEL_BSP_SCHEDULE_DELAY": "20", "BNFOLD_GRPC_PORT": str(grpc_port)}
    x = rows(ModelInfo("mlp", "input", (64,)), 2, 3)
    client_trace, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with spawn(windowed, tmp_path, *args, **env) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            wait_until(lambda: http.get("/v2/health/ready").status_code == 200, "ready")
            # HTTP, with the client's W3C trace context
            headers = {
                "X-Request-ID": "http-1",
                "traceparent": f"00-{client_trace}-{client_span}-01",
            }
            r = http.post("/v2/models/mlp/infer", json=v2(x), headers=headers)
            assert r.status_code == 200
            # gRPC, without: a trace of its own
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                stub.ModelInfer(grpc_request(x, "mlp"), metadata=(("x-request-id", "grpc-1"),))
            wait_until(lambda: len(collector.by_request("http-1")) == 3, "the HTTP spans")
            wait_until(lambda: len(collector.by_request("grpc-1")) == 3, "the gRPC spans")
            assert set(collector.paths) == {"/v1/traces"}

            spans = collector.by_request("http-1")
            request, queue, compute = spans["request"], spans["queue"], spans["compute"]
            assert request.trace_id.hex() == client_trace
            assert request.parent_span_id.hex() == client_span
            assert attribute(request, "bnfold.model") == "mlp"
            assert attribute(request, "bnfold.version") == "1"
            assert attribute(request, "bnfold.protocol") == "http"
            assert queue.trace_id == compute.trace_id == request.trace_id
            # the queue ends where the compute starts, both inside the request
            assert request.start_time_unix_nano <= queue.start_time_unix_nano
            assert queue.end_time_unix_nano == compute.start_time_unix_nano
            assert compute.start_time_unix_nano <= compute.end_time_unix_nano
            assert compute.end_time_unix_nano <= request.end_time_unix_nano

            line = access_line(server.output(), "http-1")
            assert line["trace_id"] == client_trace
            assert (line["model"], line["version"], line["level"]) == ("mlp", "1", "INFO")
            assert line["message"].startswith("POST /v2/models/mlp/infer 200")

            g = collector.by_request("grpc-1")
            assert attribute(g["request"], "bnfold.protocol") == "grpc"
            assert not g["request"].parent_span_id
            assert g["request"].trace_id.hex() != client_trace
            line = access_line(server.output(), "grpc-1")
            assert line["trace_id"] == g["request"].trace_id.hex()
            assert line["message"].startswith("gRPC ModelInfer OK")

            # trace_rate 2 for the model: as Triton, the 2nd and 4th of the next five
            r = http.post("/v2/models/mlp/trace/setting", json={"trace_rate": "2"}, headers=AUTH)
            assert r.json()["trace_rate"] == "2"
            for i in range(5):
                headers = {"X-Request-ID": f"rated-{i}"}
                assert http.post("/v2/models/mlp/infer", json=v2(x), headers=headers).is_success
            # spans leave in order: once the fourth's are in, the others' before it would be
            wait_until(lambda: len(collector.by_request("rated-3")) == 3, "the fourth's spans")
            traced = [i for i in range(4) if collector.by_request(f"rated-{i}")]
            assert traced == [1, 3]
            untraced = access_line(server.output(), "rated-0")
            assert "trace_id" not in untraced and untraced["model"] == "mlp"

            # trace_level OFF server-wide: the model's own rate stays, nothing is traced
            r = http.post("/v2/trace/setting", json={"trace_level": ["OFF"]}, headers=AUTH)
            assert r.json()["trace_level"] == ["OFF"]
            r = http.post("/v2/models/mlp/infer", json=v2(x), headers={"X-Request-ID": "off"})
            assert r.is_success
            http.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"]}, headers=AUTH)
            for i in range(3):  # the model's 6th, 7th, 8th under rate 2: the 6th and 8th
                headers = {"X-Request-ID": f"on-{i}"}
                assert http.post("/v2/models/mlp/infer", json=v2(x), headers=headers).is_success
            wait_until(lambda: len(collector.by_request("on-2")) == 3, "tracing back on")
            assert len(collector.by_request("on-0")) == 3
            assert collector.by_request("off") == {} == collector.by_request("on-1")
            assert collector.by_request("rated-4") == {}

        # every line the server wrote is one JSON object, uvicorn's included
        text = server.output()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("{") for ln in lines), lines
    parsed = json_lines(text)
    assert {"timestamp", "level", "logger", "message"} <= set(parsed[0])
    assert any(j["logger"].startswith("uvicorn") for j in parsed), parsed
    assert any(j["logger"] == "bnfold.service" for j in parsed)


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported(windowed: Path) -> None:
    script = f"""
import sys
import time
from fastapi.testclient import TestClient
from bnfold.service.app import create_app
from bnfold.service.settings import Settings

app = create_app(Settings(repo={str(windowed)!r}, grpc_port=0, metrics_port=0, log_level="warning"))
with TestClient(app) as client:
    deadline = time.monotonic() + {TIMEOUT}  # models load behind the open port
    while client.get("/v2/models/mlp/ready").status_code != 200:
        assert time.monotonic() < deadline, "mlp never loaded"
        time.sleep(0.02)
    body = {{"inputs": [{{"name": "input", "shape": [1, 64], "datatype": "FP32",
                         "data": [0.5] * 64}}]}}
    assert client.post("/v2/models/mlp/infer", json=body).status_code == 200
loaded = sorted(m for m in sys.modules
                if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))
                or m == "bnfold.service.otel")
print(loaded)
"""
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
