"""ReduceMean over axes the map is constant along lets the map through, as GlobalAveragePool does.

The refusals (a map varying along a reduced axis, axes that are not
constants, a map on the axes input) are cases in test_refusals.py.
"""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest
from onnx import numpy_helper

STATS = {"gamma": [4], "beta": [4], "mean": [4], "var": [4]}


@pytest.mark.parametrize("keepdims", [0, 1])
def test_bn_before_a_spatial_mean_folds_into_the_classifier(build, check, keepdims):
    """torch's ``x.mean((2, 3))`` head: ReLU -> BN -> mean -> Linear."""
    flatten = "f = Flatten (p)" if keepdims else "f = Identity (p)"
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 5] z) {{
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            r = Relu (c)
            y = BatchNormalization (r, gamma, beta, mean, var)
            axes = Constant <value = int64[2] {{2, 3}}> ()
            p = ReduceMean <keepdims = {keepdims}> (y, axes)
            {flatten}
            z = Gemm <transB = 1> (f, w2, b2)
        }}""",
        w=[4, 3, 3, 3],
        b=[4],
        w2=[5, 4],
        b2=[5],
        opset=18,
        **STATS,
    )
    _, report, ops = check(model)
    assert "BatchNormalization" not in ops and report.residual_ops == 0
    assert "reduce-mean-forward:ReduceMean_4" in report.bns[0].rules
    assert report.bns[0].folded_into == ["Gemm_6"]


def test_opset13_axes_attribute_and_backward_into_the_conv(check, tools):
    """Conv -> ReduceMean (axes attribute, opset 13) -> BN1d: the map goes back through."""
    model = onnx.parser.parse_model(
        tools.header.replace('"" : 17', '"" : 13')
        + """
        g (float[N, 3, 6, 6] x) => (float[N, 4] z) {
            c = Conv (x, w, b)
            p = ReduceMean <axes = [2, 3], keepdims = 0> (c)
            z = BatchNormalization (p, gamma, beta, mean, var)
        }"""
    )
    rng = np.random.default_rng(0)
    for name, shape in {"w": (4, 3, 3, 3), "b": (4,), **{k: (4,) for k in STATS}}.items():
        value = rng.uniform(0.5, 1.5, shape) if name == "var" else rng.normal(size=shape)
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    _, report, ops = check(model)
    assert ops == {"Conv": 1, "ReduceMean": 1}
    assert report.bns[0].rules == ["reduce-mean-backward:ReduceMean_1", "conv-backward:Conv_0"]


def test_mean_over_tokens_keeps_a_map_on_the_features(build, check):
    """[N, T, D] token features: a mean over T passes a map along D."""
    model = build(
        """
        g (float[N, 6, 4] x) => (float[N, 5] z) {
            t = Transpose <perm = [0, 2, 1]> (x)
            y = BatchNormalization (t, gamma, beta, mean, var)
            u = Transpose <perm = [0, 2, 1]> (y)
            axes = Constant <value = int64[1] {1}> ()
            p = ReduceMean <keepdims = 0> (u, axes)
            z = MatMul (p, w)
        }""",
        w=[4, 5],
        opset=18,
        **STATS,
    )
    _, report, ops = check(model)
    assert "BatchNormalization" not in ops and report.residual_ops == 0
