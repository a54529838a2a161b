"""ONNX graphs built with onnx.helper for the any-repository tests, and the
files a Triton user writes beside them (config.pbtxt).

``resnet_block`` is a plain graph as an exporter writes it, BNs kept: the
input of fold on load. Nothing here folds; the service does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from served_models import IR_VERSION, OPSET

EPS = 1e-5


def _bn(rng: np.random.Generator, c: int, prefix: str) -> dict[str, np.ndarray]:
    """BN statistics as training leaves them, some gammas negative."""
    sign = np.where(np.arange(c) % 2 == 0, -1.0, 1.0)  # every other channel flips
    return {
        f"{prefix}_gamma": (sign * rng.uniform(0.5, 1.5, c)).astype(np.float32),
        f"{prefix}_beta": rng.normal(0, 0.2, c).astype(np.float32),
        f"{prefix}_mean": rng.normal(0, 0.3, c).astype(np.float32),
        f"{prefix}_var": rng.uniform(0.3, 2.0, c).astype(np.float32),
    }


def _bn_node(x: str, y: str, prefix: str) -> Any:
    names = [f"{prefix}_{k}" for k in ("gamma", "beta", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], epsilon=EPS)


RESNET_BN = 2  # BatchNormalization nodes in resnet_block


def resnet_block(
    seed: int, channels: int = 4, hw: int = 8, classes: int = 10, input_name: str = "x"
) -> bytes:
    """x (N, C, H, W) -> Conv 3x3 -> BN -> Relu -> Conv 3x3 (no bias) -> BN
    -> Add x -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits (N, classes)."""
    rng = np.random.default_rng(seed)
    c = channels
    inits: dict[str, np.ndarray] = {
        "w1": rng.normal(0, 0.4, (c, c, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, c).astype(np.float32),
        "w2": rng.normal(0, 0.4, (c, c, 3, 3)).astype(np.float32),
        "fc_w": rng.normal(0, 0.5, (classes, c)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, classes).astype(np.float32),
        **_bn(rng, c, "bn1"),
        **_bn(rng, c, "bn2"),
    }
    pads, kernel = [1, 1, 1, 1], [3, 3]
    nodes = [
        helper.make_node("Conv", [input_name, "w1", "b1"], ["c1"], pads=pads, kernel_shape=kernel),
        _bn_node("c1", "n1", "bn1"),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=pads, kernel_shape=kernel),
        _bn_node("c2", "n2", "bn2"),
        helper.make_node("Add", ["n2", input_name], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "resnet_block",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", c, hw, hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_bare(repo: Path, name: str, version: int, model: bytes) -> Path:
    """``<repo>/<name>/<version>/model.onnx`` and nothing else (no manifest),
    the version folder renamed into place whole."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".tmp-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(model)
    final = model_dir / str(version)
    staging.rename(final)
    return final


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of ONNX Runtime (CPU) run directly on the file."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - b| / max |b| (the contract's normwise relative error)."""
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def pbtxt(
    name: str,
    *,
    input_name: str,
    input_dims: list[int],
    output_dims: list[int],
    max_batch_size: int,
    image: bool = False,
    version_policy: str | None = None,
    label_filename: str | None = None,
    extra: str = "",
) -> str:
    """A config.pbtxt as a Triton user writes it for an ONNX model."""
    fmt = "\n    format: FORMAT_NCHW" if image else ""
    policy = f"version_policy: {version_policy}\n" if version_policy else ""
    labels = f'\n    label_filename: "{label_filename}"' if label_filename else ""
    return f"""\
# Triton model configuration
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input_name}"
    data_type: TYPE_FP32{fmt}
    dims: [ {", ".join(map(str, input_dims))} ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {", ".join(map(str, output_dims))} ]{labels}
  }}
]
{policy}{extra}"""
