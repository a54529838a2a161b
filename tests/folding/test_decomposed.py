"""BNs that arrive as Mul/Add (or Sub/Div) by per-channel constants, as tf2onnx emits them."""

from __future__ import annotations

import numpy as np

from bnfold.folding import count_bn


def test_keras_style_nhwc_with_transposes(build, check):
    """Keras CNN exported NHWC: Conv wrapped in Transposes, each BN as Mul + Add on C last."""
    model = build(
        """
        g (float[N, 10, 10, 3] x) => (float[N, 5] z) {
            t0 = Transpose <perm = [0, 3, 1, 2]> (x)
            c0 = Conv (t0, w0, b0)
            h0 = Transpose <perm = [0, 2, 3, 1]> (c0)
            r0 = Relu (h0)
            m0 = Mul (r0, gamma0)
            a0 = Add (m0, beta0)
            t1 = Transpose <perm = [0, 3, 1, 2]> (a0)
            p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (t1)
            h1 = Transpose <perm = [0, 2, 3, 1]> (p1)
            m1 = Mul (h1, gamma1)
            a1 = Add (m1, beta1)
            t2 = Transpose <perm = [0, 3, 1, 2]> (a1)
            c2 = Conv (t2, w2, b2)
            h2 = Transpose <perm = [0, 2, 3, 1]> (c2)
            f = Flatten (h2)
            d = MatMul (f, w3)
            e = Add (d, b3)
            m3 = Mul (e, gamma3)
            a3 = Add (m3, beta3)
            r3 = Relu (a3)
            o = MatMul (r3, w4)
            z = Add (o, b4)
        }""",
        positive=True,
        w0=[4, 3, 3, 3],
        b0=[4],
        gamma0=[4],
        beta0=[4],
        gamma1=[4],
        beta1=[4],
        w2=[6, 4, 2, 2],
        b2=[6],
        w3=[54, 8],
        b3=[8],
        gamma3=[8],
        beta3=[8],
        w4=[8, 5],
        b4=[5],
    )
    assert count_bn(model) == 3
    _, report, ops = check(model)
    assert report.bn_before == 3 and report.bn_after == 0 and report.residual_ops == 0
    assert [b.status for b in report.bns] == ["folded"] * 3
    assert all(b.kind == "Mul/Add" for b in report.bns)
    assert ops == {
        "Transpose": 6,
        "Conv": 2,
        "Relu": 2,
        "MaxPool": 1,
        "Flatten": 1,
        "MatMul": 2,
        "Add": 2,
    }


def test_sub_div_mul_add_chain_is_one_bn(build, check):
    model = build(
        """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {
            s = Sub (x, mean)
            d = Div (s, std)
            m = Mul (d, gamma)
            a = Add (m, beta)
            z = Conv (a, w, b)
        }""",
        values={"std": np.array([0.5, 1.5, 2.0]).reshape(3, 1, 1)},
        mean=[3, 1, 1],
        gamma=[3, 1, 1],
        beta=[3, 1, 1],
        w=[4, 3, 3, 3],
        b=[4],
    )
    assert count_bn(model) == 1
    _, report, ops = check(model)
    assert ops == {"Conv": 1}
    assert report.bns[0].name == "Sub_0+Div_1+Mul_2+Add_3"


def test_reversed_sub_is_a_negative_scale(build, check):
    model = build(
        """
        g (float[N, 3] x) => (float[N, 2] z) {
            m = Mul (x, gamma)
            a = Sub (beta, m)
            z = Gemm <transB = 1> (a, w, c)
        }""",
        gamma=[3],
        beta=[3],
        w=[2, 3],
        c=[2],
    )
    _, _, ops = check(model)
    assert ops == {"Gemm": 1}


def test_bias_add_and_scalar_mul_are_not_bns(build):
    model = build(
        """
        g (float[N, 4] x) => (float[N, 3] z) {
            d = MatMul (x, w)
            e = Add (d, b)
            z = Mul (e, half)
        }""",
        values={"half": np.array(0.5)},
        w=[4, 3],
        b=[3],
    )
    assert count_bn(model) == 0


def test_unfoldable_nhwc_chain_is_kept_verbatim(build, check):
    model = build(
        """
        g (float[N, 4, 4, 3] x) => (float[N, 4, 4, 3] z) {
            m = Mul (x, gamma)
            z = Add (m, beta)
        }""",
        gamma=[3],
        beta=[3],
    )
    folded, report, _ = check(model)
    assert [n.name for n in folded.graph.node] == ["Mul_0", "Add_1"]
    assert report.bns[0].status == "kept" and report.bns[0].residual == [
        "Mul 'Mul_0'",
        "Add 'Add_1'",
    ]


def test_unfoldable_nchw_chain_collapses_to_one_bn(build, check):
    model = build(
        """
        g (float[N, 3, 4, 4] x) => (float[N, 3, 4, 4] z) {
            s = Sigmoid (x)
            m = Mul (s, gamma)
            a = Add (m, beta)
            z = Sigmoid (a)
        }""",
        gamma=[3, 1, 1],
        beta=[3, 1, 1],
    )
    _, report, ops = check(model)
    assert ops == {"Sigmoid": 2, "BatchNormalization": 1}
    assert report.bn_before == 1 and report.bn_after == 1
