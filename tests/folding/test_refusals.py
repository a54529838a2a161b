"""One graph per refusal reason: the BN (or part of it) stays, and the report says why.

Each case asserts the reason text, that the folded model still matches the
original, and that at most one elementwise op (or the BN itself) remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from bnfold.folding import fold

ELEMENTWISE = {"BatchNormalization", "Mul", "Add", "Sub", "Div"}


@dataclass
class Case:
    id: str
    graph: str
    reason: str
    shapes: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    positive: bool = False
    dtype: type = np.float32
    runnable: bool = True  # False: ORT cannot run it (or its reference overflows)
    opset: int = 17


def st(c: int, suffix: str = "") -> dict[str, list[int]]:
    return {f"{k}{suffix}": [c] for k in ("gamma", "beta", "mean", "var")}


BN = "BatchNormalization(y, gamma, beta, mean, var)"

CASES = [
    Case(
        "training-mode",
        """g (float[N, 3, 4, 4] y) => (float[N, 3, 4, 4] z, float[3] rm, float[3] rv) {
            z, rm, rv = BatchNormalization <training_mode = 1> (y, gamma, beta, mean, var)
        }""",
        "training_mode=1",
        st(3),
        runnable=False,
    ),
    Case(
        "stats-not-constant",
        """g (float[N, 3, 4, 4] y, float[3] mean) => (float[N, 3, 4, 4] z) {
            z = BatchNormalization (y, gamma, beta, mean, var)
        }""",
        "BN mean 'mean' is not a constant",
        {"gamma": [3], "beta": [3], "var": [3]},
    ),
    Case(
        "var-plus-eps-not-positive",
        """g (float[N, 3, 4, 4] y) => (float[N, 3, 4, 4] z) {
            z = BatchNormalization <epsilon = 0.0> (y, gamma, beta, mean, var)
        }""",
        "var + epsilon <= 0",
        {"gamma": [3], "beta": [3], "mean": [3]},
        values={"var": np.array([1.0, 0.0, 1.0])},
        runnable=False,
    ),
    Case(
        "rank-unknown",
        """g (float[N, 3, 4, 4] x) => (float z) {
            y = Unknown (x)
            z = BatchNormalization (y, gamma, beta, mean, var)
        }""",
        "rank of input 'y' is unknown",
        st(3),
        runnable=False,
    ),
    Case(
        "first-layer-and-output",
        f"""g (float[N, 3, 4, 4] y) => (float[N, 3, 4, 4] z) {{
            z = {BN}
        }}""",
        "is a graph input (the BN is the first layer)",
        st(3),
    ),
    Case(
        "bn-output-is-graph-output",
        f"""g (float[N, 3, 4, 4] y) => (float[N, 3, 4, 4] z) {{
            z = {BN}
        }}""",
        "forward: 'z' is a graph output",
        st(3),
    ),
    Case(
        "producer-output-shared",
        f"""g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z, float[N, 4, 4, 4] y) {{
            y = Conv (x, w, b)
            z = {BN}
        }}""",
        "'y' is a graph output",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
    ),
    Case(
        "producer-feeds-two-nodes",
        f"""g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z, float[N, 4, 4, 4] r) {{
            y = Conv (x, w, b)
            r = Relu (y)
            z = {BN}
        }}""",
        "'y' feeds 2 inputs",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
    ),
    Case(
        "op-does-not-commute",
        f"""g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {{
            c = Conv (x, w, b)
            y = Sigmoid (c)
            z = {BN}
        }}""",
        "Sigmoid 'Sigmoid_1' does not commute with the map",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
    ),
    Case(
        "weight-not-constant",
        f"""g (float[N, 3, 6, 6] x, float[4, 3, 3, 3] w) => (float[N, 4, 4, 4] z) {{
            y = Conv (x, w)
            z = {BN}
        }}""",
        "weight 'w' is not a constant",
        st(4),
    ),
    Case(
        "float16-overflow",
        f"""g (float16[N, 3, 6, 6] x) => (float16[N, 4, 4, 4] z) {{
            y = Conv (x, w)
            z = {BN}
        }}""",
        "folded values overflow float16",
        {"w": [4, 3, 3, 3], "beta": [4], "mean": [4]},
        values={"gamma": np.full(4, 60000.0), "var": np.full(4, 0.01)},
        dtype=np.float16,
        runnable=False,
    ),
    Case(
        "varies-beyond-channels",
        f"""g (float[N, 3, 2, 2] x) => (float[N, 8] z) {{
            c = Conv (x, w, b)
            y = Flatten (c)
            z = {BN}
        }}""",
        "the map varies along more than its output channels",
        {"w": [2, 3, 1, 1], "b": [2], **st(8)},
    ),
    Case(
        "maxpool-sign",
        """g (float[N, 3, 8, 8] x) => (float[N, 3, 4, 4] z) {
            c = Conv (x, w, b)
            y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
            p = BatchNormalization (y, gamma, beta, mean, var)
            z = Sigmoid (p)
        }""",
        "does not commute with a sign flip",
        {"w": [3, 3, 1, 1], "b": [3], **st(3)},
    ),
    Case(
        "relu-negative-scale",
        f"""g (float[N, 3, 8, 8] x) => (float[N, 3, 8, 8] s) {{
            c = Conv (x, w, b)
            y = Relu (c)
            z = {BN}
            s = Sigmoid (z)
        }}""",
        "only |scale| passes",
        {"w": [3, 3, 1, 1], "b": [3], **st(3)},
    ),
    Case(
        "relu-forward-needs-positive",
        """g (float[N, 3, 8, 8] y) => (float[N, 4, 8, 8] z) {
            b1 = BatchNormalization (y, gamma, beta, mean, var)
            r = Relu (b1)
            z = Conv (r, w, b)
        }""",
        "only a positive scale passes",
        {"w": [4, 3, 1, 1], "b": [4], **st(3)},
    ),
    Case(
        "pool-varies-spatially",
        """g (float[N, 2, 2, 2] x) => (float[N, 8] z) {
            p = MaxPool <kernel_shape = [1, 1]> (x)
            f = Flatten (p)
            z = BatchNormalization (f, gamma, beta, mean, var)
        }""",
        "the map varies along the pooled axes",
        st(8),
        positive=True,
    ),
    Case(
        "dropout-mask-used",
        f"""g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z, bool[N, 4, 4, 4] m) {{
            c = Conv (x, w, b)
            y, m = Dropout (c)
            z = {BN}
        }}""",
        "its output 'm' is used",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
    ),
    Case(
        "dropout-training-mode",
        f"""g (float[N, 3, 6, 6] x, bool train) => (float[N, 4, 4, 4] z) {{
            c = Conv (x, w, b)
            y = Dropout (c, ratio, train)
            z = {BN}
        }}""",
        "may run in training mode",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
        values={"ratio": np.array(0.5)},
        runnable=False,
    ),
    Case(
        "concat-same-tensor-twice",
        """g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {
            y = BatchNormalization (x, gamma, beta, mean, var)
            k = Concat <axis = 1> (y, y)
            z = Conv (k, w, b)
        }""",
        "reads the same tensor twice",
        {"w": [4, 6, 3, 3], "b": [4], **st(3)},
    ),
    Case(
        "add-broadcasts",
        f"""g (float[N, 3, 6, 6] x, float[N, 4, 1, 1] u) => (float[N, 4, 4, 4] z) {{
            c = Conv (x, w, b)
            y = Add (c, u)
            z = {BN}
        }}""",
        "Add 'Add_1' broadcasts its inputs",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
    ),
    Case(
        "map-on-weight-input",
        """g (float[N, 3, 6, 6] x, float[4, 3, 3, 3] wx) => (float[N, 4, 4, 4] z) {
            w = BatchNormalization (wx, gamma, beta, mean, var)
            z = Conv (x, w)
        }""",
        "the map is on its weight input",
        st(3),
    ),
    Case(
        "padded-conv-zero-scale",
        """g (float[N, 3, 6, 6] y) => (float[N, 4, 6, 6] z) {
            b1 = BatchNormalization (y, gamma, beta, mean, var)
            z = Conv <pads = [1, 1, 1, 1]> (b1, w, b)
        }""",
        "pads with zeros and the map has a zero scale",
        {"w": [4, 3, 3, 3], "b": [4], "beta": [3], "mean": [3], "var": [3]},
        values={"gamma": np.array([1.0, 0.0, -1.0])},
    ),
    Case(
        "convtranspose-uneven-shift",
        """g (float[N, 2, 4, 4] y) => (float[N, 3, 9, 9] z) {
            b1 = BatchNormalization (y, gamma, beta, mean, var)
            z = ConvTranspose <strides = [2, 2]> (b1, w, b)
        }""",
        "spreads a constant input unevenly",
        {"w": [2, 3, 3, 3], "b": [3], **st(2)},
    ),
    Case(
        "resize-linear",
        f"""g (float[N, 3, 6, 6] x) => (float[N, 4, 8, 8] z) {{
            c = Conv (x, w, b)
            y = Resize <mode = "linear"> (c, , sc)
            z = {BN}
        }}""",
        "only mode=nearest passes",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
        values={"sc": np.array([1.0, 1.0, 2.0, 2.0])},
    ),
    Case(
        "resize-cubic",
        f"""g (float[N, 3, 6, 6] x) => (float[N, 4, 8, 8] z) {{
            c = Conv (x, w, b)
            y = Resize <mode = "cubic"> (c, , sc)
            z = {BN}
        }}""",
        "Resize 'Resize_1': mode=cubic; only mode=nearest passes",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
        values={"sc": np.array([1.0, 1.0, 2.0, 2.0])},
    ),
    Case(
        "resize-crop",
        f"""g (float[N, 3, 6, 6] x) => (float[N, 4, 8, 8] z) {{
            c = Conv (x, w, b)
            y = Resize <coordinate_transformation_mode = "tf_crop_and_resize"> (c, roi, sc)
            z = {BN}
        }}""",
        "tf_crop_and_resize fills outside the crop",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
        values={
            "roi": np.array([0.0, 0.0, -0.25, -0.25, 1.0, 1.0, 1.25, 1.25]),
            "sc": np.array([1.0, 1.0, 2.0, 2.0]),
        },
    ),
    Case(
        "resize-channel-axis",
        f"""g (float[N, 2, 6, 6] x) => (float[N, 4, 4, 4] z) {{
            c = Conv (x, w, b)
            y = Resize <mode = "nearest"> (c, , sc)
            z = {BN}
        }}""",
        "Resize 'Resize_1' resizes axis [1], along which the map varies",
        {"w": [2, 2, 3, 3], "b": [2], **st(4)},
        values={"sc": np.array([1.0, 2.0, 1.0, 1.0])},
    ),
    Case(
        "resize-sizes-not-constant",
        f"""g (float[N, 3, 6, 6] x, int64[4] sizes) => (float[N, 4, 8, 8] z) {{
            c = Conv (x, w, b)
            y = Resize <mode = "nearest"> (c, , , sizes)
            z = {BN}
        }}""",
        "its scales and sizes are not constants",
        {"w": [4, 3, 3, 3], "b": [4], **st(4)},
        runnable=False,
    ),
    Case(
        "resize-map-on-scales",
        """g (float[N, 3, 4, 4] x, float[4] u) => (float[N, 3, 8, 8] z) {
            m = Mul (u, a)
            sc = Add (m, d)
            z = Resize <mode = "nearest"> (x, , sc)
        }""",
        "the map is on its scales input",
        {"a": [4], "d": [4]},
        runnable=False,
    ),
    Case(
        "matmul-no-bias",
        """g (float[N, 2, 5] x) => (float[N, 2, 4] z) {
            y = MatMul (x, w)
            t = Transpose <perm = [0, 2, 1]> (y)
            u = BatchNormalization (t, gamma, beta, mean, var)
            z = Transpose <perm = [0, 2, 1]> (u)
        }""",
        "has no bias for the shift",
        {"w": [5, 4], **st(4)},
    ),
    Case(
        "reduce-mean-over-channels",
        """g (float[N, 4, 3, 3] x) => (float[N, 3, 3] z) {
            y = BatchNormalization (x, gamma, beta, mean, var)
            axes = Constant <value = int64[1] {1}> ()
            p = ReduceMean <keepdims = 0> (y, axes)
            z = Sigmoid (p)
        }""",
        "ReduceMean 'ReduceMean_2': the map varies along the reduced axes [1]",
        st(4),
        opset=18,
    ),
    Case(
        "reduce-mean-axes-not-constant",
        """g (float[N, 4, 3, 3] x, int64[2] axes) => (float[N, 4] z) {
            y = BatchNormalization (x, gamma, beta, mean, var)
            p = ReduceMean <keepdims = 0> (y, axes)
            z = Gemm (p, w)
        }""",
        "its axes 'axes' are not constants",
        {"w": [4, 2], **st(4)},
        runnable=False,
        opset=18,
    ),
    Case(
        "reduce-mean-map-on-axes",
        """g (float[N, 4, 3, 3] x, float[2] u) => (float[N, 4] z) {
            m = Mul (u, a)
            axes = Add (m, d)
            z = ReduceMean <keepdims = 0> (x, axes)
        }""",
        "the map is on its axes input",
        {"a": [2], "d": [2]},
        runnable=False,
        opset=18,
    ),
    Case(
        "identity-branch-no-centre-tap",
        """g (float[N, 4, 6, 6] u) => (float[N, 4, 6, 6] z) {
            x = Relu (u)
            c = Conv <pads = [0, 0, 1, 1]> (x, w, b)
            y = BatchNormalization (x, gamma, beta, mean, var)
            a = Add (c, y)
            z = Relu (a)
        }""",
        "Conv 'Conv_1': kernel [2, 2] has no centre tap",
        {"w": [4, 4, 2, 2], "b": [4], **st(4)},
    ),
    Case(
        "identity-branch-off-centre",
        """g (float[N, 4, 6, 6] u) => (float[N, 4, 6, 6] z) {
            x = Relu (u)
            c = Conv <pads = [2, 2, 0, 0]> (x, w, b)
            y = BatchNormalization (x, gamma, beta, mean, var)
            a = Add (c, y)
            z = Relu (a)
        }""",
        "pads [2, 2, 0, 0] do not centre the kernel (need [1, 1, 1, 1])",
        {"w": [4, 4, 3, 3], "b": [4], **st(4)},
    ),
    Case(
        "identity-branch-strides",
        """g (float[N, 4, 1, 1] u) => (float[N, 4, 1, 1] z) {
            x = Relu (u)
            c = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w, b)
            y = BatchNormalization (x, gamma, beta, mean, var)
            a = Add (c, y)
            z = Relu (a)
        }""",
        "strides [2, 2] are not 1",
        {"w": [4, 4, 3, 3], "b": [4], **st(4)},
    ),
    Case(
        "identity-branch-weight-not-constant",
        """g (float[N, 4, 6, 6] u, float[4, 4, 3, 3] w) => (float[N, 4, 6, 6] z) {
            x = Relu (u)
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            y = BatchNormalization (x, gamma, beta, mean, var)
            a = Add (c, y)
            z = Relu (a)
        }""",
        "Conv 'Conv_1': its weight or bias is not a constant",
        st(4),
    ),
    Case(
        "residual-stream",
        """g (float[N, 4, 6, 6] u) => (float[N, 4, 6, 6] z) {
            x = Conv (u, w0, b0)
            y = BatchNormalization (x, gamma, beta, mean, var)
            r = Relu (y)
            c = Conv <pads = [1, 1, 1, 1]> (r, w, b)
            z = Add (x, c)
        }""",
        "'x' is a residual stream (read by the shortcut of Add 'Add_4')",
        {"w0": [4, 4, 1, 1], "b0": [4], "w": [4, 4, 3, 3], "b": [4], **st(4)},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refusal(build, check, case):
    model = build(
        case.graph,
        dtype=case.dtype,
        positive=case.positive,
        values=case.values,
        checked=case.runnable,
        opset=case.opset,
        **case.shapes,
    )
    if case.runnable:
        _, report, ops = check(model, rtol=5e-3 if case.dtype == np.float16 else 1e-5)
    else:
        _, report = fold(model)
        ops = None
    reasons = [r for b in report.bns for r in b.reasons]
    assert any(case.reason in r for r in reasons), reasons
    if ops is not None:
        before = sum(1 for n in model.graph.node if n.op_type in ELEMENTWISE)
        after = sum(n for op, n in ops.items() if op in ELEMENTWISE)
        assert after <= before


def test_reshape_refusal_keeps_bn(build):
    """A reshape that merges the channel axis into the dynamic batch axis stops a map."""
    model = build(
        """g (float[N, 3, 4] x) => (float[M, 5] z) {
            y = BatchNormalization (x, gamma, beta, mean, var)
            shape = Constant <value = int64[2] {-1, 4}> ()
            r = Reshape (y, shape)
            z = Gemm (r, w)
        }""",
        w=[4, 5],
        **st(3),
    )
    folded, report = fold(model)
    assert any("does not keep the leading axis" in r for r in report.bns[0].reasons)
    assert report.bns[0].status == "kept"
    assert sum(n.op_type == "BatchNormalization" for n in folded.graph.node) == 1
