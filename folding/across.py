"""Rules that let a map through a node, whole or in part (the rewrite is in through.py).

- Identity, Dropout (inference):      a' = a
- Transpose(perm):                    a' = a permuted
- Reshape, Flatten, (Un)Squeeze:      a' = a reshaped (static non-batch dims)
- AveragePool, GlobalAveragePool:     a' = a if per channel (shift only if
                                       padding is not counted)
- MaxPool, GlobalMaxPool:             a' = a if per channel and s > 0; else
                                       the sign flip (a Mul by +-1) stays
- Relu, LeakyRelu, PRelu:             relu(s x) = s relu(x) for s > 0: only the
                                       scale passes; the shift stays
- Concat:                             a splits into per-input slices (backward)
                                       or extends by identity (forward)

Add and Sub are in add.py, Resize in resize.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.folding.affine import Affine, Shape, concat_extend
from bnfold.folding.nodes import (
    attr_int,
    attr_ints,
    extra_outputs_used,
    label,
    padded,
)
from bnfold.folding.refusal import Refusal
from bnfold.folding.through import Through, ThroughRule

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph


class IdentityRule(ThroughRule):
    name = "identity"
    op_types = ("Identity", "Dropout")

    def _check(self, g: Graph, node: onnx.NodeProto) -> Refusal | None:
        if (refusal := extra_outputs_used(g, node)) is not None:
            return refusal
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = g.const(node.input[2])
            if mode is None or bool(mode):
                return Refusal(f"{label(node)} may run in training mode")
        return None

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        return self._check(g, node) or Through(node, aff, up=((0, aff),))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        return self._check(g, node) or Through(node, aff, index, down=aff)


class TransposeRule(ThroughRule):
    name = "transpose"
    op_types = ("Transpose",)

    def _perm(self, node: onnx.NodeProto, rank: int) -> list[int]:
        return attr_ints(node, "perm") or list(reversed(range(rank)))

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        inverse = list(np.argsort(self._perm(node, aff.rank)))
        return Through(node, aff, up=((0, aff.transpose(inverse)),))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        return Through(node, aff, index, down=aff.transpose(self._perm(node, aff.rank)))


class ReshapeRule(ThroughRule):
    name = "reshape"
    op_types = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")

    def _reshaped(
        self, g: Graph, node: onnx.NodeProto, aff: Affine, backward: bool
    ) -> Affine | Refusal:
        src, dst = g.shape(node.input[0]), g.shape(node.output[0])
        if src is None or dst is None:
            return Refusal(f"{label(node)}: static shapes unknown")
        shapes: tuple[Shape, Shape] = (dst, src) if backward else (src, dst)
        moved = aff.reshape(*shapes)
        if isinstance(moved, Refusal):
            return Refusal(f"{label(node)}: {moved.reason}")
        return moved

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        aff_in = self._reshaped(g, node, aff, backward=True)
        return aff_in if isinstance(aff_in, Refusal) else Through(node, aff, up=((0, aff_in),))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        if index != 0:
            return Refusal(f"{label(node)}: the map is on its shape input")
        out = self._reshaped(g, node, aff, backward=False)
        return out if isinstance(out, Refusal) else Through(node, aff, index, down=out)


class PoolRule(ThroughRule):
    name = "pool"
    op_types = ("AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool")

    def _check(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Refusal | None:
        if (refusal := extra_outputs_used(g, node)) is not None:
            return refusal
        if not aff.varying_axes() <= {1}:
            return Refusal(f"{label(node)}: the map varies along the pooled axes")
        return None

    def _counts_padding(self, node: onnx.NodeProto) -> bool:
        if node.op_type != "AveragePool" or not attr_int(node, "count_include_pad", 0):
            return False
        return padded(node, tuple(attr_ints(node, "kernel_shape")))

    def _negative(self, node: onnx.NodeProto, aff: Affine) -> str:
        return (
            f"{label(node)}: {aff.n_negative()} channel(s) have a negative scale and a max "
            "does not commute with a sign flip; a Mul by +-1 stays"
        )

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        if (refusal := self._check(g, node, aff)) is not None:
            return refusal
        if self._counts_padding(node):
            return Through(
                node,
                aff,
                up=((0, aff.scale_only()),),
                left=aff.shift_only(),
                reasons=(f"{label(node)} averages zero padding: the shift stays",),
            )
        if "Max" in node.op_type and not aff.positive:
            sign, rest = aff.sign_split()  # aff = sign after rest; rest passes
            return Through(
                node, aff, up=((0, rest),), left=sign, reasons=(self._negative(node, aff),)
            )
        return Through(node, aff, up=((0, aff),))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        if (refusal := self._check(g, node, aff)) is not None:
            return refusal
        if self._counts_padding(node):
            if not np.all(aff.s != 0):
                return Refusal(f"{label(node)} averages zero padding and the map has a zero scale")
            pre = Affine.make(np.ones_like(aff.s), aff.t / aff.s)  # avg(s (x + t/s)) = s avg(...)
            return Through(
                node,
                aff,
                index,
                down=aff.scale_only(),
                left=pre,
                reasons=(f"{label(node)} averages zero padding: the shift stays",),
            )
        if "Max" in node.op_type and not aff.positive:
            sign = Affine.make(np.where(aff.s < 0, -1.0, 1.0), np.zeros_like(aff.s))
            rest = Affine.make(np.abs(aff.s), aff.t)  # aff = rest after sign
            return Through(
                node, aff, index, down=rest, left=sign, reasons=(self._negative(node, aff),)
            )
        return Through(node, aff, index, down=aff)


class ReluRule(ThroughRule):
    """Positively homogeneous activations: f(s x) = s f(x) for s > 0."""

    name = "relu"
    op_types = ("Relu", "LeakyRelu", "PRelu")

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        sign, rest = aff.sign_split()
        left = Affine.make(sign.s, aff.t)  # s relu(z) + t = sign relu(|s| z) + t
        reasons = []
        if aff.has_shift:
            reasons.append(f"the shift does not pass {label(node)}")
        if not aff.positive:
            reasons.append(
                f"{label(node)}: {aff.n_negative()} channel(s) have a negative scale; "
                "only |scale| passes"
            )
        return Through(node, aff, up=((0, rest.scale_only()),), left=left, reasons=tuple(reasons))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        if index != 0:
            return Refusal(f"{label(node)}: the map is on its slope input")
        if not bool(np.all(aff.s > 0)):
            return Refusal(
                f"{label(node)}: {int(np.sum(aff.s <= 0))} channel(s) have a scale <= 0; "
                "only a positive scale passes"
            )
        left = Affine.make(np.ones_like(aff.s), aff.t / aff.s)  # relu(s x + t) = s relu(x + t/s)
        reasons = (f"the shift does not pass {label(node)}",) if aff.has_shift else ()
        return Through(node, aff, index, down=aff.scale_only(), left=left, reasons=reasons)


class ConcatRule(ThroughRule):
    name = "concat"
    op_types = ("Concat",)

    def _sizes(self, g: Graph, node: onnx.NodeProto, rank: int) -> tuple[int, list[int]] | Refusal:
        axis = attr_int(node, "axis", 0) % rank
        sizes = []
        for name in node.input:
            shape = g.shape(name)
            if shape is None or not isinstance(shape[axis], int):
                return Refusal(f"{label(node)}: size of '{name}' along axis {axis} unknown")
            sizes.append(int(shape[axis]))  # type: ignore[arg-type]
        return axis, sizes

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        found = self._sizes(g, node, aff.rank)
        if isinstance(found, Refusal):
            return found
        axis, sizes = found
        offsets = np.cumsum([0, *sizes])
        parts = tuple(
            (i, aff.take(axis, int(offsets[i]), int(offsets[i + 1]))) for i in range(len(sizes))
        )
        return Through(node, aff, up=parts)

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        if list(node.input).count(node.input[index]) > 1:
            return Refusal(f"{label(node)} reads the same tensor twice")
        found = self._sizes(g, node, aff.rank)
        if isinstance(found, Refusal):
            return found
        axis, sizes = found
        return Through(node, aff, index, down=concat_extend(aff, axis, sizes, index))
