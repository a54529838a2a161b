"""A BN on the identity branch of a sum folds into a sibling Conv's centre tap (RepVGG).

The refusals (a kernel with no centre tap, strides, padding that does not
centre the kernel, a weight that is not a constant) are cases in
test_refusals.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnfold.folding.branch import BranchMatch, IdentityBranchRule
from bnfold.folding.graph import Graph
from bnfold.folding.recognize import recognize
from bnfold.folding.rules import REGISTRY


def stats(c: int, suffix: str = "") -> dict[str, list[int]]:
    return {f"{k}{suffix}": [c] for k in ("gamma", "beta", "mean", "var")}


def bn(x: str, suffix: str = "") -> str:
    return f"BatchNormalization ({x}, gamma{suffix}, beta{suffix}, mean{suffix}, var{suffix})"


# conv3x3-BN(x) + conv1x1-BN(x) + BN(x), then ReLU, as RepVGG builds its training-time block
REPVGG = f"""
g (float[N, 4, 6, 6] u) => (float[N, 4, 6, 6] z) {{
    x = Relu (u)
    c3 = Conv <pads = [1, 1, 1, 1]> (x, w3)
    b3 = {bn("c3", "3")}
    c1 = Conv (x, w1)
    b1 = {bn("c1", "1")}
    s = Add (b3, b1)
    i = {bn("x", "i")}
    y = Add (s, i)
    z = Relu (y)
}}"""
WEIGHTS = {"w3": [4, 4, 3, 3], "w1": [4, 4, 1, 1], **stats(4, "3"), **stats(4, "1")}


def test_repvgg_block_folds_to_two_convs_and_one_add(build, check):
    model = build(REPVGG, **WEIGHTS, **stats(4, "i"))
    _, report, ops = check(model)
    assert ops == {"Relu": 2, "Conv": 2, "Add": 1}  # the identity branch's Add is gone
    assert report.residual_ops == 0 and all(b.status == "folded" for b in report.bns)
    identity = report.outcome("BatchNormalization_6")
    assert identity.rules == ["identity-branch-forward:Conv_1"]
    assert identity.folded_into == ["Conv_1"]


def test_identity_bn_first_in_the_graph(build, check):
    """timm computes the identity branch first: its BN meets the siblings' BNs unfolded."""
    model = build(
        f"""
        g (float[N, 4, 6, 6] u) => (float[N, 4, 6, 6] z) {{
            x = Relu (u)
            i = {bn("x", "i")}
            c1 = Conv (x, w1)
            b1 = {bn("c1", "1")}
            c3 = Conv <pads = [1, 1, 1, 1]> (x, w3)
            b3 = {bn("c3", "3")}
            s = Add (b1, b3)
            y = Add (s, i)
            z = Relu (y)
        }}""",
        **WEIGHTS,
        **stats(4, "i"),
    )
    _, report, ops = check(model)
    assert ops == {"Relu": 2, "Conv": 2, "Add": 1}
    assert report.residual_ops == 0
    assert report.outcome("BatchNormalization_1").rules[0].startswith("identity-branch-forward")


def test_bn_after_the_sum_with_a_plain_identity(build, check):
    """BN(conv3x3(x) + conv1x1(x) + x): its scale on the identity input folds into a tap."""
    model = build(
        f"""
        g (float[N, 4, 6, 6] u) => (float[N, 4, 6, 6] z) {{
            x = Relu (u)
            c3 = Conv <pads = [1, 1, 1, 1]> (x, w3)
            c1 = Conv (x, w1)
            s = Add (c3, c1)
            y = Add (s, x)
            p = {bn("y")}
            z = Relu (p)
        }}""",
        w3=[4, 4, 3, 3],
        w1=[4, 4, 1, 1],
        **stats(4),
    )
    _, report, ops = check(model)
    assert ops == {"Relu": 2, "Conv": 2, "Add": 1}
    assert report.residual_ops == 0 and report.bns[0].status == "folded"
    assert any(r.startswith("identity-branch-forward") for r in report.bns[0].rules)


@pytest.mark.parametrize(
    ("attrs", "kernel", "group"),
    [
        ("", 1, 1),  # a lone 1x1 sibling: the kernel is its own centre
        ("<pads = [1, 1, 1, 1], group = 4>", 3, 4),  # depthwise (MobileOne)
        ("<pads = [2, 2, 2, 2], dilations = [2, 2]>", 3, 1),
        ('<auto_pad = "SAME_UPPER">', 5, 1),
        ("<pads = [1, 1, 1, 1], group = 2>", 3, 2),
    ],
    ids=["1x1", "depthwise", "dilated", "same-upper", "groups"],
)
def test_one_sibling(build, check, attrs, kernel, group):
    model = build(
        f"""
        g (float[N, 4, 5, 5] u) => (float[N, 4, 5, 5] y) {{
            x = Relu (u)
            c = Conv {attrs} (x, w, b)
            i = {bn("x")}
            y = Add (i, c)
        }}""",
        w=[4, 4 // group, kernel, kernel],
        b=[4],
        **stats(4),
    )
    _, report, ops = check(model)
    assert ops == {"Relu": 1, "Conv": 1}
    assert report.bns[0].rules == ["identity-branch-forward:Conv_1"]


def test_two_blocks_in_a_row(build, check):
    """The second block's input is the first block's output: each identity BN finds its own."""
    block = """
            c3{k} = Conv <pads = [1, 1, 1, 1]> ({x}, w3{k})
            c1{k} = Conv ({x}, w1{k})
            s{k} = Add (c3{k}, c1{k})
            i{k} = {bn}
            a{k} = Add (s{k}, i{k})
            r{k} = Relu (a{k})"""
    first = block.format(k="a", x="x", bn=bn("x", "a"))
    body = first + block.format(k="b", x="ra", bn=bn("ra", "b"))
    model = build(
        f"g (float[N, 4, 6, 6] u) => (float[N, 4, 6, 6] rb) {{\n x = Relu (u)\n{body}\n}}",
        w3a=[4, 4, 3, 3],
        w1a=[4, 4, 1, 1],
        w3b=[4, 4, 3, 3],
        w1b=[4, 4, 1, 1],
        **stats(4, "a"),
        **stats(4, "b"),
    )
    _, report, ops = check(model)
    assert ops == {"Relu": 3, "Conv": 4, "Add": 2}
    assert report.residual_ops == 0


def test_sibling_of_another_tensor_is_not_used(build, check):
    """A Conv in the sum that reads another tensor is no sibling: the BN stays."""
    model = build(
        f"""
        g (float[N, 4, 6, 6] u, float[N, 4, 6, 6] v) => (float[N, 4, 6, 6] y) {{
            x = Relu (u)
            c = Conv <pads = [1, 1, 1, 1]> (v, w)
            k = Conv (x, w1)
            r = Relu (k)
            i = {bn("x")}
            y = Add (c, i)
        }}""",
        w=[4, 4, 3, 3],
        w1=[4, 4, 1, 1],
        **stats(4),
    )
    _, report, ops = check(model)
    assert not any(r.startswith("identity-branch") for r in report.bns[0].rules)
    assert ops["Conv"] == 2 and ops["BatchNormalization"] == 1


def test_a_zero_scale_on_the_way_is_refused(build):
    """The sibling's own BN, not folded yet, must be invertible for the tap to pass it."""
    model = build(
        f"""
        g (float[N, 4, 6, 6] u) => (float[N, 4, 6, 6] z) {{
            x = Relu (u)
            i = {bn("x", "i")}
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            b = {bn("c", "1")}
            y = Add (b, i)
            z = Relu (y)
        }}""",
        w=[4, 4, 3, 3],
        values={"gamma1": np.array([1.0, 0.0, 1.0, 1.0])},
        **{k: v for k, v in stats(4, "1").items() if k != "gamma1"},
        **stats(4, "i"),
    )
    g = Graph(model)
    recognize(g)
    add = next(n for n in g.nodes if n.op_type == "Add")
    rule = REGISTRY.find(g, add)
    assert isinstance(rule, IdentityBranchRule)
    m = rule.match_forward(g, add, 1, g.affine["BatchNormalization_1"].map)
    assert isinstance(m, BranchMatch) and m.sibling is None
    assert "on the way from Conv 'Conv_2' has a zero scale" in m.why
