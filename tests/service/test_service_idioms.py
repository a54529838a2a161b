"""The service's idioms, on a real server where it matters:

- every refused request is counted once in ``bnfold_inference_failures_total``
  with its reason, whichever route refused it and however early;
- one handler answers a route with and without ``/versions/{version}``;
- one table says what an internal error is to a client (HTTP and gRPC);
- the OpenAPI schema documents what is sent: no 422, ``{"error"}`` bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from prometheus_client.parser import text_string_to_metric_families
from served_models import write_mlp
from service_harness import (
    MAX_BODY,
    TOKEN,
    RunningServer,
    base_settings,
    post_in_background,
    run_server,
    wait_until,
)

from bnfold.contract import ContractError
from bnfold.service.app import create_app
from bnfold.service.batching import BatcherClosed, DeadlineExceeded, QueueFull
from bnfold.service.codec import decode_infer, decode_inputs
from bnfold.service.errors import (
    ERROR_MAP,
    BadRequest,
    InferenceFailed,
    InputTooLarge,
    LoadFailed,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    ShmUnopenable,
    TooManyChunks,
    Unauthorized,
    Unavailable,
    error_class,
    map_errors,
)
from bnfold.service.routes import ROUTERS
from bnfold.service.settings import Settings
from bnfold.service.signature import Signature, TensorSpec

AUTH = {"Authorization": f"Bearer {TOKEN}"}
Labels = tuple[str, str, str]  # model, version, reason


def tensor(n: int = 1, width: int = 64) -> dict[str, Any]:
    data = [0.5] * (n * width)
    return {"name": "input", "shape": [n, width], "datatype": "FP32", "data": data}


def v2(n: int = 1, width: int = 64, **extra: Any) -> dict[str, Any]:
    return {"inputs": [tensor(n, width)], **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("idiom-models")
    write_mlp(repo, "mlp")
    write_mlp(repo, "slow", delay_ms=1500.0, queue=1, eager=False)  # overloaded at once
    write_mlp(repo, "lazy", delay_ms=1500.0, eager=False)  # times out
    write_mlp(repo, "gone", seed=3)  # unloaded by a test
    with open(write_mlp(repo, "broken") / "model.onnx", "ab") as f:
        f.write(b"\0")  # not the manifest's sha256: never served
    with run_server(base_settings(repo)) as server:
        yield server


@pytest.fixture(scope="module")
def client(served: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def documented() -> dict[tuple[str, str], set[int]]:
    """(method, route template) -> the statuses the OpenAPI schema lists."""
    schema = create_app(Settings(repo=Path("models"))).openapi()
    return {
        (method.upper(), path): {int(s) for s in op["responses"]}
        for path, item in schema["paths"].items()
        for method, op in item.items()
    }


def failures(client: httpx.Client) -> dict[Labels, float]:
    text = client.get("/metrics").text
    return {
        (s.labels["model"], s.labels["version"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "bnfold_inference_failures"
        for s in family.samples
        if s.name == "bnfold_inference_failures_total"
    }


def requests_total(client: httpx.Client, model: str) -> float:
    text = client.get("/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "bnfold_inference_requests"
        for s in family.samples
        if s.name.endswith("_total") and s.labels["model"] == model
    )


def moved(before: dict[Labels, float], after: dict[Labels, float]) -> dict[Labels, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def oversized_chunks() -> Iterator[bytes]:  # no Content-Length: refused as it streams
    for _ in range(MAX_BODY // 65536 + 2):
        yield b"x" * 65536


# (method, path, request kwargs, status, labels counted, operation in the schema)
REFUSED: list[tuple[str, str, dict[str, Any], int, Labels, str | None]] = [
    ("POST", "/v2/models/nope/infer", {"json": v2()}, 404, ("", "", "not_found"), "infer"),
    ("GET", "/v2/models/nope", {}, 404, ("", "", "not_found"), "/v2/models/{name}"),
    ("GET", "/v3/anything", {}, 404, ("", "", "not_found"), None),
    (
        "GET",
        "/v2/models/mlp/versions/7",
        {},
        404,
        ("mlp", "", "not_found"),
        "/v2/models/{name}/versions/{version}",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": v2(width=63)},
        400,
        ("mlp", "1", "bad_request"),
        "infer",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"content": b"{oops"},
        400,
        ("mlp", "1", "bad_request"),
        "infer",
    ),
    (
        "POST",
        "/v2/models/mlp/versions/x/infer",
        {"json": v2()},
        400,
        ("mlp", "", "bad_request"),
        "/v2/models/{name}/versions/{version}/infer",
    ),
    (
        "POST",
        "/v2/models/mlp/classify?top_k=0",  # FastAPI's validation, before the handler
        {"files": {"file": b"x"}},
        400,
        ("mlp", "1", "bad_request"),
        "/v2/models/{name}/classify",
    ),
    (
        "POST",
        "/v2/repository/index",
        {"json": {"ready": "maybe"}, "headers": AUTH},
        400,
        ("", "", "bad_request"),
        "/v2/repository/index",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",  # refused by Content-Length, before any route
        {"content": b"x" * (MAX_BODY + 1)},
        400,  # Triton's status (issue 18; it was 413)
        ("", "", "too_large"),
        "infer",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"content": oversized_chunks},
        400,
        ("mlp", "1", "too_large"),
        "infer",
    ),
    (
        "POST",
        "/v2/models/broken/infer",
        {"json": v2()},
        503,
        ("broken", "", "unavailable"),
        "infer",
    ),
    (
        "GET",
        "/v2/models/broken/ready",
        {},
        503,
        ("broken", "", "unavailable"),
        "/v2/models/{name}/ready",
    ),
    ("POST", "/v2/repository/index", {}, 401, ("", "", "unauthorized"), "/v2/repository/index"),
    (
        "POST",
        "/v2/repository/models/mlp/load",
        {"headers": {"Authorization": "Bearer wrong"}},
        401,
        ("mlp", "1", "unauthorized"),
        "/v2/repository/models/{name}/load",
    ),
    ("GET", "/v2/models/mlp/infer", {}, 405, ("mlp", "1", "method_not_allowed"), None),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "labels", "operation"),
    REFUSED,
    ids=[f"{c[3]}-{c[0]} {c[1]}" for c in REFUSED],
)
def test_each_refused_request_is_counted_once_with_its_reason(
    client: httpx.Client,
    documented: dict[tuple[str, str], set[int]],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    labels: Labels,
    operation: str | None,
) -> None:
    if callable(kwargs.get("content")):
        kwargs = {**kwargs, "content": kwargs["content"]()}
    before = failures(client)
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"]
    assert moved(before, failures(client)) == {labels: 1.0}
    if operation is not None:
        template = "/v2/models/{name}/infer" if operation == "infer" else operation
        assert status in documented[(method, template)], (method, template)


def test_an_unloaded_model_is_counted(client: httpx.Client) -> None:
    assert client.post("/v2/models/gone/infer", json=v2()).status_code == 200
    assert client.post("/v2/repository/models/gone/unload", headers=AUTH).status_code == 200
    before, served_before = failures(client), requests_total(client, "gone")
    r = client.post("/v2/models/gone/infer", json=v2())
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert moved(before, failures(client)) == {("gone", "", "unavailable"): 1.0}
    assert requests_total(client, "gone") == served_before  # it reached no version


def test_overloaded_and_timed_out_are_counted(client: httpx.Client, served: RunningServer) -> None:
    before = failures(client)
    queued = post_in_background(served.url, "/v2/models/slow/infer", v2())
    slow = served.served("slow")
    wait_until(lambda: slow.batcher.pending == 1, "the queue (max_queue_size 1) holds it")
    r = client.post("/v2/models/slow/infer", json=v2())
    assert r.status_code == 503 and "overloaded" in r.json()["error"]
    queued.join()
    assert [a.status_code for a in queued.answers] == [200]
    r = client.post("/v2/models/lazy/infer", json=v2(parameters={"timeout": 100_000}))
    assert r.status_code == 503 and "no result within 0.1 s" in r.json()["error"]
    assert moved(before, failures(client)) == {
        ("slow", "1", "overloaded"): 1.0,
        ("lazy", "1", "timeout"): 1.0,
    }


def test_not_ready_is_counted(client: httpx.Client, served: RunningServer) -> None:
    state = served.server.config.app.state.bnfold
    before = failures(client)
    state.draining = True
    try:
        r = client.get("/v2/health/ready")
    finally:
        state.draining = False
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "draining" in r.json()["error"]
    assert moved(before, failures(client)) == {("", "", "unavailable"): 1.0}


def test_success_is_not_a_failure(client: httpx.Client) -> None:
    before = failures(client)
    assert client.post("/v2/models/mlp/versions/1/infer", json=v2(3)).status_code == 200
    r = client.post("/v2/models/mlp/parity", json={"inputs": [tensor(2)]})
    assert r.status_code == 200 and r.json()["n_samples"] == 2
    assert moved(before, failures(client)) == {}


# --- one handler for a route with and without a version


def test_versioned_routes_share_the_unversioned_handler() -> None:
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    by_path = {(r.path, m): r.endpoint for r in routes for m in r.methods}
    versioned = [(p, m) for p, m in by_path if p.startswith("/v2/models/{name}/versions/")]
    assert len(versioned) >= 8
    for path, method in versioned:
        plain = path.replace("/versions/{version}", "")
        assert by_path[(plain, method)] is by_path[(path, method)], (method, path)


def test_the_unversioned_path_takes_no_version_query(client: httpx.Client) -> None:
    assert client.get("/v2/models/mlp/config?version=7").status_code == 200
    assert client.get("/v2/models/mlp/versions/7/config").status_code == 404
    assert client.get("/v2/models/mlp/versions/1/config").json()["name"] == "mlp"
    r = client.post("/v2/models/mlp/versions/1/infer", json=v2(2))
    assert r.status_code == 200 and r.json()["model_version"] == "1"


# --- the error table


def test_every_service_error_names_its_http_and_grpc_status() -> None:
    grpc = pytest.importorskip("grpc")
    codes = {c.name for c in grpc.StatusCode}
    expected = {
        ServiceError: (500, "INTERNAL"),
        BadRequest: (400, "INVALID_ARGUMENT"),
        LoadFailed: (400, "INVALID_ARGUMENT"),
        Unauthorized: (401, "UNAUTHENTICATED"),
        NotFound: (404, "NOT_FOUND"),
        MethodNotAllowed: (405, "UNIMPLEMENTED"),
        PayloadTooLarge: (413, "RESOURCE_EXHAUSTED"),
        InputTooLarge: (400, "INVALID_ARGUMENT"),
        TooManyChunks: (400, "INVALID_ARGUMENT"),
        ShmUnopenable: (400, "INTERNAL"),  # Triton's gRPC status; a 400 over HTTP
        Unavailable: (503, "UNAVAILABLE"),
        Overloaded: (503, "UNAVAILABLE"),
        RequestTimeout: (503, "DEADLINE_EXCEEDED"),
        InferenceFailed: (500, "INTERNAL"),
    }
    for cls, (status, code) in expected.items():
        assert (cls.status, cls.grpc_code) == (status, code), cls
        assert cls.grpc_code in codes
    assert all(issubclass(v, ServiceError) for v in ERROR_MAP.values())


class _FullerQueue(QueueFull):
    pass


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (QueueFull("q"), Overloaded),
        (_FullerQueue("q"), Overloaded),  # along the MRO
        (DeadlineExceeded("d"), RequestTimeout),
        (BatcherClosed("c"), Unavailable),
        (ContractError("version must be a positive integer"), BadRequest),
        (NotFound("n"), NotFound),
        (ValueError("v"), None),
    ],
)
def test_error_class_by_table(exc: Exception, cls: type[ServiceError] | None) -> None:
    assert error_class(exc) is cls


def test_map_errors_keeps_the_messages_clients_see() -> None:
    with pytest.raises(Overloaded) as e1, map_errors(model="m", retry_after=1.0):
        raise QueueFull("2 requests are queued (max_queue_size)")
    assert e1.value.message == "model 'm' is overloaded: 2 requests are queued (max_queue_size)"
    assert e1.value.headers() == {"Retry-After": "1"}
    with pytest.raises(InferenceFailed) as e2, map_errors(InferenceFailed, model="m", version=3):
        raise RuntimeError("ORT said no\n  at some frame")
    assert e2.value.message == "model 'm' version 3 failed: ORT said no"
    assert e2.value.headers() == {}  # not a 503: no Retry-After
    original = BadRequest("as it was")
    with pytest.raises(BadRequest) as e3, map_errors(InferenceFailed):
        raise original
    assert e3.value is original
    with pytest.raises(KeyError), map_errors():  # unmapped, no fallback: unchanged
        raise KeyError("k")


# --- parity parses its inputs once: the parsed inputs go straight to the codec


def test_decode_inputs_takes_parsed_inputs() -> None:
    sig = Signature([TensorSpec("input", "FP32", (-1, 4))], [TensorSpec("y", "FP32", (-1, 2))], 8)
    inputs = [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8}]
    feeds, rows = decode_inputs(inputs, sig, max_elements=1 << 20, allow_nonfinite=False)
    assert rows == 2 and feeds["input"].shape == (2, 4)
    via_body = decode_infer(
        b'{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", '
        b'"data": [1, 1, 1, 1, 1, 1, 1, 1]}]}',
        None,
        sig,
        max_elements=1 << 20,
        allow_nonfinite=False,
    )
    assert (via_body.feeds["input"] == feeds["input"]).all()
    binary = [{**inputs[0], "data": None, "parameters": {"binary_data_size": 32}}]
    with pytest.raises(BadRequest, match="runs past the end of the body"):
        decode_inputs(binary, sig, max_elements=1 << 20, allow_nonfinite=False)


def test_parity_refuses_bad_inputs_as_inference_does(client: httpx.Client) -> None:
    bad = {"inputs": [{**tensor(), "data": [0.5] * 63}]}
    r = client.post("/v2/models/mlp/parity", json=bad)
    assert r.status_code == 400 and "63 values given" in r.json()["error"]


# --- the OpenAPI schema says what is sent


def test_openapi_lists_no_422_and_only_error_bodies() -> None:
    schema = create_app(Settings(repo=Path("models"))).openapi()
    assert not {"HTTPValidationError", "ValidationError"} & set(schema["components"]["schemas"])
    for path, item in schema["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"], (method, path)
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            for name in ("name", "version"):  # the version too, read through VersionDep
                assert ("{" + name + "}" in path) == (name in names), (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    content = response["content"]["application/json"]["schema"]
                    assert content == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)


def test_the_response_id_echoes_the_request_id(client: httpx.Client) -> None:
    assert client.post("/v2/models/mlp/infer", json=v2(id="req-7")).json()["id"] == "req-7"
    assert "id" not in client.post("/v2/models/mlp/infer", json=v2()).json()
    schema = create_app(Settings(repo=Path("models"))).openapi()["components"]["schemas"]
    response = schema["InferenceResponse"]
    assert response["properties"]["id"] == {"type": "string", "title": "Id"}  # no default
    assert "id" not in response["required"]
