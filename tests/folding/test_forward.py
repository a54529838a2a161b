"""BN before a linear layer (first layer, after pooling, after Flatten, ...): folds forward."""

from __future__ import annotations

import numpy as np
import pytest

BN = "BatchNormalization(x, gamma, beta, mean, var)"


def stats(c: int) -> dict[str, list[int]]:
    return {"gamma": [c], "beta": [c], "mean": [c], "var": [c]}


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("dtype", ["float", "float16"])
def test_first_layer_bn_into_valid_conv(build, check, group, dtype):
    model = build(
        f"""
        g ({dtype}[N, 3, 6, 6] x) => ({dtype}[N, 6, 4, 4] z) {{
            y = {BN}
            z = Conv <group = {group}> (y, w, b)
        }}""",
        dtype=np.float16 if dtype == "float16" else np.float32,
        w=[6, 3 // group, 3, 3],
        b=[6],
        **stats(3),
    )
    _, report, ops = check(model, rtol=5e-3 if dtype == "float16" else 1e-5)
    assert ops == {"Conv": 1}
    assert report.bns[0].rules == ["conv-forward:Conv_1"]


def test_bn_into_padded_conv_leaves_one_add(build, check):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] z) {{
            y = {BN}
            z = Conv <pads = [1, 1, 1, 1]> (y, w, b)
        }}""",
        w=[4, 3, 3, 3],
        b=[4],
        **stats(3),
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 1, "Add": 1}
    outcome = report.bns[0]
    assert outcome.status == "partial"
    assert any("pads with zeros" in r for r in outcome.reasons)


def test_bn_into_conv1d_and_conv3d_valid(build, check):
    model = build(
        """
        g (float[N, 2, 5, 5, 5] x, float[N, 2, 9] v)
            => (float[N, 3, 3, 3, 3] z, float[N, 3, 7] zv) {
            y = BatchNormalization(x, gamma, beta, mean, var)
            z = Conv (y, w, b)
            yv = BatchNormalization(v, gamma, beta, mean, var)
            zv = Conv (yv, wv)
        }""",
        w=[3, 2, 3, 3, 3],
        b=[3],
        wv=[3, 2, 3],
        **stats(2),
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 2}
    assert report.count("folded") == 2


@pytest.mark.parametrize("trans_b", [0, 1])
def test_bn_after_flatten_into_gemm(build, check, trans_b):
    """The fer-cnn placement: Flatten -> BN1d -> Dense."""
    model = build(
        f"""
        g (float[N, 2, 3, 3] x) => (float[N, 5] z) {{
            f = Flatten (x)
            y = BatchNormalization(f, gamma, beta, mean, var)
            z = Gemm <transB = {trans_b}, alpha = 0.5, beta = 2.0> (y, w, c)
        }}""",
        w=[5, 18] if trans_b else [18, 5],
        c=[5],
        **stats(18),
    )
    _, report, ops = check(model)
    assert ops == {"Flatten": 1, "Gemm": 1}
    assert report.bns[0].rules == ["gemm-forward:Gemm_2"]


def test_bn_into_matmul_with_bias_add(build, check):
    model = build(
        f"""
        g (float[N, 4] x) => (float[N, 5] z) {{
            y = {BN}
            m = MatMul (y, w)
            z = Add (m, b)
        }}""",
        w=[4, 5],
        b=[5],
        **stats(4),
    )
    _, report, ops = check(model)
    assert ops == {"MatMul": 1, "Add": 1}
    assert report.bns[0].folded_into == ["MatMul_1", "Add_2"]


def test_bn_into_matmul_without_bias_becomes_gemm(build, check):
    model = build(
        f"""
        g (float[N, 4] x) => (float[N, 5] z) {{
            y = {BN}
            z = MatMul (y, w)
        }}""",
        w=[4, 5],
        **stats(4),
    )
    _, _, ops = check(model)
    assert ops == {"Gemm": 1}


def test_bn_then_transpose_into_matmul(build, check):
    model = build(
        """
        g (float[N, 4, 6] x) => (float[N, 6, 5] z) {
            y = BatchNormalization(x, gamma, beta, mean, var)
            t = Transpose <perm = [0, 2, 1]> (y)
            m = MatMul (t, w)
            z = Add (m, b)
        }""",
        w=[4, 5],
        b=[5],
        **stats(4),
    )
    _, _, ops = check(model)
    assert ops == {"Transpose": 1, "MatMul": 1, "Add": 1}


def test_bn_dropout_gemm(build, check):
    model = build(
        f"""
        g (float[N, 4] x) => (float[N, 5] z) {{
            y = {BN}
            d = Dropout (y)
            z = Gemm <transB = 1> (d, w, c)
        }}""",
        w=[5, 4],
        c=[5],
        **stats(4),
    )
    _, _, ops = check(model)
    assert ops == {"Dropout": 1, "Gemm": 1}


def test_bn_maxpool_positive_into_conv(build, check):
    model = build(
        """
        g (float[N, 3, 8, 8] x) => (float[N, 4, 2, 2] z) {
            r = Relu (x)
            y = BatchNormalization(r, gamma, beta, mean, var)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (y)
            z = Conv (p, w, b)
        }""",
        positive=True,
        w=[4, 3, 3, 3],
        b=[4],
        **stats(3),
    )
    _, report, ops = check(model)
    assert ops == {"Relu": 1, "MaxPool": 1, "Conv": 1}
    assert report.bns[0].status == "folded"


def test_bn_maxpool_mixed_sign_leaves_one_mul(build, check):
    """The fer-cnn BN1 placement with mixed-sign gamma: a Mul by +-1 stays."""
    model = build(
        """
        g (float[N, 3, 10, 10] x) => (float[N, 4, 2, 2] z) {
            c = Conv (x, w1, b1)
            r = Relu (c)
            y = BatchNormalization(r, gamma, beta, mean, var)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (y)
            z = Conv (p, w, b)
        }""",
        w1=[3, 3, 3, 3],
        b1=[3],
        w=[4, 3, 3, 3],
        b=[4],
        **stats(3),
    )
    folded, report, ops = check(model)
    assert ops == {"Conv": 2, "Relu": 1, "MaxPool": 1, "Mul": 1}
    outcome = report.bns[0]
    assert outcome.status == "partial"
    assert any("does not commute with a sign flip" in r for r in outcome.reasons)
    mul = next(n for n in folded.graph.node if n.op_type == "Mul")
    scale = next(t for t in folded.graph.initializer if t.name == mul.input[1])
    assert set(abs(v) for v in onnx_array(scale).ravel()) == {1.0}
    assert report.bn_after == 0 and report.residual_ops == 1


def onnx_array(t):
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def test_first_layer_bn_relu_conv_leaves_one_add(build, check):
    """relu(s x + t) = s relu(x + t / s): the scale passes into the Conv, an Add stays."""
    model = build(
        """
        g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] z) {
            y = BatchNormalization(x, gamma, beta, mean, var)
            r = Relu (y)
            z = Conv (r, w, b)
        }""",
        positive=True,
        w=[4, 3, 1, 1],
        b=[4],
        **stats(3),
    )
    _, report, ops = check(model)
    assert ops == {"Add": 1, "Relu": 1, "Conv": 1}
    assert report.bns[0].status == "partial"
    assert any("the shift does not pass Relu" in r for r in report.bns[0].reasons)


def test_bn_averagepool_counting_pads_keeps_shift(build, check):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {{
            y = {BN}
            p = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (y)
            z = Conv (p, w, b)
        }}""",
        w=[4, 3, 3, 3],
        b=[4],
        **stats(3),
    )
    _, report, ops = check(model)
    assert ops == {"Add": 1, "AveragePool": 1, "Conv": 1}
    assert any("averages zero padding" in r for r in report.bns[0].reasons)


def test_bn_averagepool_excluding_pads_folds(build, check):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {{
            y = {BN}
            p = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (y)
            z = Conv (p, w, b)
        }}""",
        w=[4, 3, 3, 3],
        b=[4],
        **stats(3),
    )
    _, _, ops = check(model)
    assert ops == {"AveragePool": 1, "Conv": 1}


def test_bn_concat_forward(build, check):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x, float[N, 2, 6, 6] u) => (float[N, 4, 4, 4] z) {{
            y = {BN}
            k = Concat <axis = 1> (u, y)
            z = Conv (k, w, b)
        }}""",
        w=[4, 5, 3, 3],
        b=[4],
        **stats(3),
    )
    _, report, ops = check(model)
    assert ops == {"Concat": 1, "Conv": 1}
    assert report.bns[0].rules == ["concat-forward:Concat_1", "conv-forward:Conv_2"]


def test_bn_output_read_by_two_convs(build, check):
    model = build(
        f"""
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z1, float[N, 2, 6, 6] z2) {{
            y = {BN}
            z1 = Conv (y, w, b)
            z2 = Conv (y, w2)
        }}""",
        w=[4, 3, 3, 3],
        b=[4],
        w2=[2, 3, 1, 1],
        **stats(3),
    )
    _, report, ops = check(model)
    assert ops == {"Conv": 2}
    assert report.bns[0].folded_into == ["Conv_1", "Conv_2"]


def test_bn_into_convtranspose_forward_1x1(build, check):
    model = build(
        """
        g (float[N, 4, 5, 5] x) => (float[N, 6, 5, 5] z) {
            y = BatchNormalization(x, gamma, beta, mean, var)
            z = ConvTranspose <group = 2> (y, w, b)
        }""",
        w=[4, 3, 1, 1],
        b=[6],
        **stats(4),
    )
    _, _, ops = check(model)
    assert ops == {"ConvTranspose": 1}
