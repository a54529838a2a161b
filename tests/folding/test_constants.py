"""Constant subgraphs are evaluated before folding, so computed weights fold like initializers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.folding import fold
from bnfold.folding.constants import GROWTH_ELEMENTS, materialize
from bnfold.folding.graph import Graph
from bnfold.folding.rules import REGISTRY

STATS = {"gamma": [4], "beta": [4], "mean": [4], "var": [4]}


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_dynamo_zero_bias_is_evaluated_and_the_bn_folds(build, check):
    """``Expand(CastLike(0, x), Shape(w))``: CastLike reads the activation for its dtype only."""
    model = build(
        """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {
            r = Relu (x)
            zero = Constant <value = float {0.0}> ()
            like = CastLike (zero, r)
            shape = Shape <start = 0, end = 1> (w)
            b = Expand (like, shape)
            c = Conv (r, w, b)
            z = BatchNormalization (c, gamma, beta, mean, var)
        }""",
        w=[4, 3, 3, 3],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"Relu": 1, "Conv": 1}
    assert report.evaluated == ["CastLike 'CastLike_2'", "Shape 'Shape_3'", "Expand 'Expand_4'"]


def test_computed_weights_keep_their_names(build):
    """An evaluated output becomes an initializer of the same name (the same tensor)."""
    model = build(
        """
        g (float[N, 5] x) => (float[N, 3] z) {
            wt = Transpose <perm = [1, 0]> (w)
            z = MatMul (x, wt)
        }""",
        w=[3, 5],
    )
    folded, report = fold(model)
    assert [n.op_type for n in folded.graph.node] == ["MatMul"]
    np.testing.assert_array_equal(inits(folded)["wt"], inits(model)["w"].T)
    assert report.evaluated == ["Transpose 'Transpose_0'"]


def test_ops_without_a_numpy_path_run_on_the_reference_evaluator(build):
    model = build(
        """
        g (float[N, 4] x) => (float[N, 2] z) {
            starts = Constant <value = int64[1] {1}> ()
            ends = Constant <value = int64[1] {3}> ()
            axes = Constant <value = int64[1] {1}> ()
            ws = Slice (w, starts, ends, axes)
            z = MatMul (x, ws)
        }""",
        w=[4, 5],
    )
    folded, report = fold(model)
    assert report.evaluated == ["Slice 'Slice_3'"]
    np.testing.assert_array_equal(inits(folded)["ws"], inits(model)["w"][:, 1:3])


def test_reshape_with_zero_copies_the_dim(build):
    model = build(
        """
        g (float[N, 6] x) => (float[N, 2] z) {
            shape = Constant <value = int64[2] {0, -1}> ()
            wr = Reshape (w, shape)
            z = MatMul (x, wr)
        }""",
        w=[6, 1, 2],
    )
    folded, _ = fold(model)
    assert inits(folded)["wr"].shape == (6, 2)


def test_random_quantised_and_graph_outputs_are_not_evaluated(build):
    model = build(
        """
        g (float[N, 4] x) => (float[N, 4] z, float[4] wc) {
            r = RandomNormalLike (w)
            a = Add (x, r)
            q = DequantizeLinear (wq, sc)
            m = Mul (a, q)
            wc = Identity (w)
            z = Add (m, wc)
        }""",
        w=[4],
        values={"wq": np.array([1, 2, 3, 4], np.int8), "sc": np.array(0.5)},
        checked=False,
    )
    g = Graph(model)
    assert materialize(g, REGISTRY.weight_inputs()) == []


def test_a_constant_that_would_grow_the_model_stays_computed(build):
    """Expand of a scalar to a large activation-sized tensor is left to the runtime."""
    n = 2 * GROWTH_ELEMENTS
    model = build(
        f"""
        g (float[N, {n}] x) => (float[N, {n}] z) {{
            shape = Constant <value = int64[1] {{{n}}}> ()
            big = Expand (one, shape)
            z = Add (x, big)
        }}""",
        values={"one": np.array(1.0)},
    )
    g = Graph(model)
    assert materialize(g, REGISTRY.weight_inputs()) == []


def test_a_computed_weight_may_grow(build):
    """A layer's weight or bias is evaluated even when it is larger than its inputs."""
    n = 300  # n * n > GROWTH_ELEMENTS
    model = build(
        f"""
        g (float[N, {n}] x) => (float[N, {n}] z) {{
            shape = Constant <value = int64[2] {{{n}, {n}}}> ()
            w = Expand (half, shape)
            z = MatMul (x, w)
        }}""",
        values={"half": np.array(0.5)},
    )
    assert n * n > GROWTH_ELEMENTS
    folded, report = fold(model)
    assert report.evaluated == ["Expand 'Expand_1'"]
    assert [n.op_type for n in folded.graph.node] == ["MatMul"]
