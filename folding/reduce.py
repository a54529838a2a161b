"""ReduceMean: a map constant along the reduced axes passes it, as it passes GlobalAveragePool.

For a map (s, t) constant along every reduced axis, each mean is taken over
elements that share one (s, t), so mean(s x + t) = s mean(x) + t exactly: a
per-channel map on NCHW passes ``ReduceMean(axes=[2, 3])`` (with or without
keepdims; torch's ``x.mean((2, 3))`` before a classifier), and a map on the
features of a [B, N, D] token tensor passes a mean over the tokens. With
``keepdims=0`` the map loses (forward) or gains (backward) the reduced axes,
which are of size 1 in the map. Refused: a map that varies along a reduced
axis, axes that are not constants, a map on the axes input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from bnfold.folding.affine import Affine
from bnfold.folding.nodes import attr_int, attr_ints, label
from bnfold.folding.refusal import Refusal
from bnfold.folding.through import Through, ThroughRule

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph


def reduced_axes(g: Graph, node: onnx.NodeProto, rank: int | None) -> list[int] | Refusal:
    """The reduced axes of the input, sorted ([] when the node reduces nothing)."""
    if rank is None:
        return Refusal(f"{label(node)}: rank of '{node.input[0]}' unknown")
    if len(node.input) > 1 and node.input[1]:  # opset 18: axes as an input
        value = g.const(node.input[1])
        if value is None:
            return Refusal(f"{label(node)}: its axes '{node.input[1]}' are not constants")
        axes = [int(a) for a in value.reshape(-1)]
    else:
        axes = attr_ints(node, "axes")
    if not axes:
        return [] if attr_int(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted({a % rank for a in axes})


class ReduceMeanRule(ThroughRule):
    name = "reduce-mean"
    op_types = ("ReduceMean",)

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        axes = reduced_axes(g, node, g.rank(node.input[0]))
        if isinstance(axes, Refusal):
            return axes
        kept = bool(attr_int(node, "keepdims", 1))
        return Through(node, aff, up=((0, aff if kept else aff.unsqueeze(axes)),))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        if index != 0:
            return Refusal(f"{label(node)}: the map is on its axes input")
        axes = reduced_axes(g, node, aff.rank)
        if isinstance(axes, Refusal):
            return axes
        if varying := sorted(aff.varying_axes() & set(axes)):
            return Refusal(f"{label(node)}: the map varies along the reduced axes {varying}")
        kept = bool(attr_int(node, "keepdims", 1))
        return Through(node, aff, index, down=aff if kept else aff.squeeze(axes))
