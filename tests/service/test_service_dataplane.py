"""One table of requests, each sent over HTTP (V2 JSON, httpx) and over gRPC
(``ModelInferRequest`` by tritonclient's stub) to the same real server on
127.0.0.1: both protocols go through one data plane (service/dataplane.py),
so each validation rule answers the same message on both, with its HTTP
status and its gRPC code from the one error table (service/errors.py).

Then what only one wire has: Triton's raw binary request and its JSON
nesting limit (HTTP), and the codes of errors that never reach a model.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_harness import GrpcRunning, run_grpc_server
from service_harness import TOKEN, base_settings
from triton_models import write_simple_models
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bnfold.service.errors import (
    BadRequest,
    FilesRefused,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    Unavailable,
    Unimplemented,
)
from bnfold.service.protocol import DATATYPES

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcRunning]:
    repo: Path = tmp_path_factory.mktemp("dataplane-models")
    write_simple_models(repo)
    with run_grpc_server(base_settings(repo)) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: GrpcRunning) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: GrpcRunning) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


# ----- one request, two wires


@dataclass
class Tensor:
    name: str
    datatype: str = "INT32"
    shape: list[int] = field(default_factory=lambda: [1, 16])
    values: list[Any] | None = None  # default: 0..n-1
    parameters: dict[str, Any] = field(default_factory=dict)

    def data(self) -> list[Any]:
        if self.values is not None:
            return self.values
        return list(range(math.prod(self.shape)))


def simple_inputs() -> list[Tensor]:
    return [Tensor("INPUT0"), Tensor("INPUT1")]


@dataclass
class Case:
    id: str
    message: str  # in the error's text, on both protocols
    inputs: list[Tensor] = field(default_factory=simple_inputs)
    outputs: list[tuple[str, dict[str, Any]]] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    model: str = "simple"
    error: type[ServiceError] = BadRequest
    http_status: int = 400
    grpc_code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


def http_body(case: Case) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape}
            | ({"parameters": t.parameters} if t.parameters else {"data": t.data()})
            for t in case.inputs
        ]
    }
    if case.outputs is not None:
        body["outputs"] = [{"name": n} | ({"parameters": p} if p else {}) for n, p in case.outputs]
    if case.parameters:
        body["parameters"] = case.parameters
    return body


def set_parameter(target: Any, key: str, value: Any) -> None:
    entry = target[key]
    if isinstance(value, bool):
        entry.bool_param = value
    elif isinstance(value, int):
        entry.int64_param = value
    elif isinstance(value, float):
        entry.double_param = value
    else:
        entry.string_param = value


def raw_bytes(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        elements = [str(v).encode() for v in t.data()]
        return b"".join(struct.pack("<I", len(e)) + e for e in elements)
    dtype = DATATYPES[t.datatype]
    return np.asarray(t.data(), dtype=dtype.newbyteorder("<")).tobytes()


def grpc_request(case: Case) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=case.model)
    for t in case.inputs:
        tensor = request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        for key, value in t.parameters.items():
            set_parameter(tensor.parameters, key, value)
        if "shared_memory_region" not in t.parameters:
            request.raw_input_contents.append(raw_bytes(t))
    for name, params in case.outputs or ():
        output = request.outputs.add(name=name)
        for key, value in params.items():
            set_parameter(output.parameters, key, value)
    for key, value in case.parameters.items():
        set_parameter(request.parameters, key, value)
    return request


INPUT1 = Tensor("INPUT1")
CASES = [
    Case("unknown input", "unknown input 'NOPE'", [Tensor("INPUT0"), Tensor("NOPE")]),
    Case(
        "wrong datatype",
        "input 'INPUT1': datatype FP32 but the model expects INT32",
        [Tensor("INPUT0"), Tensor("INPUT1", "FP32", values=[0.5] * 16)],
    ),
    Case(
        "wrong shape",
        "input 'INPUT0': shape [1, 15] does not match the model's [-1, 16]",
        [Tensor("INPUT0", shape=[1, 15]), INPUT1],
    ),
    Case(
        "batch over the maximum",
        "input 'INPUT0': batch size 9 is outside 1..8",
        [Tensor("INPUT0", shape=[9, 16]), Tensor("INPUT1", shape=[9, 16])],
    ),
    Case("input twice", "input 'INPUT0' is given twice", [Tensor("INPUT0"), *simple_inputs()]),
    Case("missing input", "missing inputs ['INPUT1']", [Tensor("INPUT0")]),
    Case(
        "batch sizes disagree",
        "inputs disagree on the batch size",
        [Tensor("INPUT0", shape=[2, 16]), INPUT1],
    ),
    Case("no inputs", "inputs must be a non-empty list", []),
    Case(
        "NaN input",
        "input 'INPUT0' contains NaN or Inf",
        [Tensor("INPUT0", "FP32", values=[math.nan] + [0.0] * 15), Tensor("INPUT1", "FP32")],
        model="simple_fp32",
    ),
    Case("unknown output", "unknown output 'NOPE'", outputs=[("NOPE", {})]),
    Case(
        "output twice",
        "output 'OUTPUT0' already exists in request",
        outputs=[("OUTPUT0", {}), ("OUTPUT0", {})],
    ),
    Case(
        "classification not a count",
        "output 'OUTPUT0': parameters.classification must be a non-negative integer",
        outputs=[("OUTPUT0", {"classification": "three"})],
    ),
    Case(
        "classification of strings",
        "class result not available for output due to unsupported type 'BYTES' (output 'OUTPUT0')",
        [Tensor("INPUT0", "BYTES", values=["a", "b"], shape=[1, 2])],
        outputs=[("OUTPUT0", {"classification": 1})],
        model="simple_identity",
    ),
    Case(  # Triton's NOT_FOUND (shared_memory_manager.cc), issue 18
        "unknown shared memory region",
        "Unable to find shared memory region: 'nowhere'",
        [
            Tensor(
                "INPUT0",
                parameters={"shared_memory_region": "nowhere", "shared_memory_byte_size": 64},
            ),
            INPUT1,
        ],
        error=NotFound,
        http_status=404,
        grpc_code=grpc.StatusCode.NOT_FOUND,
    ),
    Case("sequence id", "sequence batching is not supported", parameters={"sequence_id": 7}),
    Case(
        "sequence start", "sequence batching is not supported", parameters={"sequence_start": True}
    ),
    Case(
        "triton_ parameter",
        "parameter keys starting with 'triton_' are reserved for Triton usage",
        parameters={"triton_anything": 1},
    ),
    Case("negative priority", "Unable to parse 'priority'", parameters={"priority": -1}),
    Case(
        "negative timeout",
        "parameters.timeout must be a non-negative integer (microseconds)",
        parameters={"timeout": -5},
    ),
    Case(
        "unknown model",
        "Request for unknown model: 'nope' is not found",
        model="nope",
        error=NotFound,
        http_status=404,
        grpc_code=grpc.StatusCode.NOT_FOUND,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_rule_answers_alike_on_both_protocols(
    case: Case, http: httpx.Client, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    assert (case.error.status, case.error.grpc_code) == (case.http_status, case.grpc_code.name)

    r = http.post(
        f"/v2/models/{case.model}/infer",
        content=json.dumps(http_body(case)),  # the stdlib writes NaN
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == case.http_status, r.text
    http_message = r.json()["error"]
    assert case.message in http_message

    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(grpc_request(case), timeout=30)
    assert caught.value.code() == case.grpc_code
    assert caught.value.details() == http_message  # one message, whatever the wire


def test_a_valid_request_answers_alike_on_both_protocols(
    http: httpx.Client, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    case = Case("valid", "", outputs=[("OUTPUT1", {}), ("OUTPUT0", {})])
    r = http.post("/v2/models/simple/infer", json=http_body(case))
    assert r.status_code == 200, r.text
    by_http = {o["name"]: o["data"] for o in r.json()["outputs"]}
    answer = stub.ModelInfer(grpc_request(case), timeout=30)
    assert [o.name for o in answer.outputs] == ["OUTPUT1", "OUTPUT0"]
    by_grpc = {
        o.name: np.frombuffer(raw, dtype="<i4").tolist()
        for o, raw in zip(answer.outputs, answer.raw_output_contents, strict=True)
    }
    x = list(range(16))
    assert by_http == by_grpc == {"OUTPUT0": [2 * v for v in x], "OUTPUT1": [0] * 16}


def test_tritonclient_duplicate_output_is_refused_on_both(server: GrpcRunning) -> None:
    """Triton's own QA check (L0_http, L0_grpc): the same output twice."""
    x = np.ones((1, 16), dtype=np.int32)
    h_inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    g_inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in (*h_inputs, *g_inputs):
        i.set_data_from_numpy(x)
    refused = pytest.raises(InferenceServerException, match="already exists in request")
    with httpclient.InferenceServerClient(server.host_port) as h, refused:
        h.infer("simple", h_inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT0")] * 2)
    refused = pytest.raises(InferenceServerException, match="already exists in request")
    with grpcclient.InferenceServerClient(server.grpc) as g, refused:
        g.infer("simple", g_inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT0")] * 2)


# ----- what only HTTP's wire has


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("model", "datatype", "leaf"), [("simple_identity", "BYTES", "hello"), ("simple", "INT32", 3)]
)
def test_json_nesting_is_bounded_as_triton_bounds_it(
    http: httpx.Client, model: str, datatype: str, leaf: Any
) -> None:
    """Triton's HTTP_MAX_JSON_NESTING_DEPTH (100) on tensor data: 50 levels
    are data, 120 are refused with Triton's message."""
    shape = [1, 1] if model == "simple_identity" else [1, 16]

    def post(depth: int) -> httpx.Response:
        data = nested(depth, leaf) if model == "simple_identity" else [nested(depth - 1, leaf)] * 16
        inputs = [{"name": n, "datatype": datatype, "shape": shape, "data": data} for n in (
            ["INPUT0"] if model == "simple_identity" else ["INPUT0", "INPUT1"])]  # fmt: skip
        return http.post(f"/v2/models/{model}/infer", content=json.dumps({"inputs": inputs}))

    assert post(50).status_code == 200
    refused = post(120)
    assert refused.status_code == 400
    assert "JSON nesting depth exceeds maximum allowed limit (100)" in refused.json()["error"]


def raw_post(http: httpx.Client, model: str, body: bytes) -> httpx.Response:
    headers = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}
    return http.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def test_raw_binary_request_is_the_single_input(http: httpx.Client) -> None:
    """Triton's raw binary request: the body is the one input's bytes (a
    BYTES input of shape [1] takes the body as its one element), batch 1,
    every output in binary."""
    r = raw_post(http, "simple_identity", b"caf\xc3\xa9")
    # simple_identity's input is [-1, -1]: two variable dimensions cannot be deduced
    assert r.status_code == 400
    assert (
        "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]"
        in (r.json()["error"])
    )
    r = raw_post(http, "simple", np.arange(16, dtype=np.int32).tobytes())
    assert r.status_code == 400
    assert r.json()["error"] == (
        "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in "
        "'simple' model configuration"
    )


def test_raw_binary_request_answers(tmp_path: Path) -> None:
    """A single-input model answers a raw binary request with binary outputs."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Neg", ["INPUT0"], ["OUTPUT0"])],
        "neg",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [None, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path / "neg" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "neg" / "config.pbtxt").write_text(
        'name: "neg"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [-1] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1] }]\n'
    )
    x = np.arange(5, dtype=np.float32)
    with (
        run_grpc_server(base_settings(tmp_path)) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):
        r = raw_post(client, "neg", x.tobytes())
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:n])
    assert header["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 5],
         "parameters": {"binary_data_size": 20}}
    ]  # fmt: skip
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], dtype="<f4"), -x)


# ----- one error table


def test_every_error_class_names_its_status_and_code() -> None:
    table = {
        BadRequest: (400, "INVALID_ARGUMENT"),
        FilesRefused: (400, "INTERNAL"),
        Unauthorized: (401, "UNAUTHENTICATED"),
        NotFound: (404, "NOT_FOUND"),
        MethodNotAllowed: (405, "UNIMPLEMENTED"),
        PayloadTooLarge: (413, "RESOURCE_EXHAUSTED"),
        Unimplemented: (501, "UNIMPLEMENTED"),
        Unavailable: (503, "UNAVAILABLE"),
        RequestTimeout: (503, "DEADLINE_EXCEEDED"),
        ServiceError: (500, "INTERNAL"),
    }
    for cls, (status, code) in table.items():
        assert (cls.status, cls.grpc_code) == (status, code), cls
        assert code in grpc.StatusCode.__members__


def test_unimplemented_rpc_is_unimplemented(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    # (TraceSetting answers since issue 21: tests/service/test_service_observability.py;
    # LogSettings since issue 18: tests/service/test_service_logging.py)
    request = service_pb2.CudaSharedMemoryRegisterRequest(name="r", byte_size=8)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CudaSharedMemoryRegister(
            request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "CUDA shared memory is not supported; use system shared memory"


# ----- the direct inference endpoint (past FastAPI's routing)


def counter(text: str, name: str, **labels: str) -> float:
    """A Prometheus sample's value (0 before it was first counted)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_direct_endpoint_answers_both_paths_as_the_routes_did(http: httpx.Client) -> None:
    """Plain and versioned paths answer; the HTTP metrics keep the route
    templates, failures keep their model and version labels; the OpenAPI
    description still lists both routes; other methods still get 405."""
    body = http_body(Case("valid", ""))
    before = http.get("/metrics").text
    assert http.post("/v2/models/simple/versions/1/infer", json=body).status_code == 200
    assert http.post("/v2/models/simple/infer", json=body).status_code == 200
    bad = http.post("/v2/models/simple/versions/1/infer", json={"inputs": []})
    assert bad.status_code == 400 and bad.json() == {"error": "inputs must be a non-empty list"}
    missing = http.post("/v2/models/simple/versions/9/infer", json=body)
    assert missing.status_code == 404
    after = http.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return counter(after, name, **labels) - counter(before, name, **labels)

    versioned = {"method": "POST", "route": "/v2/models/{name}/versions/{version}/infer"}
    plain = {"method": "POST", "route": "/v2/models/{name}/infer"}
    assert delta("bnfold_http_requests_total", status="200", **versioned) == 1
    assert delta("bnfold_http_requests_total", status="200", **plain) == 1
    assert delta("bnfold_http_requests_total", status="400", **versioned) == 1
    assert delta("bnfold_http_requests_total", status="404", **versioned) == 1
    simple = {"model": "simple", "version": "1", "reason": "bad_request"}
    assert delta("bnfold_inference_failures_total", **simple) == 1

    paths = http.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v2/models/{name}/infer"]
    assert "post" in paths["/v2/models/{name}/versions/{version}/infer"]
    assert http.get("/v2/models/simple/infer").status_code == 405
