"""Resize in nearest mode lets a per-channel map through (the worked example of docs/folding.md).

The refusals (linear and cubic modes, tf_crop_and_resize, a resize along the
channel axis, scales and sizes that are not constants, a map on the scales
input) are cases in test_refusals.py.
"""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest
from onnx import numpy_helper

STATS = {"gamma": [4], "beta": [4], "mean": [4], "var": [4]}
NEAREST = [
    ([1.0, 1.0, 2.0, 2.0], ""),
    ([1.0, 1.0, 0.5, 0.5], ""),
    ([1.0, 1.0, 3.0, 1.5], ', coordinate_transformation_mode = "asymmetric"'),
    ([1.0, 1.0, 2.0, 2.0], ', coordinate_transformation_mode = "align_corners"'),
    ([1.0, 1.0, 2.0, 2.0], ', nearest_mode = "floor"'),
]
IDS = ["up", "down", "asymmetric", "align-corners", "floor"]


@pytest.mark.parametrize(("scales", "attrs"), NEAREST, ids=IDS)
def test_bn_after_resize_folds_back_into_the_conv(build, check, scales, attrs):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, M, K] z) {{
            c = Conv (x, w, b)
            y = Resize <mode = "nearest"{attrs}> (c, , sc)
            z = BatchNormalization (y, gamma, beta, mean, var)
        }}""",
        w=[4, 3, 3, 3],
        b=[4],
        values={"sc": np.array(scales)},
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 1, "Resize": 1}
    assert report.bns[0].status == "folded"
    assert report.bns[0].rules == ["resize-backward:Resize_1", "conv-backward:Conv_0"]
    assert report.bns[0].folded_into == ["Conv_0"]


def test_first_layer_bn_folds_forward_through_resize(build, check):
    model = build(
        """
        g (float[N, 3, 4, 4] x) => (float[N, 5, 6, 6] z) {
            y = BatchNormalization (x, gamma, beta, mean, var)
            r = Resize <mode = "nearest"> (y, , sc)
            z = Conv (r, w, b)
        }""",
        w=[5, 3, 3, 3],
        b=[5],
        values={"sc": np.array([1.0, 1.0, 2.0, 2.0])},
        gamma=[3],
        beta=[3],
        mean=[3],
        var=[3],
    )
    _, report, ops = check(model)
    assert ops == {"Resize": 1, "Conv": 1}
    assert report.bns[0].rules == ["resize-forward:Resize_1", "conv-forward:Conv_2"]


def test_sizes_on_the_spatial_axes_only(check, tools):
    """Opset 18 ``axes``: sizes for H and W only leave the channel axis alone."""
    model = onnx.parser.parse_model(
        tools.header.replace('"" : 17', '"" : 18')
        + """
        g (float[2, 3, 6, 6] x) => (float[2, 4, 8, 8] z) {
            c = Conv (x, w, b)
            sizes = Constant <value = int64[2] {8, 8}> ()
            y = Resize <mode = "nearest", axes = [2, 3]> (c, , , sizes)
            z = BatchNormalization (y, gamma, beta, mean, var)
        }"""
    )
    rng = np.random.default_rng(0)
    for name, shape in {"w": (4, 3, 3, 3), "b": (4,), **{k: (4,) for k in STATS}}.items():
        value = rng.uniform(0.5, 1.5, shape) if name == "var" else rng.normal(size=shape)
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    _, report, ops = check(model)
    assert ops == {"Conv": 1, "Resize": 1, "Constant": 1}
    assert report.bns[0].status == "folded"
    assert report.bns[0].rules[0] == "resize-backward:Resize_2"


def test_tf2onnx_mul_add_bn_after_resize(build, check):
    model = build(
        """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 8, 8] z) {
            c = Conv (x, w, b)
            y = Resize <mode = "nearest"> (c, , sc)
            m = Mul (y, scale)
            z = Add (m, shift)
        }""",
        w=[4, 3, 3, 3],
        b=[4],
        scale=[4, 1, 1],
        shift=[4, 1, 1],
        values={"sc": np.array([1.0, 1.0, 2.0, 2.0])},
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 1, "Resize": 1}
    assert report.bns[0].kind == "Mul/Add" and report.bns[0].status == "folded"
