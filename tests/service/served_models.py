"""The models of the service tests, in a real repository.

``converter_models`` trains the two main ones with ``converter.pipeline``
(the digits MLP and the CIFAR-style CNN, a few quick epochs), as the
issue asks: the server is tested on what the converter writes.
``helper_models`` builds small stand-ins with onnx.helper for machines
without torch (the serving image has none): each network twice, as the
converter writes it, ``reference.onnx`` with its BatchNormalization and
``model.onnx`` with the BN folded into the Gemm/Conv before it (numpy here).

Both add the same auxiliary models (slow, swap, nobatch, broken ones) and
return ``{role: ModelInfo}``; tests learn names and shapes from that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from trained_models import ConvertOnce

from bnfold.contract import compare
from bnfold.converter.repository import write_version


@dataclass(frozen=True)
class ModelInfo:
    """What the tests need to know of a model in the repository."""

    name: str
    input: str
    row_shape: tuple[int, ...]  # one sample, without the batch axis
    output: str = "logits"
    classes: int = 10


OPSET = 17
IR_VERSION = 10  # what the installed onnxruntime reads
EPS = 1e-5


def _bn_params(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    return {
        "gamma": rng.uniform(0.5, 1.5, c).astype(np.float32),
        "beta": rng.normal(0, 0.1, c).astype(np.float32),
        "mean": rng.normal(0, 0.1, c).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }


def _fold(bn: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    s = bn["gamma"] / np.sqrt(bn["var"] + EPS)
    return s, bn["beta"] - bn["mean"] * s


def _model(nodes: list[Any], inputs: Any, outputs: Any, inits: dict[str, np.ndarray]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        outputs,
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _bn_node(x: str, y: str) -> Any:
    return helper.make_node(
        "BatchNormalization", [x, "gamma", "beta", "mean", "var"], [y], epsilon=EPS
    )


def mlp(seed: int, batch: str | int = "N") -> tuple[bytes, bytes]:
    """input (N, 64) -> Gemm 32 -> BN -> Relu -> Gemm 10 -> logits (N, 10)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (32, 64)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 32).astype(np.float32)
    w2 = rng.normal(0, 0.3, (10, 32)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 10).astype(np.float32)
    bn = _bn_params(rng, 32)
    io = (
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
    )
    tail = [
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
    ]
    reference = _model(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["z"], transB=1),
            _bn_node("z", "h"),
            *tail,
        ],
        *io,
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2, **bn},
    )
    s, t = _fold(bn)
    folded = _model(
        [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1), *tail],
        *io,
        {"w1": s[:, None] * w1, "b1": s * b1 + t, "w2": w2, "b2": b2},
    )
    return folded, reference


def cnn(
    seed: int, input_name: str = "image", shape: tuple[int, int, int] = (1, 8, 8)
) -> tuple[bytes, bytes]:
    """input (N, C, H, W) -> Conv 4x3x3 -> BN -> Relu -> GAP -> Gemm 10."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (4, shape[0], 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 4).astype(np.float32)
    w2 = rng.normal(0, 0.5, (10, 4)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 10).astype(np.float32)
    bn = _bn_params(rng, 4)
    io = (
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
    )
    tail = [
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
    ]
    conv = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    reference = _model(
        [
            helper.make_node("Conv", [input_name, "w", "b"], ["z"], **conv),
            _bn_node("z", "h"),
            *tail,
        ],
        *io,
        {"w": w, "b": b, "w2": w2, "b2": b2, **bn},
    )
    s, t = _fold(bn)
    folded = _model(
        [helper.make_node("Conv", [input_name, "w", "b"], ["h"], **conv), *tail],
        *io,
        {"w": s[:, None, None, None] * w, "b": s * b + t, "w2": w2, "b2": b2},
    )
    return folded, reference


LABELS = [str(i) for i in range(10)]


def nhwc_gemm(seed: int, name: str) -> bytes:
    """(N, 8, 8, 3) channels-last pixels -> Flatten -> Gemm -> 10 logits: an
    image model as Keras/tf2onnx lays images out, what /classify feeds an RGB
    NHWC model."""
    w = np.random.default_rng(seed).standard_normal((192, 10)).astype(np.float32) / 255
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixels"], ["f"]),
            helper.make_node("Gemm", ["f", "w"], ["logits"]),
        ],
        name,
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def config(
    name: str,
    input_name: str,
    input_shape: list[int],
    *,
    max_batch_size: int = 64,
    output_shape: list[int] | None = None,
    delay_ms: float = 1.0,
    queue: int = 1024,
    preprocessing: dict[str, Any] | None = None,
    eager: bool | None = None,
) -> dict[str, Any]:
    batching: dict[str, Any] = {
        "enabled": max_batch_size > 0,
        "max_queue_delay_ms": delay_ms,
        "max_queue_size": queue,
    }
    if eager is not None:  # bnfold's own key: False holds even a lone request
        batching["eager"] = eager
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size,
        "input": [{"name": input_name, "datatype": "FP32", "shape": input_shape}],
        "output": [{"name": "logits", "datatype": "FP32", "shape": output_shape or [10]}],
        "dynamic_batching": batching,
        "labels": LABELS,
        "preprocessing": preprocessing,
    }


def manifest(
    folded: bytes, reference: bytes, shape: list[int], arch: str, rows: int = 32
) -> dict[str, Any]:
    """A manifest whose parity report is measured here, as the converter does."""
    x = np.random.default_rng(0).standard_normal([rows, *shape]).astype(np.float32)
    outs = [
        ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {_input(m): x})[0]
        for m in (reference, folded)
    ]
    parity = compare(outs[0], outs[1]).to_dict()
    return {
        "format": 1,
        "created": "2026-11-21T12:00:00Z",
        "arch": {"name": arch, "bn": True, "input_shape": shape, "num_classes": 10, "bn_count": 1},
        "labels": LABELS,
        "inputs": [{"name": _input(folded), "datatype": "FP32", "shape": [-1, *shape]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "folding": {"folded": True, "bn_before": 1, "bn_after": 0, "report": {}},
        "parity": {**parity, "comparisons": {}},
        "versions": {"bnfold": "0.1.0", "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }


def _input(model: bytes) -> str:
    return onnx.load_from_string(model).graph.input[0].name


MLP_PREP = {
    "layout": "NC",
    "input_shape": [64],
    "pixel_scale": 16.0,
    "mean": [0.0],
    "std": [1.0],
    "color": "grayscale",
}
CNN_PREP = {
    "layout": "NCHW",
    "input_shape": [1, 8, 8],
    "pixel_scale": 255.0,
    "mean": [0.5],
    "std": [0.25],
    "color": "grayscale",
}


def write_mlp(repo: Path, name: str, *, seed: int = 0, **cfg: Any) -> Path:
    folded, reference = mlp(seed)
    return write_version(
        repo,
        name,
        model_onnx=folded,
        reference_onnx=reference,
        manifest=manifest(folded, reference, [64], "mlp"),
        config=config(name, "input", [64], preprocessing=MLP_PREP, **cfg),
    )


def write_cnn(
    repo: Path,
    name: str,
    *,
    seed: int = 0,
    input_name: str = "image",
    shape: tuple[int, int, int] = (1, 8, 8),
    **cfg: Any,
) -> Path:
    folded, reference = cnn(seed, input_name, shape)
    prep = CNN_PREP if shape == (1, 8, 8) else None
    return write_version(
        repo,
        name,
        model_onnx=folded,
        reference_onnx=reference,
        manifest=manifest(folded, reference, list(shape), "cnn"),
        config=config(name, input_name, list(shape), preprocessing=prep, **cfg),
    )


def helper_models(repo: Path) -> dict[str, ModelInfo]:
    """Without torch: onnx.helper stand-ins for the converter's models."""
    write_mlp(repo, "mlp")
    write_cnn(repo, "cnn", seed=1)
    write_cnn(repo, "cnn", seed=2)
    return auxiliary_models(repo) | {
        "mlp": ModelInfo("mlp", "input", (64,)),
        "cnn": ModelInfo("cnn", "image", (1, 8, 8)),
    }


def converter_models(repo: Path, converted: ConvertOnce) -> dict[str, ModelInfo]:
    """``mlp`` and ``cnn`` (version 2) trained and written by converter.pipeline,
    taken from the session's shared conversions (tests/trained_models.py; the
    cnn is the one tests/converter/test_pipeline.py checks)."""
    converted("mlp", epochs=1, limit=256).write(repo, "mlp")
    # version 1: same signature, other weights, so that versions are told apart
    write_cnn(repo, "cnn", seed=1, input_name="input", shape=(3, 32, 32))
    converted("cifar-cnn", epochs=2, limit=600).write(repo, "cnn")
    return auxiliary_models(repo) | {
        "mlp": ModelInfo("mlp", "input", (64,)),
        "cnn": ModelInfo("cnn", "input", (3, 32, 32)),
    }


def auxiliary_models(repo: Path) -> dict[str, ModelInfo]:
    """Models with roles of their own:

    - ``slow``: waits 1.5 s to fill a batch even when alone (not eager),
      queue of 2 (overload, drain, unload)
    - ``swap``: reloaded by tests; ``nobatch``: ``max_batch_size`` 0, shape (1, 64)
    - ``bad-sha``, ``garbage``: refused at load; ``empty``: no version folder
    """
    write_mlp(repo, "slow", delay_ms=1500.0, queue=2, eager=False)
    write_mlp(repo, "swap", seed=3)

    folded, reference = mlp(4, batch=1)
    write_version(
        repo,
        "nobatch",
        model_onnx=folded,
        reference_onnx=reference,
        manifest=manifest(folded, reference, [64], "mlp", rows=1),
        config=config("nobatch", "input", [1, 64], max_batch_size=0, output_shape=[1, 10]),
    )

    bad = write_mlp(repo, "bad-sha")
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")  # one byte more than the manifest's sha256 covers

    write_version(
        repo,
        "garbage",
        model_onnx=b"this is not an onnx model",
        reference_onnx=b"nor is this",
        manifest={"format": 1},
        config=config("garbage", "input", [64]),
    )
    (repo / "empty").mkdir()
    (repo / ".hidden").mkdir()  # invalid model name: ignored
    flat = {n: ModelInfo(n, "input", (64,)) for n in ("slow", "swap", "bad-sha", "garbage")}
    return flat | {"nobatch": ModelInfo("nobatch", "input", (64,))}
