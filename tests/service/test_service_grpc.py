"""The gRPC service (``inference.GRPCInferenceService``) driven by
``tritonclient.grpc``, sync and aio, and by the raw stub for what the
client does not send (typed contents): health, metadata, configuration,
inference, statistics, the repository, streaming, errors.

The server is the real one, HTTP and gRPC in one process and event loop;
the repository holds Triton's ``simple`` models (triton_models.py) and the
service tests' MLP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import uvicorn
from grpc_harness import GrpcRunning, run_grpc_server
from onnx import TensorProto
from served_models import LABELS, write_cnn, write_mlp
from service_harness import TOKEN, WAIT_S, base_settings, wait_until
from triton_models import add_sub, pbtxt, write_model, write_simple_models
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(300)

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grpc-models")
    write_simple_models(path)
    write_mlp(path, "mlp")
    (path / "mlp" / "labels.txt").write_text("\n".join(LABELS) + "\n")  # a file clients read
    write_cnn(path, "cnn")  # labels in config.json only: no file to name
    write_mlp(path, "reloaded", seed=5)
    both, outs = ["INPUT0", "INPUT1"], ["OUTPUT0", "OUTPUT1"]
    config = pbtxt("tunable", TensorProto.INT32, both, outs, [16])
    write_model(path, "tunable", add_sub(TensorProto.INT32), config)
    return path


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcRunning]:
    with run_grpc_server(base_settings(repo)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: GrpcRunning) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: GrpcRunning) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def http(server: GrpcRunning) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def simple_inputs(
    a: np.ndarray | None = None, b: np.ndarray | None = None, module: Any = grpcclient
) -> list[Any]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16) if a is None else a
    b = np.ones((1, 16), dtype=np.int32) if b is None else b
    inputs = [
        module.InferInput("INPUT0", list(a.shape), "INT32"),
        module.InferInput("INPUT1", list(b.shape), "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def status_of(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


# ----------------------------------------------------------------- health, metadata


def test_health_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("simple", "7")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "bnfold"
    assert {"model_repository", "statistics", "binary_tensor_data"} <= set(meta["extensions"])


def test_model_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("simple", as_json=True)
    assert meta["name"] == "simple" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("INPUT0", "INT32", ["-1", "16"]),  # int64 as JSON strings, protobuf's rule
        ("INPUT1", "INT32", ["-1", "16"]),
    ]
    config = client.get_model_config("simple", as_json=True)["config"]
    assert config["name"] == "simple" and config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_INT32", ["16"]),
        ("INPUT1", "TYPE_INT32", ["16"]),
    ]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "1000"
    message = client.get_model_config("mlp").config  # the message form parses too
    assert message.max_batch_size == 64 and message.input[0].dims == [64]


def test_config_fields_clients_read(client: grpcclient.InferenceServerClient) -> None:
    """Input format (Triton's image client picks its layout from it), the
    label file of a classifier (named only where the file is there), the
    instance kind actually used."""
    cnn = _config(client, "cnn")
    assert cnn["input"][0]["format"] == "FORMAT_NCHW"  # the model's preprocessing layout
    assert not cnn["output"][0].get("label_filename")  # labels in config.json, no file
    assert cnn["instance_group"][0]["kind"] in ("KIND_CPU", "KIND_GPU")
    provider = client.get_model_metadata("cnn")  # bnfold's metadata names the provider
    assert provider.name == "cnn"
    simple = _config(client, "simple")
    assert simple["input"][0].get("format", "FORMAT_NONE") == "FORMAT_NONE"
    assert not simple["output"][0].get("label_filename")
    mlp = _config(client, "mlp")
    assert mlp["output"][0]["label_filename"] == "labels.txt" and len(LABELS) == 10
    assert mlp["input"][0].get("format", "FORMAT_NONE") == "FORMAT_NONE"  # flat rows


def test_metadata_matches_http(
    client: grpcclient.InferenceServerClient, http: httpx.Client
) -> None:
    """Both front ends describe the model from the same place."""
    over_http = http.get("/v2/models/mlp").json()
    over_grpc = client.get_model_metadata("mlp", as_json=True)
    assert over_grpc["inputs"][0]["name"] == over_http["inputs"][0]["name"]
    assert [int(d) for d in over_grpc["inputs"][0]["shape"]] == over_http["inputs"][0]["shape"]
    config_http = http.get("/v2/models/mlp/config").json()
    config_grpc = client.get_model_config("mlp", as_json=True)["config"]
    assert config_grpc["max_batch_size"] == config_http["max_batch_size"]
    assert config_grpc["instance_group"][0]["kind"] == config_http["instance_group"][0]["kind"]


# ----------------------------------------------------------------- inference


def test_infer_raw_contents(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    outputs = [
        grpcclient.InferRequestedOutput("OUTPUT0"),
        grpcclient.InferRequestedOutput("OUTPUT1"),
    ]
    result = client.infer("simple", simple_inputs(a, b), outputs=outputs, request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "r-1" and response.model_name == "simple"
    assert response.model_version == "1"
    # one output asked for: only it comes back
    only = client.infer("simple", simple_inputs(a, b), outputs=outputs[1:])
    assert only.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)


def test_infer_batch_and_version(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(8 * 16, dtype=np.int32).reshape(8, 16)
    b = np.ones((8, 16), dtype=np.int32)
    result = client.infer("simple", simple_inputs(a, b), model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    code, message = status_of(
        lambda: client.infer("simple", simple_inputs(a, b), model_version="2")
    )
    assert code == "StatusCode.NOT_FOUND" and "'simple'" in message


def test_infer_float_model(client: grpcclient.InferenceServerClient) -> None:
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    inp = grpcclient.InferInput("input", [3, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp])
    assert result.as_numpy("logits").shape == (3, 10)


def _typed_request(model: str = "simple_fp32") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend([float(i) for i in range(16)])
    return request


def test_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(_typed_request())
    out = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(out, 2 * np.arange(16, dtype=np.float32))

    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(range(16))
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    out = np.frombuffer(response.raw_output_contents[1], dtype=np.int32)
    np.testing.assert_array_equal(out, np.zeros(16, dtype=np.int32))


def _invalid(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


def test_typed_contents_refused(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    short = _typed_request()
    del short.inputs[0].contents.fp32_contents[-1]
    assert "15 values given, shape [1, 16] needs 16" in _invalid(stub, short)

    wrong_field = _typed_request()
    wrong_field.inputs[1].contents.int_contents.extend([1])
    assert "contents.fp32_contents, not int_contents" in _invalid(stub, wrong_field)

    nan = _typed_request()
    nan.inputs[0].contents.fp32_contents[3] = float("nan")
    assert "contains NaN or Inf" in _invalid(stub, nan)

    int8 = service_pb2.ModelInferRequest(model_name="simple_int8")
    for name in ("INPUT0", "INPUT1"):
        tensor = int8.inputs.add(name=name, datatype="INT8", shape=[1, 16])
        tensor.contents.int_contents.extend([200] * 16)
    assert "values outside INT8 range" in _invalid(stub, int8)

    no_data = service_pb2.ModelInferRequest(model_name="simple")
    no_data.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    assert "input 'INPUT0' has no data" in _invalid(stub, no_data)


def test_raw_contents_refused(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    raw = np.arange(16, dtype=np.int32).tobytes()
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
    request.raw_input_contents.extend([raw, raw[:-4]])
    assert "raw_input_contents holds 60 bytes but shape [1, 16] of int32 needs 64" in _invalid(
        stub, request
    )
    request.raw_input_contents[1] = raw
    request.raw_input_contents.append(raw)
    assert "3 raw_input_contents given for 2 inputs" in _invalid(stub, request)


def test_sequence_refused(client: grpcclient.InferenceServerClient) -> None:
    code, message = status_of(
        lambda: client.infer("simple", simple_inputs(), sequence_id=7, sequence_start=True)
    )
    assert code == "StatusCode.INVALID_ARGUMENT" and "sequence batching is not supported" in message


def test_errors_read_as_over_http(
    client: grpcclient.InferenceServerClient, http: httpx.Client
) -> None:
    """The same mistake, the same message, on both front ends."""
    a = np.zeros((1, 15), dtype=np.int32)
    code, message = status_of(lambda: client.infer("simple", simple_inputs(a, a)))
    body = {
        "inputs": [
            {"name": n, "datatype": "INT32", "shape": [1, 15], "data": [0] * 15}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    answer = http.post("/v2/models/simple/infer", json=body)
    assert answer.status_code == 400 and code == "StatusCode.INVALID_ARGUMENT"
    assert message == answer.json()["error"]

    inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    code, message = status_of(lambda: client.infer("simple", [inp]))
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert message == "input 'INPUT0': datatype FP32 but the model expects INT32"

    code, message = status_of(lambda: client.infer("nope", simple_inputs()))
    answer = http.post("/v2/models/nope/infer", json=body)
    assert code == "StatusCode.NOT_FOUND" and answer.status_code == 404
    assert message == answer.json()["error"]

    big = np.zeros((9, 16), dtype=np.int32)
    code, message = status_of(lambda: client.infer("simple", simple_inputs(big, big)))
    assert code == "StatusCode.INVALID_ARGUMENT" and "batch size 9 is outside 1..8" in message


def test_aio_client_concurrent(server: GrpcRunning) -> None:
    async def main() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(server.grpc) as c:
            assert await c.is_server_ready()
            assert await c.is_model_ready("simple")

            async def one(i: int) -> np.ndarray:
                a = np.full((1, 16), i, dtype=np.int32)
                b = np.ones((1, 16), dtype=np.int32)
                result = await c.infer("simple", simple_inputs(a, b, aioclient))
                return result.as_numpy("OUTPUT0")

            return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(main())
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out, np.full((1, 16), i + 1, dtype=np.int32))


def test_statistics(client: grpcclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("simple_int8", as_json=True)["model_stats"][0]
    a = np.ones((2, 16), dtype=np.int8)
    inputs = [grpcclient.InferInput(n, [2, 16], "INT8") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    for _ in range(3):
        client.infer("simple_int8", inputs)
    after = client.get_inference_statistics("simple_int8", as_json=True)["model_stats"][0]
    assert after["name"] == "simple_int8" and after["version"] == "1"
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 6
    success = after["inference_stats"]["success"]
    assert int(success["count"]) - int(before["inference_stats"]["success"].get("count", 0)) == 3
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"simple", "simple_int8", "mlp"} <= {s["name"] for s in every}
    code, _ = status_of(lambda: client.get_inference_statistics("nope"))
    assert code == "StatusCode.NOT_FOUND"


# ----------------------------------------------------------------- the repository


def test_repository_needs_the_token(client: grpcclient.InferenceServerClient) -> None:
    for call in (
        lambda: client.get_model_repository_index(),
        lambda: client.load_model("simple"),
        lambda: client.unload_model("simple"),
        lambda: client.get_model_repository_index(headers={"authorization": "Bearer wrong"}),
    ):
        code, message = status_of(call)
        assert code == "StatusCode.UNAUTHENTICATED"
        assert message == "a valid bearer token is required for repository operations"
    assert client.is_model_ready("simple")  # nothing was unloaded


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    by_name = {m["name"]: m for m in index}
    assert by_name["simple"]["state"] == "READY" and by_name["simple"]["version"] == "1"
    assert "mlp" in by_name


def test_unload_and_load(client: grpcclient.InferenceServerClient) -> None:
    x = np.zeros((1, 64), dtype=np.float32)
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    client.unload_model("reloaded", headers=AUTH)
    assert not client.is_model_ready("reloaded")
    code, message = status_of(lambda: client.infer("reloaded", [inp]))
    assert code == "StatusCode.UNAVAILABLE" and "'reloaded'" in message
    client.load_model("reloaded", headers=AUTH)
    assert client.is_model_ready("reloaded")
    assert client.infer("reloaded", [inp]).as_numpy("logits").shape == (1, 10)
    code, message = status_of(lambda: client.load_model("nope", headers=AUTH))
    assert code == "StatusCode.NOT_FOUND" and message.startswith("failed to load 'nope', ")


def test_file_overrides_refused(client: grpcclient.InferenceServerClient) -> None:
    code, message = status_of(
        lambda: client.load_model(
            "simple", headers=AUTH, config="{}", files={"file:1/model.onnx": b"x"}
        )
    )
    # Triton's status and words for files it cannot poll, which its clients check
    assert code == "StatusCode.INTERNAL"
    assert message.startswith("failed to load 'simple', failed to poll from model repository")
    assert "file overrides (file:1/model.onnx) are not supported" in message
    assert client.is_model_ready("simple")


def test_cuda_shared_memory_refused(client: grpcclient.InferenceServerClient) -> None:
    # nothing is registered: status and unregister (clients' clean-up) answer
    assert not client.get_cuda_shared_memory_status(headers=AUTH).regions
    client.unregister_cuda_shared_memory(headers=AUTH)
    code, message = status_of(
        lambda: client.register_cuda_shared_memory("r", b"aGFuZGxl", 0, 64, headers=AUTH)
    )
    assert code == "StatusCode.UNIMPLEMENTED" and "CUDA shared memory" in message


# ----------------------------------------------------------------- streaming


def test_stream_answers_in_order(client: grpcclient.InferenceServerClient) -> None:
    answers: list[tuple[Any, Any]] = []
    done = threading.Event()
    count = 40

    def callback(result: Any, error: Any) -> None:
        answers.append((result, error))
        if len(answers) == count:
            done.set()

    client.start_stream(callback=callback)
    try:
        for i in range(count):
            if i == 7:  # one bad request: its error comes back in its place
                bad = np.zeros((1, 15), dtype=np.int32)
                client.async_stream_infer("simple", simple_inputs(bad, bad), request_id=str(i))
                continue
            a = np.full((1, 16), i, dtype=np.int32)
            client.async_stream_infer("simple", simple_inputs(a), request_id=str(i))
        assert done.wait(WAIT_S), f"{len(answers)} of {count} answers"
    finally:
        client.stop_stream()
    for i, (result, error) in enumerate(answers):
        if i == 7:
            assert result is None and "shape [1, 15]" in error.message()
            continue
        assert error is None, error
        assert result.get_response().id == str(i)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), i + 1))


def test_stream_aio(server: GrpcRunning) -> None:
    async def main() -> list[Any]:
        async with aioclient.InferenceServerClient(server.grpc) as c:

            async def requests() -> Any:
                for i in range(10):
                    a = np.full((1, 16), i, dtype=np.int32)
                    yield {
                        "model_name": "simple",
                        "inputs": simple_inputs(a, module=aioclient),
                        "request_id": str(i),
                    }

            return [answer async for answer in c.stream_infer(requests())]

    answers = asyncio.run(main())
    assert [r.get_response().id for r, e in answers] == [str(i) for i in range(10)]
    assert all(e is None for _, e in answers)


# ----------------------------------------------------------------- metrics


def test_grpc_metrics(client: grpcclient.InferenceServerClient, http: httpx.Client) -> None:
    client.infer("simple", simple_inputs())
    with pytest.raises(InferenceServerException):
        client.infer("simple", simple_inputs(np.zeros((1, 3), np.int32)))
    text = http.get("/metrics").text
    assert 'bnfold_grpc_requests_total{code="OK",method="ModelInfer"}' in text
    assert 'bnfold_grpc_requests_total{code="INVALID_ARGUMENT",method="ModelInfer"}' in text
    assert 'bnfold_inference_requests_total{model="simple",version="1"}' in text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("bnfold_inference_failures_total")
        and 'model="simple"' in ln
        and 'reason="bad_request"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_config_is_valid_triton_json(client: grpcclient.InferenceServerClient) -> None:
    """What the gRPC config holds is Triton's configuration message, so its
    JSON parses back into model_config.proto (what Triton's tools do)."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    config = client.get_model_config("mlp", as_json=True)["config"]
    json_format.Parse(json.dumps(config), model_config_pb2.ModelConfig())


# ----------------------------------------------------------------- BYTES


def _strings(values: list[Any], shape: tuple[int, ...] = (1, 16)) -> np.ndarray:
    return np.array(values, dtype=np.object_).reshape(shape)


def test_string_models(client: grpcclient.InferenceServerClient) -> None:
    a = _strings([str(i) for i in range(16)])
    b = _strings([str(2 * i) for i in range(16)])
    inputs = [grpcclient.InferInput(n, [1, 16], "BYTES") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("simple_string", inputs)
    assert result.get_output("OUTPUT0").datatype == "BYTES"
    assert [int(v) for v in result.as_numpy("OUTPUT0").ravel()] == [3 * i for i in range(16)]
    assert [int(v) for v in result.as_numpy("OUTPUT1").ravel()] == [-i for i in range(16)]

    # bytes with NULs and control characters come back byte for byte
    values = _strings([b"he\x00llo", b"\x00\x01\x02\x03", "é".encode(), b""], (2, 2))
    inp = grpcclient.InferInput("INPUT0", [2, 2], "BYTES")
    inp.set_data_from_numpy(values)
    out = client.infer("simple_identity", [inp]).as_numpy("OUTPUT0")
    assert out.shape == (2, 2) and out.ravel().tolist() == values.ravel().tolist()


def test_string_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="simple_identity")
    tensor = request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 3])
    tensor.contents.bytes_contents.extend([b"a", b"bc", b""])
    response = stub.ModelInfer(request)
    raw = response.raw_output_contents[0]
    assert raw == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc\x00\x00\x00\x00"


def test_strings_refused(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    def identity(raw: bytes, shape: tuple[int, ...] = (1, 2)) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name="simple_identity")
        request.inputs.add(name="INPUT0", datatype="BYTES", shape=list(shape))
        request.raw_input_contents.append(raw)
        return request

    one = b"\x01\x00\x00\x00a"
    assert "element 0 is not valid UTF-8" in _invalid(stub, identity(b"\x01\x00\x00\x00\xff" + one))
    # Triton's words (issue 18; they were "1 elements given, shape [1, 2] needs 2")
    expected = "expected 2 string elements for inference input 'INPUT0' for model 'simple_identity'"
    assert f"{expected}, got 1" in _invalid(stub, identity(one))
    unexpected = "unexpected number of string elements 3 for inference input 'INPUT0'"
    assert unexpected in _invalid(stub, identity(one * 3))
    assert "bytes follow the 2 elements" in _invalid(stub, identity(one + one + b"x"))
    assert "claims 4294967295 bytes" in _invalid(stub, identity(b"\xff\xff\xff\xff" + one))
    assert "truncated length" in _invalid(stub, identity(one + b"\x01\x00"))


# ----------------------------------------------------------------- ports, shutdown, workers


def test_grpc_port_in_use_fails_startup(repo: Path) -> None:
    """With one process the port is its own (no SO_REUSEPORT): a port
    already taken stops the server from starting, as for HTTP."""
    from bnfold.service.app import create_app

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        app = create_app(base_settings(repo))
        app.state.grpc_bind = f"127.0.0.1:{holder.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="critical", lifespan="on")
        server = uvicorn.Server(config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(SystemExit):
            server.run(sockets=[sock])
        sock.close()
    finally:
        holder.close()


def test_shutdown_lets_grpc_calls_finish(tmp_path: Path) -> None:
    """A call in flight when the server is told to stop gets its answer;
    afterwards the port is closed."""
    write_mlp(tmp_path, "slow", delay_ms=1500.0, eager=False)  # holds each batch 1.5 s
    with run_grpc_server(base_settings(tmp_path)) as running:
        client = grpcclient.InferenceServerClient(running.grpc)
        inp = grpcclient.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        answers: list[Any] = []
        done = threading.Event()

        def callback(result: Any, error: Any) -> None:
            answers.append((result, error))
            done.set()

        client.async_infer("slow", [inp], callback=callback)
        served = running.served("slow")
        wait_until(lambda: served.batcher.pending == 1, "the call is queued")
        running.server.should_exit = True
        assert done.wait(WAIT_S)
        result, error = answers[0]
        assert error is None, error
        assert result.as_numpy("logits").shape == (1, 10)
        port = int(running.grpc.rsplit(":", 1)[1])
        wait_until(lambda: not _listening(port), "the gRPC port closes")
        client.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
def test_workers_share_the_grpc_port(repo: Path, tmp_path: Path) -> None:
    """``bnfold serve --workers 2``: both workers listen on the gRPC port
    (SO_REUSEPORT); new connections reach both, each answers correctly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BNFOLD_", "PROMETHEUS_"))}
    env |= {"BNFOLD_LOG_LEVEL": "warning", "BNFOLD_DEVICE": "cpu", "BNFOLD_DRAIN_S": "0"}
    log = tmp_path / "serve.log"
    script = Path(sys.executable).with_name("bnfold")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bnfold"]
    for _attempt in range(3):  # the ports are picked before the server binds them
        port, grpc_port = _free_port(), _free_port()
        argv = [*command, "serve", "--repo", str(repo), "--port", str(port)]
        argv += ["--grpc-port", str(grpc_port), "--workers", "2", "--metrics-port", "0"]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            pids = _grpc_workers(proc, f"127.0.0.1:{grpc_port}")
        except RuntimeError:
            _stop(proc)
            continue
        try:
            assert len(pids) == 2, f"answers came from {pids}"
        finally:
            _stop(proc)
        return
    pytest.fail("bnfold serve --workers 2 did not serve gRPC:\n" + log.read_text()[-3000:])


def _grpc_workers(proc: subprocess.Popen[bytes], target: str) -> set[str]:
    """The worker pids that answered correct inferences on fresh connections."""
    deadline = time.monotonic() + WAIT_S
    pids: set[str] = set()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    while len(pids) < 2 and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        with grpc.insecure_channel(target) as channel:  # a new connection each time
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="simple")
            for name in ("INPUT0", "INPUT1"):
                request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
                request.raw_input_contents.append(a.tobytes())
            try:
                response, call = stub.ModelInfer.with_call(request, timeout=10)
            except grpc.RpcError:
                time.sleep(0.1)  # not listening yet, or still loading
                continue
            out = np.frombuffer(response.raw_output_contents[0], dtype=np.int32)
            assert out.tolist() == (2 * a).ravel().tolist()
            pids |= {v for k, v in call.trailing_metadata() if k == "x-bnfold-worker"}
    if not pids:
        raise RuntimeError("no answer")
    return pids


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------- load with an override


def _config(client: grpcclient.InferenceServerClient, name: str) -> dict[str, Any]:
    config: dict[str, Any] = client.get_model_config(name, as_json=True)["config"]
    return config


def test_load_with_config_override(client: grpcclient.InferenceServerClient, repo: Path) -> None:
    override = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 2500}}
    client.load_model("tunable", headers=AUTH, config=json.dumps(override))
    config = _config(client, "tunable")
    assert config["max_batch_size"] == 4
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "2500"
    # what the override left out is the model's own
    assert [t["name"] for t in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["input"][0]["dims"] == ["16"]
    a = np.ones((5, 16), dtype=np.int32)
    code, message = status_of(lambda: client.infer("tunable", simple_inputs(a, a)))
    assert code == "StatusCode.INVALID_ARGUMENT" and "outside 1..4" in message
    # lowerCamelCase keys, as protobuf's JSON printer writes them
    client.load_model("tunable", headers=AUTH, config=json.dumps({"maxBatchSize": 2}))
    assert _config(client, "tunable")["max_batch_size"] == 2
    # a load without an override keeps the last one while the model's files
    # are unchanged (Triton's rule, issue 18), and reads them once they change
    client.load_model("tunable", headers=AUTH)
    assert _config(client, "tunable")["max_batch_size"] == 2
    config_file = repo / "tunable" / "config.pbtxt"
    st = config_file.stat()
    os.utime(config_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    client.load_model("tunable", headers=AUTH)
    assert _config(client, "tunable")["max_batch_size"] == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("{not json", "parameters.config is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"max_batch_sise": 4}', 'no field named "max_batch_sise"'),
        ('{"max_batch_size": "many"}', "parameters.config is not a valid model configuration"),
        ('{"name": "other"}', "name 'other' does not match the model folder 'tunable'"),
        ('{"platform": "tensorrt_plan"}', "'tensorrt_plan' models are not served"),
        ('{"sequence_batching": {}}', "sequence batching is not supported"),
        ('{"max_batch_size": -1}', "max_batch_size must be 0 (no batching) or more"),
        (
            '{"input": [{"name": "X", "data_type": "TYPE_INT32", "dims": [16]}]}',
            "load failed for model 'tunable': version 1 is at UNAVAILABLE state: "
            "override inputs ['X']",
        ),
        (
            '{"output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]},'
            ' {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]}]}',
            "output 'OUTPUT0': override says FP32, graph INT32",
        ),
        (
            '{"max_batch_size": 8, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", '
            '"dims": [15]}, {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}]}',
            "override shape [15] vs graph [16]",
        ),
    ],
)
def test_bad_override_changes_nothing(
    client: grpcclient.InferenceServerClient, override: str, message: str
) -> None:
    before = _config(client, "tunable")
    code, got = status_of(lambda: client.load_model("tunable", headers=AUTH, config=override))
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert message in got
    assert _config(client, "tunable") == before  # the old version keeps serving
    result = client.infer("tunable", simple_inputs())
    assert result.as_numpy("OUTPUT0").shape == (1, 16)


def test_override_turns_batching_off(client: grpcclient.InferenceServerClient) -> None:
    """max_batch_size 0: the graph's inputs come back with their batch axis."""
    client.load_model("tunable", headers=AUTH, config='{"max_batch_size": 0}')
    try:
        config = _config(client, "tunable")
        assert config.get("max_batch_size", 0) == 0
        assert config["input"][0]["dims"] == ["-1", "16"]
        a = np.ones((3, 16), dtype=np.int32)
        assert client.infer("tunable", simple_inputs(a, a)).as_numpy("OUTPUT0").shape == (3, 16)
    finally:
        client.load_model("tunable", headers=AUTH)


# ----------------------------------------------------------------- classification


def test_classification(client: grpcclient.InferenceServerClient) -> None:
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    inp = grpcclient.InferInput("input", [4, 64], "FP32")
    inp.set_data_from_numpy(x)
    logits = client.infer("mlp", [inp]).as_numpy("logits")
    asked = [grpcclient.InferRequestedOutput("logits", class_count=3)]
    result = client.infer("mlp", [inp], outputs=asked)
    assert result.get_output("logits").datatype == "BYTES"
    top = result.as_numpy("logits")
    assert top.shape == (4, 3)  # batch rows kept apart
    for row, answers in zip(logits, top, strict=True):
        order = np.argsort(-row, kind="stable")[:3]
        parts = [a.decode().split(":") for a in answers]
        assert [int(p[1]) for p in parts] == order.tolist()
        assert [p[2] for p in parts] == [LABELS[i] for i in order]
        np.testing.assert_allclose([float(p[0]) for p in parts], row[order], rtol=1e-5, atol=1e-6)


def test_classification_without_labels(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    asked = [grpcclient.InferRequestedOutput("OUTPUT1", class_count=99)]  # capped at 16
    top = client.infer("simple", simple_inputs(a, a), outputs=asked).as_numpy("OUTPUT1")
    assert top.shape == (1, 16)
    assert top[0][0] == b"0:0"  # integers print as integers; no label: score:index
    code, message = status_of(
        lambda: client.infer(
            "simple_identity",
            [_bytes_input()],
            outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=1)],
        )
    )
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert "class result not available for output due to unsupported type 'BYTES'" in message


def _bytes_input() -> grpcclient.InferInput:
    inp = grpcclient.InferInput("INPUT0", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
    return inp
