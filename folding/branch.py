"""A BN on the identity branch of a sum folds into a sibling Conv's centre tap.

RepVGG-style blocks sum convolutions of one tensor with a BN of the tensor
itself: ``conv3x3(x) + conv1x1(x) + BN(x)``. The identity BN cannot fold
back (``x`` has other readers) and Add lets only its shift through, so its
scale would stay as a Mul. But ``s x + t`` is itself a convolution of ``x``:
a kernel that is ``s[c]`` at the centre of channel c's own tap and 0
elsewhere, with bias ``t``. Added to a sibling Conv that reads the same
``x`` with stride 1, an odd kernel and "same" padding (its centre tap reads
the output position itself, never padding) and has as many output channels
as ``x`` has channels, it gives

    Add(conv(x; W, b) + ..., s x + t) = conv(x; W', b') + ...
    W'[c, c mod (C/group), centre] = W[...] + s[c],   b'[c] = b[c] + t[c]

(``algebra.centre_tap``): RepVGG's structural re-parameterisation of the
identity branch, done on the graph. The Add that read the identity branch is
gone. The sibling may sit below other Adds of the sum (a tree of same-shape
Adds) and behind its own not-yet-folded BN (a per-channel map A with no
zero scale: the Conv then takes ``(s x + t) / s_A``, so that A(conv'(x)) =
A(conv(x)) + s x + t). Refused, with the reason in the report: a kernel
with no centre tap (even size), strides other than 1, padding that does
not centre the kernel, a weight or bias that is not a constant, a zero
scale in a map on the way.

This rule serves an Add only where that pattern is present (``applies``);
backward, and forward where the map is not the identity branch's own BN,
it is the ``add`` rule (its steps keep that name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.folding import algebra
from bnfold.folding.add import AddRule
from bnfold.folding.graph import AFFINE_DOMAIN
from bnfold.folding.nodes import attr_int, attr_ints, attr_str, label
from bnfold.folding.plan import Plan, best
from bnfold.folding.refusal import Refusal
from bnfold.folding.rule import Absorbs, Direction, Match, Rule, cast
from bnfold.folding.through import Through

if TYPE_CHECKING:
    from bnfold.folding.affine import Affine
    from bnfold.folding.graph import Graph
    from bnfold.folding.plan import Edge
    from bnfold.folding.search import Search

ADD = AddRule()
MAX_CHAIN = 8


@dataclass(frozen=True)
class Sibling:
    """A Conv reading the identity branch's input, and the nodes from it up to the Add."""

    conv: onnx.NodeProto
    chain: tuple[onnx.NodeProto, ...]  # conv first, then Affine/Add nodes; the last feeds the Add


@dataclass(frozen=True, eq=False)
class BranchMatch(Match):
    index: int  # the Add input the map is on
    base: Through | Refusal  # what the add rule makes of it
    sibling: Sibling | None
    consts: tuple[np.ndarray, np.ndarray] | None  # the sibling's W', b' (cast)
    why: str  # why the centre tap does not apply (sibling is None)


def centred(conv: onnx.NodeProto, w: np.ndarray) -> Refusal | None:
    """None if every output position of ``conv`` reads its own input position at the centre tap."""
    kernel = w.shape[2:]
    if any(k % 2 == 0 for k in kernel):
        return Refusal(f"{label(conv)}: kernel {list(kernel)} has no centre tap")
    if any(v != 1 for v in attr_ints(conv, "strides")):
        return Refusal(f"{label(conv)}: strides {attr_ints(conv, 'strides')} are not 1")
    auto_pad = attr_str(conv, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return None  # stride 1, odd kernel: the padding is even on both sides
    dilations = attr_ints(conv, "dilations") or [1] * len(kernel)
    pads = attr_ints(conv, "pads") or [0] * (2 * len(kernel))
    if auto_pad == "VALID":
        pads = [0] * (2 * len(kernel))
    need = [d * (k - 1) // 2 for d, k in zip(dilations, kernel, strict=True)]
    if pads != need + need:
        return Refusal(f"{label(conv)}: pads {pads} do not centre the kernel (need {need + need})")
    return None


def _sibling(
    g: Graph, value: str, reader: onnx.NodeProto, x: str, depth: int = 0
) -> Sibling | None:
    """A Conv reading ``x`` whose output reaches ``value`` through same-shape Adds and
    Affine maps, each value on the way read once."""
    if g.exclusive(value, reader) is not None or depth > MAX_CHAIN:
        return None
    node, shape = g.producer(value), g.shape(x)
    if node is None or g.shape(value) != shape:
        return None
    if node.domain == AFFINE_DOMAIN:
        found = _sibling(g, node.input[0], node, x, depth + 1)
        return None if found is None else Sibling(found.conv, (*found.chain, node))
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Conv" and node.input[0] == x:
        return Sibling(node, (node,))
    if node.op_type == "Add" and all(g.shape(i) == shape for i in node.input):
        for operand in node.input:
            if (found := _sibling(g, operand, node, x, depth + 1)) is not None:
                return Sibling(found.conv, (*found.chain, node))
    return None


def identity_branch(g: Graph, node: onnx.NodeProto, index: int) -> Sibling | None:
    """The sibling Conv for a BN on input ``index`` of the Add ``node``, if the pattern is there."""
    y = node.input[index]
    source = g.producer(y)
    if source is None or source.domain != AFFINE_DOMAIN or g.exclusive(y, node) is not None:
        return None
    x, shape = source.input[0], g.shape(source.input[0])
    if shape is None or len(shape) < 3 or not isinstance(shape[1], int):
        return None
    if not all(g.shape(i) == shape for i in (*node.input, node.output[0])):
        return None
    return _sibling(g, node.input[1 - index], node, x)


def _tap(g: Graph, sib: Sibling, aff: Affine) -> tuple[np.ndarray, np.ndarray] | Refusal:
    """The sibling's folded weight and bias (cast), or why the centre tap does not apply."""
    conv = sib.conv
    w = g.const(conv.input[1])
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    b = g.const(conv.input[2]) if has_bias else None
    if w is None or (has_bias and b is None):
        return Refusal(f"{label(conv)}: its weight or bias is not a constant")
    if (refusal := centred(conv, w)) is not None:
        return refusal
    channels = int(w.shape[0])
    vec = aff.vectors(1, channels)
    if vec is None:
        return Refusal(f"the map varies along more than the channels of '{conv.input[0]}'")
    divisor = np.ones(channels)  # A(conv(x) + d) = A(conv(x)) + s_A d for each map A on the way
    for n in sib.chain:
        if n.domain == AFFINE_DOMAIN:
            inner = g.affine[n.name].map.vectors(1, channels)
            if inner is None or not np.all(inner[0] != 0):
                return Refusal(f"{label(n)} on the way from {label(conv)} has a zero scale")
            divisor = divisor * inner[0]
    s, t = vec[0] / divisor, vec[1] / divisor
    w_new, b_new = algebra.centre_tap(w, b, s, t, attr_int(conv, "group", 1))
    consts = cast(conv, w, w_new, b_new)
    return consts if isinstance(consts, Refusal) else (consts[0], consts[1])


class IdentityBranchRule(Rule[Match]):
    name = "identity-branch"
    op_types = ("Add",)
    absorbs = Absorbs.WEIGHTS

    def applies(self, g: Graph, node: onnx.NodeProto) -> bool:
        if not ADD.applies(g, node) or len(node.input) != 2:
            return False
        return any(identity_branch(g, node, i) is not None for i in (0, 1))

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Match | Refusal:
        return ADD.match_backward(g, node, aff)

    def rewrite_backward(self, s: Search, m: Match, edge: Edge, switch: bool) -> Plan:
        assert isinstance(m, Through)
        return ADD.rewrite_backward(s, m, edge, switch)

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Match | Refusal:
        base = ADD.match_forward(g, node, index, aff)
        sib = identity_branch(g, node, index)
        if sib is None:
            return base
        consts = _tap(g, sib, aff)
        if not isinstance(consts, Refusal):
            return BranchMatch(node, aff, index, base, sib, consts, "")
        if isinstance(base, Refusal):
            return consts
        return BranchMatch(node, aff, index, base, None, None, consts.reason)

    def rewrite_forward(self, s: Search, m: Match, switch: bool) -> Plan:
        if isinstance(m, Through):  # the map is not on an identity branch
            return ADD.rewrite_forward(s, m, switch)
        assert isinstance(m, BranchMatch)
        options = []
        if not isinstance(m.base, Refusal):
            options.append(ADD.rewrite_forward(s, m.base, switch))
        # Only the identity branch's own map, on the tensor it reads: its input is unchanged
        # by the plan (it has other readers) and nothing else in the plan touches the sibling.
        own = s.g.producer(m.node.input[m.index]) is s.root
        if m.sibling is not None and m.consts is not None and own:
            options.append(self._absorb(m.node, m.sibling, m.consts))
        elif m.why:
            for option in options:
                option.reasons.append(f"identity branch of {label(m.node)}: {m.why}")
        if not options:
            return Plan.stay((m.node, m.index), m.aff, [m.why])
        return best(options)

    def _absorb(
        self, add: onnx.NodeProto, sib: Sibling, consts: tuple[np.ndarray, np.ndarray]
    ) -> Plan:
        conv, (w_new, b_new) = sib.conv, consts

        def run(g: Graph) -> None:
            g.set_input(conv, 1, g.add_const(conv.input[1], w_new))
            bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else conv.name + "_bias"
            g.set_input(conv, 2, g.add_const(bias, b_new))
            for n in sib.chain[:-1]:  # their values change
                g.rename_output(n, 0)
            top, out = sib.chain[-1], add.output[0]
            g.remove(add)  # the sum no longer needs the identity branch
            top.output[0] = out
            g.touch()

        return self.step(Direction.FORWARD, conv, run)
