"""Add and Sub: a constant operand absorbs the shift (bias-add); two branches share the map (add).

- bias-add, backward: s (u + c) + t = s u + (s c + t); Sub(u, c):
  s (u - c) + t = s u - (s c - t); Sub(c, u): s (c - u) + t = (s c + t) - s u.
  The scale goes on up the other input.
- bias-add, forward: (s u + t) + c = s u + (c + t); Sub(u, c): (s u + t) - c =
  s u - (c - t); Sub(c, u): c - (s u + t) = (c - t) - s u. The scale stays.
- add, backward: s (a + b) + t = (s a + t) + s b (or the shift up b).
- add, forward: (s a + t) + b = (s a + b) + t: the shift passes, the scale stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.folding.affine import Affine
from bnfold.folding.nodes import label
from bnfold.folding.refusal import Refusal
from bnfold.folding.rule import Absorbs, cast
from bnfold.folding.through import Through, ThroughRule

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph


def _constant(g: Graph, node: onnx.NodeProto) -> tuple[int, np.ndarray] | None:
    """(index, value) of the node's float constant operand, if it has one."""
    for i in (0, 1):
        c = g.const(node.input[i])
        if c is not None and c.dtype.kind == "f":
            return i, c
    return None


def _to_rank(v: np.ndarray, rank: int) -> np.ndarray:
    """Left-pad ``v`` with unit dims to ``rank``."""
    return v.reshape((1,) * (rank - v.ndim) + v.shape)


def _trim_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Drop leading unit dims of ``value`` down to ``like``'s rank where possible."""
    while value.ndim > like.ndim and value.shape[0] == 1:
        value = value[0]
    return value


class BiasAddRule(ThroughRule):
    name = "bias-add"
    op_types = ("Add", "Sub")
    absorbs = Absorbs.CONSTANT

    def applies(self, g: Graph, node: onnx.NodeProto) -> bool:
        return _constant(g, node) is not None

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        found = _constant(g, node)
        if found is None:
            return Refusal(f"{label(node)} has no constant operand")
        ci, c = found
        sign = -1.0 if (node.op_type == "Sub" and ci == 1) else 1.0
        c64 = _to_rank(c.astype(np.float64), aff.rank)
        c_new = cast(node, c, _trim_like(aff.s * c64 + sign * aff.t, c))
        if isinstance(c_new, Refusal):
            return c_new
        return Through(node, aff, up=((1 - ci, aff.scale_only()),), consts=((ci, c_new[0]),))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        found = _constant(g, node)
        if found is None:
            return Refusal(f"{label(node)} has no constant operand")
        ci, c = found
        if ci == index:
            return Refusal(f"{label(node)}: the map is on its constant input")
        sign = -1.0 if node.op_type == "Sub" else 1.0
        c64 = _to_rank(c.astype(np.float64), aff.rank)
        c_new = cast(node, c, _trim_like(c64 + sign * aff.t, c))
        if isinstance(c_new, Refusal):
            return c_new
        return Through(node, aff, index, left=aff.scale_only(), consts=((ci, c_new[0]),))


class AddRule(ThroughRule):
    name = "add"
    op_types = ("Add", "Sub")

    def applies(self, g: Graph, node: onnx.NodeProto) -> bool:
        return _constant(g, node) is None

    def _same_shapes(self, g: Graph, node: onnx.NodeProto) -> Refusal | None:
        out = g.shape(node.output[0])
        for name in node.input:
            if out is None or g.shape(name) != out:
                return Refusal(f"{label(node)} broadcasts its inputs")
        return None

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        if (refusal := self._same_shapes(g, node)) is not None:
            return refusal
        minus = -1.0 if node.op_type == "Sub" else 1.0
        shift_b = Affine.make(aff.s, minus * aff.t)
        return Through(
            node,
            aff,
            up=((0, aff), (1, aff.scale_only())),
            or_up=((0, aff.scale_only()), (1, shift_b)),
        )

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        if (refusal := self._same_shapes(g, node)) is not None:
            return refusal
        out = aff.shift_only()
        if node.op_type == "Sub" and index == 1:
            out = Affine.make(np.ones(1), -aff.t)
        left = aff.scale_only() if aff.has_scale else None
        return Through(node, aff, index, down=out, left=left)
