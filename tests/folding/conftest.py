"""Fixtures for the folding tests: tiny graphs built inline, run with ORT (no optimizations).

``build(text, **shapes)`` parses an ONNX text graph and adds one random
initializer per keyword (name=shape). Values follow the name: ``gamma*`` is
mixed-sign (``positive=True`` makes it > 0), ``var*`` lies in [0.5, 2],
``mean*``/``beta*`` are normal, anything else is a weight ~ N(0, 0.5).
``check(model)`` folds it, compares the outputs on random inputs and returns
(folded, report, op counts of the folded model).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from bnfold.contract import compare
from bnfold.folding import fold

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def random_init(
    name: str, shape: tuple[int, ...], rng: np.random.Generator, positive: bool
) -> np.ndarray:
    if name.startswith("gamma"):
        g = rng.uniform(0.5, 1.5, shape)
        if not positive:
            g *= rng.choice([-1.0, 1.0], size=shape)
            g.flat[0] = -abs(g.flat[0])  # at least one negative channel
        return g
    if name.startswith("var"):
        return rng.uniform(0.5, 2.0, shape)
    if name.startswith(("mean", "beta")):
        return rng.normal(0.0, 1.0, shape)
    return rng.normal(0.0, 0.5, shape)


def make_model(
    graph_text: str,
    dtype: type = np.float32,
    seed: int = 0,
    positive: bool = False,
    values: dict[str, np.ndarray] | None = None,
    checked: bool = True,
    opset: int = 17,
    **shapes: tuple[int, ...],
) -> onnx.ModelProto:
    """Parse ``graph_text`` (without header) and add the named initializers.

    ``values`` gives initializers explicitly; ``shapes`` draws them at random.
    """
    header = HEADER.replace('"" : 17', f'"" : {opset}')
    model = onnx.parser.parse_model(header + "\n" + graph_text)
    rng = np.random.default_rng(seed)
    arrays = {n: random_init(n, tuple(s), rng, positive) for n, s in shapes.items()}
    arrays.update(values or {})
    for name, value in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(dtype), name))
    if checked:
        onnx.checker.check_model(model, full_check=True)
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def random_feeds(model: onnx.ModelProto, batch: int = 3, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[inp.name] = rng.normal(0.0, 1.0, shape).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def fold_and_compare(
    model: onnx.ModelProto, rtol: float = 1e-5
) -> tuple[onnx.ModelProto, Any, Counter[str]]:
    """Fold, check the folded model, compare every output with ORT; return the results."""
    folded, report = fold(model)
    onnx.checker.check_model(folded, full_check=True)
    feeds = random_feeds(model)
    for expected, actual in zip(run(model, feeds), run(folded, feeds), strict=True):
        parity = compare(expected, actual, rtol=rtol, min_top1=0.0)
        assert parity.passed, parity
    return folded, report, ops(folded)


@pytest.fixture
def build() -> Callable[..., onnx.ModelProto]:
    return make_model


@pytest.fixture
def check() -> Callable[..., tuple[onnx.ModelProto, Any, Counter[str]]]:
    return fold_and_compare


@pytest.fixture
def tools() -> SimpleNamespace:
    """The helpers above, for tests that need more than build/check."""
    return SimpleNamespace(header=HEADER, run=run, random_feeds=random_feeds, ops=ops)
