"""BN after a linear layer, directly or across ops: folds into the layer's constants."""

from __future__ import annotations

import numpy as np
import pytest

BN = "BatchNormalization(y, gamma, beta, mean, var)"
STATS = {"gamma": [4], "beta": [4], "mean": [4], "var": [4]}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("dims", "group", "cin"),
    [((8,), 1, 3), ((6, 6), 1, 3), ((6, 6), 2, 6), ((6, 6), 4, 4), ((4, 4, 4), 1, 2)],
    ids=["1d", "2d", "2d-groups", "2d-depthwise", "3d"],
)
def test_conv_bn(build, check, bias, dims, group, cin):
    k = len(dims)
    x_shape = ", ".join(["N", str(cin), *map(str, dims)])
    conv_in = "x, w, b" if bias else "x, w"
    model = build(
        f"""
        g (float[{x_shape}] x) => (float[{x_shape.replace(str(cin), "4", 1)}] z) {{
            y = Conv <group = {group}, pads = [{", ".join(["1"] * 2 * k)}]> ({conv_in})
            z = {BN}
        }}""",
        w=[4, cin // group, *([3] * k)],
        **({"b": [4]} if bias else {}),
        **STATS,
    )
    folded, report, ops = check(model)
    assert ops == {"Conv": 1}
    assert report.bn_before == 1 and report.bn_after == 0
    assert report.bns[0].status == "folded"
    assert report.bns[0].rules == ["conv-backward:" + folded.graph.node[0].name]
    assert folded.graph.output[0].name == "z"


def test_conv_bn_float16(build, check):
    model = build(
        """
        g (float16[N, 3, 6, 6] x) => (float16[N, 4, 4, 4] z) {
            y = Conv (x, w, b)
            z = BatchNormalization(y, gamma, beta, mean, var)
        }""",
        dtype=np.float16,
        w=[4, 3, 3, 3],
        b=[4],
        **STATS,
    )
    folded, _, ops = check(model, rtol=5e-3)
    assert ops == {"Conv": 1}
    w = next(t for t in folded.graph.initializer if t.name.startswith("w"))
    assert w.data_type == 10  # FLOAT16


@pytest.mark.parametrize("group", [1, 2])
def test_convtranspose_bn(build, check, group):
    model = build(
        f"""
        g (float[N, 4, 5, 5] x) => (float[N, 4, 11, 11] z) {{
            y = ConvTranspose <group = {group}, strides = [2, 2]> (x, w, b)
            z = {BN}
        }}""",
        w=[4, 4 // group, 3, 3],
        b=[4],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"ConvTranspose": 1}
    assert report.bns[0].rules[0].startswith("convtranspose-backward")


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_bn(build, check, trans_a, trans_b, with_c):
    a_shape = "3, 5" if not trans_a else "5, 3"
    c = ", c" if with_c else ""
    model = build(
        f"""
        g (float[{a_shape}] x) => (float[3, 4] z) {{
            y = Gemm <alpha = 0.5, beta = 2.0, transA = {trans_a}, transB = {trans_b}> (x, w{c})
            z = {BN}
        }}""",
        w=[4, 5] if trans_b else [5, 4],
        **({"c": [4]} if with_c else {}),
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"Gemm": 1}
    assert report.bns[0].status == "folded"


def test_matmul_add_bn_rank3(build, check):
    model = build(
        """
        g (float[N, 7, 5] x) => (float[N, 7, 4] z) {
            m = MatMul (x, w)
            y = Add (m, b)
            t = Transpose <perm = [0, 2, 1]> (y)
            u = BatchNormalization(t, gamma, beta, mean, var)
            z = Transpose <perm = [0, 2, 1]> (u)
        }""",
        w=[5, 4],
        b=[4],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"MatMul": 1, "Add": 1, "Transpose": 2}
    assert report.bns[0].folded_into == ["Add_1", "MatMul_0"]


def test_matmul_without_bias_becomes_gemm(build, check):
    model = build(
        """
        g (float[N, 5] x) => (float[N, 4] z) {
            y = MatMul (x, w)
            z = BatchNormalization(y, gamma, beta, mean, var)
        }""",
        w=[5, 4],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"Gemm": 1}
    assert report.bns[0].status == "folded"


def test_matmul_rank3_without_bias_keeps_one_add(build, check):
    model = build(
        """
        g (float[N, 4, 5] x) => (float[N, 4, 4] z) {
            y = MatMul (x, w)
            z = Mul (y, gamma)
            zz = Add (z, beta)
        }""".replace("=> (float[N, 4, 4] z)", "=> (float[N, 4, 4] zz)"),
        w=[5, 4],
        gamma=[4],
        beta=[4],
    )
    _, report, ops = check(model)
    assert ops == {"MatMul": 1, "Add": 1}
    assert report.bns[0].status == "partial"
    assert any("has no bias" in r for r in report.bns[0].reasons)


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_across_identity_dropout(build, check, op):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {{
            c = Conv (x, w, b)
            y = {op} (c)
            z = {BN}
        }}""",
        w=[4, 3, 3, 3],
        b=[4],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 1, op: 1}
    assert report.bns[0].rules[0] == "identity-backward:" + op + "_1"


def test_across_transpose_nhwc(build, check):
    model = build(
        """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {
            c = Conv (x, w, b)
            h = Transpose <perm = [0, 2, 3, 1]> (c)
            m = Mul (h, gamma)
            y = Add (m, beta)
            z = Transpose <perm = [0, 3, 1, 2]> (y)
        }""",
        w=[4, 3, 3, 3],
        b=[4],
        gamma=[4],
        beta=[4],
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 1, "Transpose": 2}
    assert report.bns[0].kind == "Mul/Add"


def test_across_flatten_into_conv(build, check):
    """BN1d on the flattened features of a conv whose channels are constant per map."""
    model = build(
        """
        g (float[N, 3, 2, 2] x) => (float[N, 8] z) {
            c = Conv (x, w, b)
            f = Flatten (c)
            z = BatchNormalization(f, gamma, beta, mean, var)
        }""",
        w=[2, 3, 1, 1],
        b=[2],
        gamma=[8],
        beta=[8],
        mean=[8],
        var=[8],
    )
    # Per-feature stats vary within a channel: backward into the Conv is not exact, so
    # the BN stays; with channel-constant stats it folds (next test).
    _, report, ops = check(model)
    assert ops["BatchNormalization"] == 1
    assert any("varies along more than its output channels" in r for r in report.bns[0].reasons)


def test_across_flatten_channel_constant_stats(build, check):
    rng = np.random.default_rng(3)
    stats = {}
    for name in ("gamma", "beta", "mean", "var"):
        per_channel = rng.uniform(0.5, 2.0, 2) * (-1 if name == "gamma" else 1)
        stats[name] = np.repeat(per_channel, 4)  # (C=2,) -> 8 flattened features
    model = build(
        """
        g (float[N, 3, 2, 2] x) => (float[N, 8] z) {
            c = Conv (x, w, b)
            f = Flatten (c)
            z = BatchNormalization(f, gamma, beta, mean, var)
        }""",
        values=stats,
        w=[2, 3, 1, 1],
        b=[2],
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 1, "Flatten": 1}
    assert report.bns[0].rules[:2] == ["reshape-backward:Flatten_1", "conv-backward:Conv_0"]


def test_across_averagepool(build, check):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, 2, 2] z) {{
            c = Conv (x, w, b)
            y = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (c)
            z = {BN}
        }}""",
        w=[4, 3, 3, 3],
        b=[4],
        **STATS,
    )
    _, _, ops = check(model)
    assert ops == {"Conv": 1, "AveragePool": 1}


def test_across_relu_and_maxpool_positive(build, check):
    """Conv -> ReLU -> MaxPool -> BN (s > 0): scale into the Conv, shift forward."""
    model = build(
        """
        g (float[N, 3, 8, 8] x) => (float[N, 5, 2, 2] z) {
            c = Conv (x, w, b)
            r = Relu (c)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
            y = BatchNormalization(p, gamma, beta, mean, var)
            z = Conv (y, w2, b2)
        }""",
        positive=True,
        w=[4, 3, 3, 3],
        b=[4],
        w2=[5, 4, 2, 2],
        b2=[5],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 2, "Relu": 1, "MaxPool": 1}
    assert report.bns[0].status == "folded"


def test_concat_then_bn(build, check):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {{
            c1 = Conv (x, w1, b1)
            c2 = Conv (x, w2, b2)
            y = Concat <axis = 1> (c1, c2)
            z = {BN}
        }}""",
        w1=[1, 3, 3, 3],
        b1=[1],
        w2=[3, 3, 3, 3],
        b2=[3],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 2, "Concat": 1}
    assert sorted(report.bns[0].folded_into) == ["Conv_0", "Conv_1"]


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_add_of_two_branches_then_bn(build, check, op):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {{
            c1 = Conv (x, w1, b1)
            c2 = Conv (x, w2)
            y = {op} (c1, c2)
            z = {BN}
        }}""",
        w1=[4, 3, 3, 3],
        b1=[4],
        w2=[4, 3, 3, 3],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 2, op: 1}
    assert sorted(report.bns[0].folded_into) == ["Conv_0", "Conv_1"]


def test_bn_bn_compose(build, check):
    model = build(
        """
        g (float[N, 4, 5] x) => (float[N, 4, 5] z) {
            y = BatchNormalization(x, gamma, beta, mean, var)
            z = BatchNormalization(y, gamma2, beta2, mean2, var2)
        }""",
        **STATS,
        gamma2=[4],
        beta2=[4],
        mean2=[4],
        var2=[4],
    )
    _, report, ops = check(model)
    assert ops == {"BatchNormalization": 1}  # input -> BN -> output: nothing to fold into
    first, second = report.bns
    assert first.rules[0].startswith("compose")
    assert second.status == "kept" and second.residual


def test_conv_bn_zero_variance(build, check):
    """var = 0 with eps = 1e-5 gives s = gamma / sqrt(eps), still exact."""
    model = build(
        """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {
            y = Conv (x, w, b)
            z = BatchNormalization <epsilon = 1e-5> (y, gamma, beta, mean, var)
        }""",
        values={"var": np.array([0.0, 1e-9, 1.0, 2.0])},
        w=[4, 3, 3, 3],
        b=[4],
        gamma=[4],
        beta=[4],
        mean=[4],
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 1} and report.bns[0].status == "folded"
