"""Triton's model configuration as Triton reads it (issue 18): ``reshape`` on
inputs and outputs with and without ``max_batch_size``, ``optional`` inputs,
``max_batch_size: 0``, fields bnfold does not act on named in the log, and
Triton's quickstart model ``densenet_onnx`` laid out exactly as Triton ships
it (its config.pbtxt verbatim, a stand-in graph of the same names and
shapes), answered by Triton's own ``image_client.py`` over HTTP and gRPC.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from grpc_harness import GrpcRunning, run_grpc_server
from onnx import TensorProto, helper, numpy_helper
from service_harness import TOKEN, WAIT_S, base_settings, capture_server_log
from tritonclient.utils import InferenceServerException

from bnfold.folding import count_bn
from bnfold.service.proto import model_config_pb2 as pb
from bnfold.service.triton_config import unhonoured

pytestmark = pytest.mark.timeout(300)

AUTH = {"authorization": f"Bearer {TOKEN}"}
EXAMPLES = Path(__file__).parent / "triton_examples"
OPSET, IR_VERSION = 17, 10

# docs/examples/model_repository/densenet_onnx/config.pbtxt in
# triton-inference-server/server, verbatim (BSD-3-Clause, NVIDIA).
DENSENET_CONFIG = """name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]"""
# The same file as Triton shipped it before (max_batch_size 1, output reshape only).
DENSENET_CONFIG_BATCHED = """name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 1
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]"""
LABELS = [f"CLASS_{i:04d}" for i in range(1000)]


def model_bytes(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def densenet_stand_in(batch: int | str = 1) -> bytes:
    """data_0 [batch, 3, 224, 224] -> fc6_1 [batch, 1000, 1, 1]: global average
    pool, a 1x1 convolution and a BatchNormalization (fold on load folds it)."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((1000, 3, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(1000).astype(np.float32), "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 1000).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.uniform(-1, 1, 1000).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.uniform(-1, 1, 1000).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 1000).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w", "b"], ["conv"]),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["fc6_1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "densenet_stand_in",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [batch, 1000, 1, 1])],
        inits,
    )
    return model_bytes(graph)


def write(repo: Path, name: str, config: str, model: bytes, **files: str) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(model)
    (repo / name / "config.pbtxt").write_text(config)
    for filename, text in files.items():
        (repo / name / filename).write_text(text)
    return version


# ----------------------------------------------------------------- densenet_onnx


@pytest.fixture(scope="module")
def densenet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcRunning]:
    """Triton's quickstart repository, served with --fold-on-load and no token
    (Triton's clients send none)."""
    repo = tmp_path_factory.mktemp("quickstart")
    labels = {"densenet_labels.txt": "\n".join(LABELS) + "\n"}
    write(repo, "densenet_onnx", DENSENET_CONFIG, densenet_stand_in(), **labels)
    settings = base_settings(repo, api_token=None, fold_on_load=True)
    with run_grpc_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "mug.jpg"
    pixels = (np.random.default_rng(3).random((180, 260, 3)) * 255).astype(np.uint8)
    pixels[:, :130, 0] = 250  # a red half: the channels differ on average
    Image.fromarray(pixels).save(path, quality=95)
    return path


def inception(path: Path) -> np.ndarray:
    """image_client.py's INCEPTION preprocessing, NCHW: (3, 224, 224)."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    scaled = (np.array(img).astype(np.float32) / 127.5) - 1
    return np.transpose(scaled, (2, 0, 1))


def top3(model: bytes, x: np.ndarray) -> list[int]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    scores = session.run(None, {"data_0": x[np.newaxis]})[0].reshape(-1)
    return [int(i) for i in np.argsort(-scores, kind="stable")[:3]]


def run_image_client(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "image_client.py"), *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=EXAMPLES,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"image_client.py exited {done.returncode}:\n{out[-3000:]}"
    return out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_quickstart_image_client(densenet: GrpcRunning, image: Path, protocol: str) -> None:
    """Triton's quickstart command, unchanged: ``image_client -m densenet_onnx
    -c 3 -s INCEPTION``; the top 3 are ONNX Runtime's on the original graph."""
    url = densenet.grpc if protocol == "grpc" else densenet.host_port
    args = ["-u", url, "-i", protocol, "-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION"]
    out = run_image_client(*args, str(image))
    lines = [ln.strip() for ln in out.splitlines() if " = " in ln]
    assert len(lines) == 3, out
    shown = [int(ln.split("(")[1].split(")")[0]) for ln in lines]
    assert shown == top3(densenet_stand_in(), inception(image))
    assert [ln.split(" = ")[1] for ln in lines] == [LABELS[i] for i in shown]
    assert "PASS" in out


def test_quickstart_grpc_client(densenet: GrpcRunning) -> None:
    """Triton's ``grpc_client.py`` unchanged: the raw gRPC stubs on
    ``densenet_onnx`` (health, metadata, configuration, one inference of the
    wire shape [3, 224, 224] with ``raw_input_contents``)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "grpc_client.py"), "-u", densenet.grpc],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=EXAMPLES,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"grpc_client.py exited {done.returncode}:\n{out[-3000:]}"
    assert "PASS" in out
    assert "model ready: true" in out
    assert 'id: "my request id"' in out  # the response carries the request's id
    # the answer: fc6_1 in the wire shape, 1000 FP32 values
    infer = out[out.index("model infer:") :]
    assert 'name: "fc6_1"' in infer and "shape: 1000" in infer
    assert infer.count("shape:") == 1  # [1000], not the graph's [1, 1000, 1, 1]
    assert "raw_output_contents: " in infer


def test_quickstart_model_as_triton_describes_it(densenet: GrpcRunning) -> None:
    with httpx.Client(base_url=densenet.url, timeout=30) as http:
        meta = http.get("/v2/models/densenet_onnx").json()
        assert meta["inputs"] == [{"name": "data_0", "datatype": "FP32", "shape": [3, 224, 224]}]
        assert meta["outputs"] == [{"name": "fc6_1", "datatype": "FP32", "shape": [1000]}]
        fold = meta["parameters"]["fold_on_load"]
        assert (fold["served"], fold["bn_before"], fold["bn_after"]) == ("folded", 1, 0)
        config = http.get("/v2/models/densenet_onnx/config").json()
        assert config["max_batch_size"] == 0
        (inp,) = config["input"]
        assert inp["dims"] == [3, 224, 224]
        assert inp["reshape"] == {"shape": [1, 3, 224, 224]}
        assert inp["format"] == "FORMAT_NCHW"
        (out,) = config["output"]
        assert out["dims"] == [1000]
        assert out["reshape"] == {"shape": [1, 1000, 1, 1]}
        assert out["label_filename"]
    # the wire shape in, the wire shape out, over gRPC too
    x = inception_like(2)
    client = grpcclient.InferenceServerClient(densenet.grpc)
    try:
        inp = grpcclient.InferInput("data_0", [3, 224, 224], "FP32")
        inp.set_data_from_numpy(x[0])
        got = client.infer("densenet_onnx", [inp]).as_numpy("fc6_1")
        assert got.shape == (1000,)
        want = (
            ort.InferenceSession(densenet_stand_in(), providers=["CPUExecutionProvider"])
            .run(None, {"data_0": x[:1]})[0]
            .reshape(1000)
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # the graph's shape is not the wire's: refused as a client mistake
        bad = grpcclient.InferInput("data_0", [1, 3, 224, 224], "FP32")
        bad.set_data_from_numpy(x[:1])
        with pytest.raises(InferenceServerException) as info:
            client.infer("densenet_onnx", [bad])
        assert "[1, 3, 224, 224] does not match the model's [3, 224, 224]" in info.value.message()
    finally:
        client.close()


def inception_like(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)


def test_quickstart_as_shipped_before(tmp_path: Path, image: Path) -> None:
    """The earlier shipped config (max_batch_size 1, output reshape only):
    the wire output is [batch, 1000], the graph's [batch, 1000, 1, 1]."""
    labels = {"densenet_labels.txt": "\n".join(LABELS) + "\n"}
    write(tmp_path, "densenet_onnx", DENSENET_CONFIG_BATCHED, densenet_stand_in("N"), **labels)
    with run_grpc_server(base_settings(tmp_path, api_token=None)) as running:
        args = ["-u", running.host_port, "-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION"]
        out = run_image_client(*args, str(image))
    lines = [ln.strip() for ln in out.splitlines() if " = " in ln]
    shown = [int(ln.split("(")[1].split(")")[0]) for ln in lines]
    assert shown == top3(densenet_stand_in("N"), inception(image))


# ----------------------------------------------------------------- reshape


def reshape_model() -> bytes:
    """x [B, 4] -> y [B] = sum over the row; z [B, 4] = x * 2."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0),
            helper.make_node("Mul", ["x", "two"], ["z"]),
        ],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 4]),
        ],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array(2, np.float32), "two"),
        ],
    )
    return model_bytes(graph)


RESHAPE_CONFIG = """name: "reshaped"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape { shape: [ 4 ] } } ]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } },
  { name: "z" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape { shape: [ 4 ] } }
]
"""


@pytest.fixture(scope="module")
def reshaped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcRunning]:
    repo = tmp_path_factory.mktemp("reshape")
    write(repo, "reshaped", RESHAPE_CONFIG, reshape_model())
    unbatched = RESHAPE_CONFIG.replace('"reshaped"', '"flat"').replace(
        "max_batch_size: 8", "max_batch_size: 0"
    )
    unbatched = unbatched.replace(
        "dims: [ 2, 2 ] reshape { shape: [ 4 ] } } ]",
        "dims: [ 2, 2 ] reshape { shape: [ 1, 4 ] } } ]",
        1,
    )
    unbatched = unbatched.replace(
        "dims: [ 1 ] reshape { shape: [ ] }", "dims: [ 1 ] reshape { shape: [ 1 ] }"
    )
    unbatched = unbatched.replace(
        'name: "z" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape { shape: [ 4 ] }',
        'name: "z" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape { shape: [ 1, 4 ] }',
    )
    write(repo, "flat", unbatched, reshape_model())
    # the same in config.json (Triton's field names in bnfold's schema)
    as_json = {
        "max_batch_size": 8,
        "input": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "reshape": [4]}],
        "output": [
            {"name": "y", "datatype": "FP32", "shape": [1], "reshape": []},
            {"name": "z", "datatype": "FP32", "shape": [2, 2], "reshape": [4]},
        ],
    }
    (repo / "json" / "1").mkdir(parents=True)
    (repo / "json" / "1" / "model.onnx").write_bytes(reshape_model())
    (repo / "json" / "config.json").write_text(json.dumps(as_json))
    with run_grpc_server(base_settings(repo)) as running:
        yield running


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_reshape_with_max_batch_size(reshaped: GrpcRunning, protocol: str) -> None:
    module: Any = grpcclient if protocol == "grpc" else httpclient
    url = reshaped.grpc if protocol == "grpc" else reshaped.host_port
    client = module.InferenceServerClient(url)
    try:
        x = np.arange(3 * 4, dtype=np.float32).reshape(3, 2, 2)  # batch 3, wire [2, 2]
        inp = module.InferInput("x", [3, 2, 2], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("reshaped", [inp], headers=dict(AUTH))
        y, z = result.as_numpy("y"), result.as_numpy("z")
        assert y.shape == (3, 1)  # graph [3], wire [3, 1]
        np.testing.assert_array_equal(y[:, 0], x.reshape(3, 4).sum(axis=1))
        assert z.shape == (3, 2, 2)
        np.testing.assert_array_equal(z, x * 2)
        meta = client.get_model_metadata("reshaped", headers=dict(AUTH))
        if protocol == "http":
            assert meta["inputs"][0]["shape"] == [-1, 2, 2]
            assert [o["shape"] for o in meta["outputs"]] == [[-1, 1], [-1, 2, 2]]
    finally:
        client.close()


def test_reshape_in_config_json(reshaped: GrpcRunning) -> None:
    with httpx.Client(base_url=reshaped.url, timeout=30, headers=dict(AUTH)) as http:
        x = list(range(8))
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2, 2], "data": x}]}
        r = http.post("/v2/models/json/infer", json=body)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        assert (outputs["y"]["shape"], outputs["y"]["data"]) == ([2, 1], [6.0, 22.0])
        assert outputs["z"]["shape"] == [2, 2, 2]


def test_reshape_without_max_batch_size(reshaped: GrpcRunning) -> None:
    with httpx.Client(base_url=reshaped.url, timeout=30, headers=dict(AUTH)) as http:
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]
        }
        r = http.post("/v2/models/flat/infer", json=body)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        assert (outputs["y"]["shape"], outputs["y"]["data"]) == ([1], [10.0])
        assert (outputs["z"]["shape"], outputs["z"]["data"]) == ([2, 2], [2.0, 4.0, 6.0, 8.0])
        body["inputs"][0]["shape"] = [1, 4]  # the graph's shape is not the wire's
        r = http.post("/v2/models/flat/infer", json=body)
        assert r.status_code == 400
        assert "does not match the model's [2, 2]" in r.json()["error"]
        config = http.get("/v2/models/flat/config").json()
        assert config["input"][0]["reshape"] == {"shape": [1, 4]}


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (
            RESHAPE_CONFIG.replace(
                "dims: [ 2, 2 ] reshape { shape: [ 4 ] } } ]",
                "dims: [ 3 ] reshape { shape: [ 4 ] } } ]",
            ),
            "dims [3] hold 3 elements, the reshape [4] 4",
        ),
        (
            RESHAPE_CONFIG.replace(
                "reshape { shape: [ 4 ] } } ]", "reshape { shape: [ 2, 2 ] } } ]", 1
            ),
            "reshape [2, 2] has rank 2, the graph 1",
        ),
        (
            RESHAPE_CONFIG.replace(
                "dims: [ 2, 2 ] reshape { shape: [ 4 ] } } ]",
                "dims: [ -1, 2 ] reshape { shape: [ 4 ] } } ]",
            ),
            "a variable dimension (-1) must appear once on both sides or on neither",
        ),
    ],
)
def test_reshape_that_does_not_fit_is_refused(tmp_path: Path, config: str, reason: str) -> None:
    write(tmp_path, "reshaped", config, reshape_model())
    with (
        run_grpc_server(base_settings(tmp_path)) as running,
        httpx.Client(base_url=running.url, timeout=30) as http,
    ):
        entries = http.post("/v2/repository/index", headers=dict(AUTH)).json()
        entry = next(e for e in entries if e["name"] == "reshaped")
        assert entry["state"] == "UNAVAILABLE"
        assert reason in entry["reason"]


# ----------------------------------------------------------------- optional inputs


def optional_model() -> bytes:
    """y = x + bias; ``bias`` is an input with an initializer default (3.0),
    ``scale`` one more (2.0): z = x * scale."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "bias"], ["y"]),
            helper.make_node("Mul", ["x", "scale"], ["z"]),
        ],
        "optional",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 2]),
        ],
        [
            numpy_helper.from_array(np.array([3.0], np.float32), "bias"),
            numpy_helper.from_array(np.array([2.0], np.float32), "scale"),
        ],
    )
    return model_bytes(graph)


OPTIONAL_CONFIG = """name: "opt"
max_batch_size: 0
input [
  { name: "x" data_type: TYPE_FP32 dims: [ -1, 2 ] },
  { name: "bias" data_type: TYPE_FP32 dims: [ 1 ] optional: true }
]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ -1, 2 ] },
  { name: "z" data_type: TYPE_FP32 dims: [ -1, 2 ] }
]
"""


@pytest.fixture(scope="module")
def optional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcRunning]:
    repo = tmp_path_factory.mktemp("optional")
    write(repo, "opt", OPTIONAL_CONFIG, optional_model())
    required = OPTIONAL_CONFIG.replace('"opt"', '"req"').replace(" optional: true", "")
    write(repo, "req", required, optional_model())
    with run_grpc_server(base_settings(repo)) as running:
        yield running


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_optional_input_left_out_runs_on_the_default(optional: GrpcRunning, protocol: str) -> None:
    module: Any = grpcclient if protocol == "grpc" else httpclient
    url = optional.grpc if protocol == "grpc" else optional.host_port
    client = module.InferenceServerClient(url)
    try:
        x = np.array([[1.0, 2.0]], np.float32)
        inp = module.InferInput("x", [1, 2], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("opt", [inp], headers=dict(AUTH))
        assert result.as_numpy("y").tolist() == [[4.0, 5.0]]  # the graph's bias, 3
        assert result.as_numpy("z").tolist() == [[2.0, 4.0]]  # scale is not exposed
        bias = module.InferInput("bias", [1], "FP32")
        bias.set_data_from_numpy(np.array([10.0], np.float32))
        result = client.infer("opt", [inp, bias], headers=dict(AUTH))
        assert result.as_numpy("y").tolist() == [[11.0, 12.0]]
        # the same input, not optional: required as before
        with pytest.raises(InferenceServerException) as info:
            client.infer("req", [inp], headers=dict(AUTH))
        assert "missing inputs ['bias']" in info.value.message()
    finally:
        client.close()


def test_optional_input_described_as_triton_does(optional: GrpcRunning) -> None:
    with httpx.Client(base_url=optional.url, timeout=30, headers=dict(AUTH)) as http:
        meta = http.get("/v2/models/opt").json()
        assert [i["name"] for i in meta["inputs"]] == ["x", "bias"]  # scale: not listed
        config = http.get("/v2/models/opt/config").json()
        assert [(i["name"], i["optional"]) for i in config["input"]] == [
            ("x", False),
            ("bias", True),
        ]


# ----------------------------------------------------------------- not honoured


def test_fields_not_honoured_are_named(tmp_path: Path) -> None:
    text = """name: "m"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] allow_ragged_batch: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU count: 2 } ]
dynamic_batching { preferred_batch_size: [ 4 ] priority_levels: 2 }
response_cache { enable: true }
optimization { priority: PRIORITY_MAX graph { level: 1 } }
model_warmup [ { name: "w" batch_size: 1 } ]
"""
    message = text_format.Parse(text, pb.ModelConfig())
    assert unhonoured(message) == [
        "input.allow_ragged_batch",
        "instance_group.count",
        "dynamic_batching.priority_levels",
        "optimization.priority",
        "response_cache",
    ]


def test_fields_not_honoured_are_named_in_the_load_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = capture_server_log(monkeypatch).lines
    config = RESHAPE_CONFIG.replace('"reshaped"', '"logged"') + "response_cache { enable: true }\n"
    write(tmp_path, "logged", config, reshape_model())
    with (
        run_grpc_server(base_settings(tmp_path)) as running,
        httpx.Client(base_url=running.url, timeout=30) as http,
    ):
        assert http.get("/v2/models/logged/ready").status_code == 200
    said = [ln for ln in lines if "not honoured" in ln]
    assert said and "response_cache" in said[0], lines
    assert count_bn(onnx.load_from_string(reshape_model())) == 0


def test_docs_name_every_field_not_honoured() -> None:
    """docs/repository.md lists each model_config.proto field bnfold does not
    act on, so none is dropped without a word."""
    from bnfold.service.triton_config import HONOURED, REFUSED

    docs = (Path(__file__).parents[2] / "docs" / "repository.md").read_text()
    section = docs[docs.index("## Triton's model configuration") :]
    messages = {
        "": pb.ModelConfig,
        "input.": pb.ModelInput,
        "output.": pb.ModelOutput,
        "instance_group.": pb.ModelInstanceGroup,
        "dynamic_batching.": pb.ModelDynamicBatching,
        "optimization.": pb.ModelOptimizationPolicy,
    }
    for prefix, message in messages.items():
        for field in message.DESCRIPTOR.fields:
            path = prefix + field.name
            if path in HONOURED or field.name in REFUSED:
                continue
            if any(h.startswith(path + ".") for h in HONOURED):
                continue  # partly honoured: its own fields are checked
            assert f"`{field.name}`" in section, path


def scalar_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(2, np.float32), "two")],
    )
    return model_bytes(graph)


def test_scalar_tensors_configured_as_one(tmp_path: Path) -> None:
    """Triton's rule for a model that does not batch: a scalar graph tensor
    is configured with dims of 1 ([1]), which the wire carries."""
    config = """max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
    write(tmp_path, "scalar", config, scalar_model())
    with (
        run_grpc_server(base_settings(tmp_path)) as running,
        httpx.Client(base_url=running.url, timeout=30, headers=dict(AUTH)) as http,
    ):
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [4.5]}]}
        r = http.post("/v2/models/scalar/infer", json=body)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        assert (out["shape"], out["data"]) == ([1], [9.0])


def test_optional_inputs_of_a_batching_model_refused_as_triton_does(tmp_path: Path) -> None:
    config = OPTIONAL_CONFIG.replace("max_batch_size: 0", "max_batch_size: 4")
    config = config.replace("dims: [ -1, 2 ]", "dims: [ 2 ]")
    write(tmp_path, "opt", config, optional_model())
    with (
        run_grpc_server(base_settings(tmp_path)) as running,
        httpx.Client(base_url=running.url, timeout=30) as http,
    ):
        entries = http.post("/v2/repository/index", headers=dict(AUTH)).json()
        entry = next(e for e in entries if e["name"] == "opt")
        assert entry["state"] == "UNAVAILABLE"
        assert (
            "optional input 'bias' is not supported for models that support batching"
            in (entry["reason"])
        )


def test_reshape_under_batching(reshaped: GrpcRunning) -> None:
    """Requests merged into one batch are reshaped together and split back:
    each client gets its own rows in its wire shape."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.full((1 + i % 3, 2, 2), float(i), np.float32)
        client = httpclient.InferenceServerClient(reshaped.host_port)
        try:
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer("reshaped", [inp], headers=dict(AUTH))
            return x, result.as_numpy("y")
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        for x, y in pool.map(one, range(24)):
            assert y.shape == (x.shape[0], 1)
            np.testing.assert_array_equal(y[:, 0], x.reshape(len(x), 4).sum(axis=1))
