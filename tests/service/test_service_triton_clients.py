"""Triton's HTTP client (``tritonclient.http``) on the features Triton's
clients use beyond plain inference: classification, BYTES tensors, load
with a configuration override, Triton's error texts, the configuration
fields clients read; and Triton's own example clients, run unchanged.

One real server (HTTP and gRPC) on a repository of Triton's ``simple``
models (triton_models.py) and the service tests' MLP and CNN.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from grpc_harness import GrpcRunning, run_grpc_server
from onnx import TensorProto
from served_models import LABELS, write_cnn, write_mlp
from service_harness import TOKEN, WAIT_S, base_settings
from triton_models import SIMPLE_MODELS, add_sub, pbtxt, write_model, write_simple_models
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

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


def test_load_with_config_override(client: httpclient.InferenceServerClient, repo: Path) -> None:
    override = {"max_batch_size": 2, "dynamic_batching": {"max_queue_delay_microseconds": 700}}
    client.load_model("tunable", headers=AUTH, config=json.dumps(override))
    config = client.get_model_config("tunable")
    assert config["max_batch_size"] == 2
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 700
    # labels kept from the folder's config.json; no labels.txt there, so no file is named
    assert config["output"][0]["label_filename"] == ""
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
    failed = "load failed for model 'tunable': version 1 is at UNAVAILABLE state: "
    assert message.startswith(failed)
    assert client.is_model_ready("tunable")
    # A plain reload keeps the last override while the model's files are as
    # they were (Triton's rule, issue 18); once they change it reads them again.
    client.load_model("tunable", headers=AUTH)
    assert client.get_model_config("tunable")["max_batch_size"] == 2
    folder = repo / "tunable"
    config_file = next(folder.glob("config.*"))
    st = config_file.stat()
    os.utime(config_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
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
    assert message == (  # Triton's words first (issue 18: they were bnfold's alone)
        "failed to load 'nope', failed to poll from model repository: "
        "no model folder 'nope' in the repository"
    )
    message = error_of(lambda: client.load_model("mlp", headers=AUTH, config="{oops"))
    assert message.startswith("failed to load 'mlp', parameters.config is not valid JSON")


def test_failed_versions_in_tritons_words(tmp_path: Path) -> None:
    """A load whose versions fail to open answers as Triton does (its
    L0_lifecycle tests look for ``load failed for model 'NAME'``): each
    version, its state and its reason; the versions serving keep serving."""
    write_mlp(tmp_path, "two")
    shutil.copytree(tmp_path / "two" / "1", tmp_path / "two" / "2")
    settings = base_settings(tmp_path, model_control_mode="explicit", load_model=["two"])
    with run_grpc_server(settings) as running:
        c = httpclient.InferenceServerClient(running.host_port, network_timeout=60)
        assert c.is_model_ready("two", "2") and not c.is_model_ready("two", "1")
        for v in ("1", "2"):
            (tmp_path / "two" / v / "model.onnx").write_bytes(b"not an ONNX graph")
        every = '{"version_policy": {"all": {}}}'
        message = error_of(lambda: c.load_model("two", headers=AUTH, config=every))
        first, second = message.split("; ")
        assert first.startswith("load failed for model 'two': version 1 is at UNAVAILABLE state: ")
        assert second.startswith("version 2 is at UNAVAILABLE state: ")
        assert second.endswith(";")
        assert c.is_model_ready("two", "2") and not c.is_model_ready("two", "1")
        c.close()


def test_load_names_refused_in_tritons_words(server: GrpcRunning) -> None:
    """Triton's L0_input_validation texts: an empty or blank name, a name
    that leaves the repository (issue 18); each an INVALID_ARGUMENT."""
    c = grpcclient.InferenceServerClient(server.grpc)
    headers = {"authorization": f"Bearer {TOKEN}"}

    def refused(name: str) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as info:
            c.load_model(name, headers=headers)
        return str(info.value.status()), info.value.message()

    empty = "Model name cannot be empty. Please enter a valid name to deploy."
    for name in ("", " ", "\t", " \n "):
        assert refused(name) == ("StatusCode.INVALID_ARGUMENT", empty), name
    for name in ("../etc", "a/b", "model/", "..", " ..", "a\\b"):
        traversal = (  # Triton's words (issue 18: it began "failed to load")
            f"invalid model name {name!r}, model name must not contain path traversal characters"
        )
        assert refused(name) == ("StatusCode.INVALID_ARGUMENT", traversal), name
    assert c.is_model_ready("mlp")
    c.close()


def test_config_fields(client: httpclient.InferenceServerClient) -> None:
    cnn = client.get_model_config("cnn")
    assert cnn["input"][0]["format"] == "FORMAT_NCHW"
    assert cnn["output"][0]["label_filename"] == ""  # its labels are in config.json, no file
    assert cnn["instance_group"][0]["kind"] in ("KIND_CPU", "KIND_GPU")
    provider = client.get_model_metadata("cnn")["parameters"]["provider"]
    kind = "KIND_GPU" if provider == "CUDAExecutionProvider" else "KIND_CPU"
    assert cnn["instance_group"][0]["kind"] == kind  # the kind actually used
    assert client.get_model_config("simple_string")["input"][0]["data_type"] == "TYPE_STRING"


# ----------------------------------------------------------------- system shared memory


@pytest.fixture(params=["grpc", "http"])
def shm_client(request: pytest.FixtureRequest, server: GrpcRunning) -> Iterator[Any]:
    """A tritonclient of either protocol, its module, and headers with the token."""
    if request.param == "grpc":
        c: Any = grpcclient.InferenceServerClient(server.grpc)
        module: Any = grpcclient
        headers = {"authorization": f"Bearer {TOKEN}"}
    else:
        c = httpclient.InferenceServerClient(server.host_port, network_timeout=60)
        module = httpclient
        headers = AUTH
    yield c, module, headers
    c.unregister_system_shared_memory(headers=headers)
    c.close()


@pytest.fixture()
def regions(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Creates shared-memory objects (unique keys) and destroys them after."""
    made: list[Any] = []
    prefix = f"/bnfold-test-{os.getpid()}-{len(request.node.name)}-{id(made) % 10_000}"

    def create(name: str, size: int) -> tuple[Any, str]:
        key = f"{prefix}-{name}"
        handle = shm.create_shared_memory_region(name, key, size)
        made.append(handle)
        return handle, key

    yield create
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _simple_shm_inputs(module: Any, region: str, size: int = 64) -> list[Any]:
    inputs = [module.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_shared_memory(region, size)
    inputs[1].set_shared_memory(region, size, offset=64)
    return inputs


def test_shared_memory_inputs_and_outputs(shm_client: Any, regions: Any) -> None:
    c, module, headers = shm_client
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 5, dtype=np.int32)
    ins, in_key = regions("in", 128)
    outs, out_key = regions("out", 128)
    shm.set_shared_memory_region(ins, [a, b])  # a at 0, b at 64
    c.register_system_shared_memory("in", in_key, 128, headers=headers)
    c.register_system_shared_memory("out", out_key, 128, headers=headers)
    status = c.get_system_shared_memory_status(headers=headers)
    if module is grpcclient:
        assert {n: (r.key, r.byte_size) for n, r in status.regions.items()} == {
            "in": (in_key, 128),
            "out": (out_key, 128),
        }
    else:
        assert sorted(r["name"] for r in status) == ["in", "out"]
    asked = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    asked[0].set_shared_memory("out", 64)
    asked[1].set_shared_memory("out", 64, offset=64)
    result = c.infer("simple", _simple_shm_inputs(module, "in"), outputs=asked)
    out0 = result.get_output("OUTPUT0")
    shape = list(out0.shape) if module is grpcclient else out0["shape"]
    assert shape == [1, 16]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(outs, np.int32, [1, 16]), a + b)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(outs, np.int32, [1, 16], offset=64), a - b
    )
    # an input from memory, an output in the response, in one request
    plain = c.infer("simple", _simple_shm_inputs(module, "in"))
    np.testing.assert_array_equal(plain.as_numpy("OUTPUT0"), a + b)
    c.unregister_system_shared_memory("in", headers=headers)
    status = c.get_system_shared_memory_status(headers=headers)
    names = list(status.regions) if module is grpcclient else [r["name"] for r in status]
    assert names == ["out"]


def test_shared_memory_strings(shm_client: Any, regions: Any) -> None:
    c, module, headers = shm_client
    a = np.array([[str(i) for i in range(16)]], dtype=np.object_)
    raw = serialize_byte_tensor(a).item()
    ins, in_key = regions("sin", 2 * len(raw))
    outs, out_key = regions("sout", 1024)
    shm.set_shared_memory_region(ins, [serialize_byte_tensor(a), serialize_byte_tensor(a)])
    c.register_system_shared_memory("sin", in_key, 2 * len(raw), headers=headers)
    c.register_system_shared_memory("sout", out_key, 1024, headers=headers)
    inputs = [module.InferInput(n, [1, 16], "BYTES") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_shared_memory("sin", len(raw))
    inputs[1].set_shared_memory("sin", len(raw), offset=len(raw))
    asked = [module.InferRequestedOutput("OUTPUT0")]
    asked[0].set_shared_memory("sout", 1024)
    c.infer("simple_string", inputs, outputs=asked)
    out = shm.get_contents_as_numpy(outs, np.object_, [1, 16])
    assert [int(v) for v in out.ravel()] == [2 * i for i in range(16)]


def test_shared_memory_errors(shm_client: Any, regions: Any) -> None:
    """A region smaller than the tensor, a bad offset, an unknown region, an
    object that is not there: each a clear 400 / INVALID_ARGUMENT (an object
    that is not there is INTERNAL over gRPC: the next test), and the server
    keeps serving."""
    c, module, headers = shm_client
    _small, small_key = regions("small", 96)
    _big, big_key = regions("big", 128)
    c.register_system_shared_memory("small", small_key, 96, headers=headers)
    c.register_system_shared_memory("big", big_key, 128, headers=headers)

    def infer_error(inputs: list[Any], outputs: list[Any] | None = None) -> str:
        return error_of(lambda: c.infer("simple", inputs, outputs=outputs))

    # the second input (offset 64, 64 bytes) runs past a 96-byte region
    # (Triton's words, issue 18)
    message = infer_error(_simple_shm_inputs(module, "small"))
    assert "Invalid offset + byte size for shared memory region: 'small'" in message
    inputs = _simple_shm_inputs(module, "big")
    inputs[1].set_shared_memory("big", 64, offset=100)
    assert "Invalid offset + byte size for shared memory region: 'big'" in infer_error(inputs)
    inputs = _simple_shm_inputs(module, "big")
    inputs[1].set_shared_memory("big", 64, offset=128)
    assert "Invalid offset for shared memory region: 'big'" in infer_error(inputs)
    if module is httpclient:  # gRPC's int64 parameters cannot carry 2**64 - 32
        asked = [module.InferRequestedOutput("OUTPUT0")]
        asked[0].set_shared_memory("big", 2**64 - 32, offset=32)
        message = infer_error(_simple_shm_inputs(module, "big"), asked)
        assert (  # Triton's check, before the region's bounds
            f"Integer overflow detected: byte_size ({2**64 - 32}) + offset (32) exceeds "
            f"maximum value ({2**64 - 1}) for region 'big'"
        ) in message
    inputs = _simple_shm_inputs(module, "big")
    inputs[0].set_shared_memory("nowhere", 64)
    assert "Unable to find shared memory region: 'nowhere'" in infer_error(inputs)
    inputs = _simple_shm_inputs(module, "big")
    inputs[0].set_shared_memory("big", 60)  # not the tensor's 64 bytes
    assert (
        "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 60"
        in infer_error(inputs)
    )
    asked = [module.InferRequestedOutput("OUTPUT0")]
    asked[0].set_shared_memory("small", 32)  # the output needs 64
    message = infer_error(_simple_shm_inputs(module, "big"), asked)
    assert (
        "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) "
        "should be at least 64 bytes to hold the results"
    ) in message

    def register_error(name: str, key: str, size: int, offset: int = 0) -> str:
        return error_of(
            lambda: c.register_system_shared_memory(name, key, size, offset, headers=headers)
        )

    invalid = "failed to register shared memory region '{}': invalid args"
    assert invalid.format("r1") in register_error("r1", big_key, 129)
    assert invalid.format("r2") in register_error("r2", big_key, 64, 100)
    unable = "Unable to open shared memory region: '{}'"
    for key in ("/bnfold-no-such-object", "/../../etc/passwd", "/a/b"):
        assert unable.format(key) in register_error("r3", key, 8)
    assert "shared memory region 'big' already in manager" in register_error("big", big_key, 8)
    assert invalid.format("r6") in register_error("r6", big_key, 0)
    assert "invalid shm key '//'" in register_error("r7", "//", 8)
    # the server is up and serves as before
    assert c.is_server_live() and c.is_model_ready("simple")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    plain = [module.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for p in plain:
        p.set_data_from_numpy(a)
    np.testing.assert_array_equal(c.infer("simple", plain).as_numpy("OUTPUT0"), 2 * a)


def test_shared_memory_key_that_opens_nothing(shm_client: Any) -> None:
    """A key that names no shared-memory object: a 400 over HTTP, and over
    gRPC INTERNAL, the status Triton answers it with (its clients check for
    it: Triton's python_grpc_aio_test)."""
    c, module, headers = shm_client
    with pytest.raises(InferenceServerException) as info:
        c.register_system_shared_memory("r", "/bnfold-no-such-object", 8, headers=headers)
    assert "Unable to open shared memory region: '/bnfold-no-such-object'" in info.value.message()
    expected = "StatusCode.INTERNAL" if module is grpcclient else "400"
    assert info.value.status() == expected
    assert c.is_server_live()


def test_shared_memory_truncated_behind_the_server(shm_client: Any, regions: Any) -> None:
    """A region made smaller after it was registered is refused, never read
    past its end (which would be SIGBUS)."""
    c, module, headers = shm_client
    _handle, key = regions("shrinks", 128)
    c.register_system_shared_memory("shrinks", key, 128, headers=headers)
    os.truncate(f"/dev/shm/{key.lstrip('/')}", 16)
    message = error_of(lambda: c.infer("simple", _simple_shm_inputs(module, "shrinks")))
    assert f"Invalid shared memory region: '{key}'" in message
    assert c.is_server_live()


def test_shared_memory_needs_the_token(shm_client: Any, regions: Any) -> None:
    c, _module, _headers = shm_client
    _, key = regions("guarded", 64)
    for call in (
        lambda: c.register_system_shared_memory("guarded", key, 64),
        lambda: c.get_system_shared_memory_status(),
        lambda: c.unregister_system_shared_memory(),
    ):
        assert "a valid bearer token is required" in error_of(call)


def _mapped(key: str) -> bool:
    """Whether this process holds the object open (a descriptor; regions are not mapped)."""
    target = f"/dev/shm/{key.lstrip('/')}"
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since listed
            held.append(os.readlink(fd))
    return target in held


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc (Linux)")
def test_regions_unmapped_on_unregister_and_shutdown(repo: Path, tmp_path: Path) -> None:
    """The server runs in this process: its descriptors are in /proc/self/fd
    (the objects are made here without opening them, unlike tritonclient's)."""
    first, second = (f"/bnfold-test-{os.getpid()}-{n}" for n in ("first", "second"))
    for key in (first, second):
        with open(f"/dev/shm{key}", "wb") as f:
            f.truncate(4096)
    try:
        _serve_and_unmap(repo, first, second)
    finally:
        for key in (first, second):
            os.unlink(f"/dev/shm{key}")


def _serve_and_unmap(repo: Path, first: str, second: str) -> None:
    with run_grpc_server(base_settings(repo)) as running:
        c = httpclient.InferenceServerClient(running.host_port, network_timeout=60)
        c.register_system_shared_memory("first", first, 4096, headers=AUTH)
        c.register_system_shared_memory("second", second, 4096, headers=AUTH)
        assert _mapped(first) and _mapped(second)
        c.unregister_system_shared_memory("first", headers=AUTH)
        assert not _mapped(first) and _mapped(second)
        c.close()
    assert not _mapped(second)  # shutdown unmapped what was left


# ----------------------------------------------------------------- Triton's example clients

EXAMPLES = Path(__file__).resolve().parent / "triton_examples"
GRPC_EXAMPLES = [
    "simple_grpc_infer_client.py",
    "simple_grpc_async_infer_client.py",
    "simple_grpc_aio_infer_client.py",
    "simple_grpc_keepalive_client.py",
    "simple_grpc_custom_args_client.py",
    "simple_grpc_string_infer_client.py",
    "simple_grpc_shm_client.py",
    "simple_grpc_shm_string_client.py",
    "grpc_explicit_int_content_client.py",
    "grpc_explicit_int8_content_client.py",
    "grpc_explicit_byte_content_client.py",
]
HTTP_EXAMPLES = [
    "simple_http_infer_client.py",
    "simple_http_async_infer_client.py",
    "simple_http_aio_infer_client.py",
    "simple_http_string_infer_client.py",
    "simple_http_shm_client.py",
    "simple_http_shm_string_client.py",
]


def run_example(script: str, *args: str) -> str:
    """Run one of Triton's scripts as Triton's CI does; its output on success."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=EXAMPLES,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{out[-3000:]}"
    return out


def _passes(script: str, out: str) -> None:
    if "PASS" in (EXAMPLES / script).read_text():  # the scripts that print a verdict
        assert "PASS" in out, out[-3000:]


@pytest.fixture(scope="module")
def open_server(repo: Path) -> Iterator[GrpcRunning]:
    """The examples send no token: a server without one, on the same models."""
    with run_grpc_server(base_settings(repo, api_token=None)) as running:
        yield running


@pytest.mark.parametrize("script", GRPC_EXAMPLES)
def test_triton_grpc_example(open_server: GrpcRunning, script: str) -> None:
    _passes(script, run_example(script, "-u", open_server.grpc))


@pytest.mark.parametrize("script", HTTP_EXAMPLES)
def test_triton_http_example(open_server: GrpcRunning, script: str) -> None:
    _passes(script, run_example(script, "-u", open_server.host_port))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_reuse_objects_example(open_server: GrpcRunning, protocol: str) -> None:
    url = open_server.grpc if protocol == "grpc" else open_server.host_port
    run_example("reuse_infer_objects_client.py", "-u", url, "-i", protocol)


def test_triton_image_client(open_server: GrpcRunning, tmp_path: Path) -> None:
    """Triton's image classifier client on bnfold's CNN: it reads the input
    format and dims from the configuration and asks for classification."""
    from PIL import Image

    image = tmp_path / "digit.png"
    pixels = (np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(image)
    args = ["-u", open_server.grpc, "-i", "grpc", "-m", "cnn", "-c", "3", "-s", "NONE"]
    out = run_example("image_client.py", *args, str(image))
    lines = [ln.strip() for ln in out.splitlines() if " = " in ln]
    assert len(lines) == 3, out  # "score (index) = label", the top 3
    assert "PASS" in out


@pytest.mark.parametrize(
    ("script", "models", "url"),
    [("simple_grpc_model_control.py", 8, "grpc"), ("simple_http_model_control.py", 7, "http")],
)
def test_triton_model_control_example(tmp_path: Path, script: str, models: int, url: str) -> None:
    """Load, load with an override (a malformed one refused), unload, a file
    override and an unknown model refused; the index counts Triton's test
    repository, which has ``models`` entries."""
    write_simple_models(tmp_path)
    for i in range(models - len(SIMPLE_MODELS)):
        write_model(tmp_path, f"extra{i}", add_sub(TensorProto.INT32), _pbtxt(f"extra{i}"))
    with run_grpc_server(base_settings(tmp_path, api_token=None)) as running:
        out = run_example(script, "-u", running.grpc if url == "grpc" else running.host_port)
    assert "PASS: model control" in out


def _pbtxt(name: str) -> str:
    return pbtxt(name, TensorProto.INT32, ["INPUT0", "INPUT1"], ["OUTPUT0", "OUTPUT1"], [16])
