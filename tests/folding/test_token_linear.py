"""Linear layers on token tensors [B, N, C], as torch's dynamo exporter writes them.

``nn.Linear`` on a 3-D input is ``MatMul(x, Transpose(W))`` (the weight is
computed in the graph: ``constants.materialize`` evaluates it); LeViT-style
blocks then flatten batch and tokens for a BatchNorm1d and reshape back.
The MatMul has no bias for the BN's shift: rewritten as a Gemm on the
flattened tensor (the Reshape moved in front of it) it carries the shift at
no extra op.
"""

from __future__ import annotations

import numpy as np

STATS = {"gamma": [6], "beta": [6], "mean": [6], "var": [6]}

# [N, 5, 4] tokens -> Linear(4, 6, bias=False) -> flatten(0, 1) -> BN1d(6) -> reshape back
TOKEN_BN = """
g (float[N, 5, 4] x) => (float[N, 5, 6] z) {
    wt = Transpose <perm = [1, 0]> (w)
    m = MatMul (x, wt)
    flat = Constant <value = int64[2] {-1, 6}> ()
    f = Reshape (m, flat)
    y = BatchNormalization (f, gamma, beta, mean, var)
    back = Constant <value = int64[3] {-1, 5, 6}> ()
    r = Reshape (y, back)
    z = Relu (r)
}"""


def test_token_linear_bn_becomes_one_gemm(build, check):
    model = build(TOKEN_BN, w=[6, 4], **STATS)
    folded, report, ops = check(model)
    assert ops == {"Reshape": 2, "Gemm": 1, "Relu": 1, "Constant": 1}
    assert report.residual_ops == 0 and report.bns[0].status == "folded"
    assert report.bns[0].rules == ["reshape-backward:Reshape_3", "matmul-backward:MatMul_1"]
    assert report.evaluated == ["Transpose 'Transpose_0'"]
    gemm = next(n for n in folded.graph.node if n.op_type == "Gemm")
    reshape = next(n for n in folded.graph.node if n.output[0] == gemm.input[0])
    assert reshape.op_type == "Reshape" and reshape.input[0] == "x"


def test_token_linear_with_the_shape_computed_from_the_batch(build, check):
    """dynamo's ``Shape -> Mul -> Concat`` shape for the flattened tensor."""
    model = build(
        """
        g (float[N, 5, 4] x) => (float[N, 5, 6] z) {
            wt = Transpose <perm = [1, 0]> (w)
            m = MatMul (x, wt)
            s0 = Shape <start = 0, end = 1> (x)
            five = Constant <value = int64[1] {5}> ()
            bn5 = Mul (s0, five)
            six = Constant <value = int64[1] {6}> ()
            flat = Concat <axis = 0> (bn5, six)
            f = Reshape <allowzero = 1> (m, flat)
            y = BatchNormalization (f, gamma, beta, mean, var)
            back = Concat <axis = 0> (s0, five, six)
            r = Reshape <allowzero = 1> (y, back)
            z = Relu (r)
        }""",
        w=[6, 4],
        **STATS,
    )
    _, report, ops = check(model)
    assert ops["Gemm"] == 1 and "MatMul" not in ops and "BatchNormalization" not in ops
    assert report.residual_ops == 0


def test_bn_before_a_token_linear_folds_forward_into_a_gemm(build, check):
    model = build(
        """
        g (float[N, 5, 4] x) => (float[K, 6] z) {
            merge = Constant <value = int64[2] {-1, 4}> ()
            f = Reshape (x, merge)
            y = BatchNormalization (f, gamma, beta, mean, var)
            split = Constant <value = int64[3] {-1, 5, 4}> ()
            t = Reshape (y, split)
            m = MatMul (t, w)
            flat = Constant <value = int64[2] {-1, 6}> ()
            z = Reshape (m, flat)
        }""",
        w=[4, 6],
        gamma=[4],
        beta=[4],
        mean=[4],
        var=[4],
    )
    _, report, ops = check(model)
    assert ops["Gemm"] == 1 and "MatMul" not in ops and "BatchNormalization" not in ops
    assert report.bns[0].rules[-1] == "matmul-forward:MatMul_5"


def test_linear_on_a_3d_input_takes_a_bn_before_it(build, check):
    """BN1d on [N, C, L] -> transpose -> nn.Linear: the computed weight takes the scale."""
    model = build(
        """
        g (float[N, 4, 7] x) => (float[N, 7, 6] z) {
            y = BatchNormalization (x, gamma, beta, mean, var)
            t = Transpose <perm = [0, 2, 1]> (y)
            wt = Transpose <perm = [1, 0]> (w)
            m = MatMul (t, wt)
            z = Add (m, b)
        }""",
        w=[6, 4],
        b=[6],
        gamma=[4],
        beta=[4],
        mean=[4],
        var=[4],
    )
    _, report, ops = check(model)
    assert ops == {"Transpose": 1, "MatMul": 1, "Add": 1}
    assert report.residual_ops == 0


def test_reshape_merging_leading_axes_moves_the_map_exactly(build, check):
    """[N, 5, 6] -> [N*5, 6] -> [N, 5, 6]: a BN1d between two reshapes, folded into a Conv1d."""
    model = build(
        """
        g (float[N, 6, 5] x) => (float[N, 5, 6] z) {
            c = Conv (x, w, b)
            t = Transpose <perm = [0, 2, 1]> (c)
            flat = Constant <value = int64[2] {-1, 6}> ()
            f = Reshape (t, flat)
            y = BatchNormalization (f, gamma, beta, mean, var)
            back = Constant <value = int64[3] {-1, 5, 6}> ()
            z = Reshape (y, back)
        }""",
        w=[6, 6, 1],
        b=[6],
        **STATS,
    )
    _, report, ops = check(model)
    assert "BatchNormalization" not in ops and report.residual_ops == 0
    assert report.bns[0].folded_into == ["Conv_0"]
    assert np.isfinite(report.iterations)
