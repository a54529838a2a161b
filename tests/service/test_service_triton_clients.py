"""Triton's HTTP client (``tritonclient.http``) on the features Triton's
clients use beyond plain inference: classification, BYTES tensors, load
with a configuration override, Triton's error texts, the configuration
fields clients read; and Triton's own example clients, run unchanged.

One real server (HTTP and gRPC) on a repository of Triton's ``simple``
models (triton_models.py) and the service tests' MLP and CNN.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from grpc_harness import GrpcRunning, run_grpc_server
from served_models import LABELS, write_cnn, write_mlp
from service_harness import TOKEN, base_settings
from triton_models import write_simple_models
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(300)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("triton-models")
    write_simple_models(path)
    write_mlp(path, "mlp")
    write_cnn(path, "cnn")
    write_mlp(path, "tunable", seed=2)
    return path


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcRunning]:
    with run_grpc_server(base_settings(repo)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: GrpcRunning) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.host_port, network_timeout=60)
    yield c
    c.close()


def error_of(call: Any) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.message()


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary)
    return inp


# ----------------------------------------------------------------- classification


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    logits = client.infer("mlp", [_input("input", x, "FP32", True)]).as_numpy("logits")
    asked = [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=2)]
    result = client.infer("mlp", [_input("input", x, "FP32", binary)], outputs=asked)
    assert result.get_output("logits")["datatype"] == "BYTES"
    top = result.as_numpy("logits")
    assert top.shape == (3, 2)
    for row, answers in zip(logits, top, strict=True):
        order = np.argsort(-row, kind="stable")[:2]
        texts = [a.decode() if isinstance(a, bytes) else a for a in answers]
        assert texts == [f"{row[i]:f}:{i}:{LABELS[i]}" for i in order]


def test_classification_and_plain_outputs_together(
    client: httpclient.InferenceServerClient,
) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    asked = [
        httpclient.InferRequestedOutput("OUTPUT0", class_count=2),
        httpclient.InferRequestedOutput("OUTPUT1"),
    ]
    inputs = [_input("INPUT0", a, "INT32", True), _input("INPUT1", a, "INT32", True)]
    result = client.infer("simple", inputs, outputs=asked)
    assert result.as_numpy("OUTPUT0").tolist() == [[b"30:15", b"28:14"]]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16)))


# ----------------------------------------------------------------- BYTES


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_string_model(client: httpclient.InferenceServerClient, binary: bool) -> None:
    a = np.array([[str(i) for i in range(16)]], dtype=np.object_)
    b = np.array([["1"] * 16], dtype=np.object_)
    inputs = [_input("INPUT0", a, "BYTES", binary), _input("INPUT1", b, "BYTES", binary)]
    asked = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer("simple_string", inputs, outputs=asked)
    assert [int(v) for v in result.as_numpy("OUTPUT0").ravel()] == [i + 1 for i in range(16)]
    assert [int(v) for v in result.as_numpy("OUTPUT1").ravel()] == [i - 1 for i in range(16)]


def test_strings_byte_for_byte(client: httpclient.InferenceServerClient) -> None:
    values = np.array([[b"he\x00llo", "ü".encode(), b""]], dtype=np.object_)
    result = client.infer("simple_identity", [_input("INPUT0", values, "BYTES", True)])
    assert result.as_numpy("OUTPUT0").tolist() == values.tolist()


def test_strings_refused(server: GrpcRunning) -> None:
    import httpx

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{server.url}/v2/models/simple_identity/infer", json=body, timeout=30)

    one = {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 2]}
    r = post({"inputs": [one | {"data": ["a", 3]}]})
    assert r.status_code == 400 and "BYTES data must hold only strings" in r.json()["error"]
    r = post({"inputs": [one | {"data": ["a"]}]})
    assert r.status_code == 400 and "1 elements given, shape [1, 2] needs 2" in r.json()["error"]
    # binary: a length that runs past the bytes sent
    head = json.dumps({"inputs": [one | {"parameters": {"binary_data_size": 9}}]}).encode()
    r = httpx.post(
        f"{server.url}/v2/models/simple_identity/infer",
        content=head + b"\x01\x00\x00\x00a\x09\x00\x00\x00",
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=30,
    )
    assert r.status_code == 400 and "claims 9 bytes, 0 are left" in r.json()["error"]
    head = json.dumps({"inputs": [one | {"parameters": {"binary_data_size": 10}}]}).encode()
    r = httpx.post(
        f"{server.url}/v2/models/simple_identity/infer",
        content=head + b"\x01\x00\x00\x00\xff\x01\x00\x00\x00a",
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=30,
    )
    assert r.status_code == 400 and "not valid UTF-8" in r.json()["error"]


# ----------------------------------------------------------------- repository


def test_load_with_config_override(client: httpclient.InferenceServerClient) -> None:
    override = {"max_batch_size": 2, "dynamic_batching": {"max_queue_delay_microseconds": 700}}
    client.load_model("tunable", headers=AUTH, config=json.dumps(override))
    config = client.get_model_config("tunable")
    assert config["max_batch_size"] == 2
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 700
    assert config["output"][0]["label_filename"] == "labels.txt"  # kept from the folder's
    x = np.zeros((3, 64), dtype=np.float32)
    message = error_of(lambda: client.infer("tunable", [_input("input", x, "FP32", True)]))
    assert "batch size 3 is outside 1..2" in message
    # refused whole: the override above keeps serving
    message = error_of(
        lambda: client.load_model("tunable", headers=AUTH, config='{"max_batch_size": "x"}')
    )
    assert "parameters.config is not a valid model configuration" in message
    assert client.get_model_config("tunable")["max_batch_size"] == 2
    message = error_of(
        lambda: client.load_model(
            "tunable",
            headers=AUTH,
            config=json.dumps({"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [64]}]}),
        )
    )
    assert message.startswith("failed to load 'tunable', version 1: ")
    assert client.is_model_ready("tunable")
    client.load_model("tunable", headers=AUTH)
    assert client.get_model_config("tunable")["max_batch_size"] == 64


def test_triton_error_texts(client: httpclient.InferenceServerClient) -> None:
    x = np.zeros((1, 64), dtype=np.float32)
    message = error_of(lambda: client.infer("nope", [_input("input", x, "FP32", True)]))
    assert message == "Request for unknown model: 'nope' is not found"
    message = error_of(lambda: client.get_model_metadata("mlp", model_version="3"))
    assert message.startswith("Request for unknown model: 'mlp' version 3 is not found")
    message = error_of(lambda: client.get_model_metadata("mlp", model_version="x"))
    assert "failed to get model version from specified version string 'x'" in message
    message = error_of(lambda: client.load_model("nope", headers=AUTH))
    assert message == "Request for unknown model: 'nope' is not found"


def test_config_fields(client: httpclient.InferenceServerClient) -> None:
    cnn = client.get_model_config("cnn")
    assert cnn["input"][0]["format"] == "FORMAT_NCHW"
    assert cnn["output"][0]["label_filename"] == "labels.txt"
    assert cnn["instance_group"][0]["kind"] in ("KIND_CPU", "KIND_GPU")
    provider = client.get_model_metadata("cnn")["parameters"]["provider"]
    kind = "KIND_GPU" if provider == "CUDAExecutionProvider" else "KIND_CPU"
    assert cnn["instance_group"][0]["kind"] == kind  # the kind actually used
    assert client.get_model_config("simple_string")["input"][0]["data_type"] == "TYPE_STRING"
