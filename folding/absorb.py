"""The layers a map folds into: Conv, ConvTranspose, Gemm, MatMul (see algebra.py for the math).

- Backward: the map on the layer's output scales its output channels and
  shifts its bias.
- Forward: the map on the layer's input scales its input channels; the shift
  enters the bias only where no zero padding is added.

MatMul has no bias: backward its shift goes on to a following bias Add (or
the MatMul becomes a Gemm when 2-D); forward the shift becomes a bias that
moves on to the MatMul's consumers (or into a Gemm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.folding import algebra, cost
from bnfold.folding.affine import Affine
from bnfold.folding.edits import gemm_before_reshape, matmul_to_gemm, rename_output, set_const
from bnfold.folding.layer import BlockedShift, Channels, LayerMatch, LayerRule
from bnfold.folding.nodes import attr_float, attr_int, attr_ints, attr_str, label, padded
from bnfold.folding.plan import Plan, best
from bnfold.folding.refusal import Refusal
from bnfold.folding.rule import Direction, cast

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph
    from bnfold.folding.plan import Edge
    from bnfold.folding.search import Search

Arrays = dict[int, np.ndarray]


class ConvRule(LayerRule):
    """W: (M, C/group, *kernel), any group, 1D/2D/3D."""

    name = "conv"
    op_types = ("Conv",)

    def output_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels:
        return Channels(1, w.shape[0], "output channels")

    def input_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels:
        return Channels(1, w.shape[1] * attr_int(node, "group", 1), "input channels")

    def fold_output(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray,
    ) -> Arrays:
        w_new, b_new = algebra.conv_output(w, b, s, t)
        return {1: w_new, 2: b_new}

    def fold_input(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray | None,
    ) -> Arrays:
        w_new, b_new = algebra.conv_input(w, b, s, t, attr_int(node, "group", 1))
        return {1: w_new, 2: b_new}

    def shift_blocked(self, node: onnx.NodeProto, w: np.ndarray) -> BlockedShift | None:
        if not padded(node, tuple(w.shape[2:])):
            return None
        return BlockedShift(
            f"pads with zeros (pads={attr_ints(node, 'pads')}, "
            f"auto_pad={attr_str(node, 'auto_pad', 'NOTSET')})",
            f"{label(node)} pads with zeros and the map has a zero scale",
        )


class ConvTransposeRule(LayerRule):
    """W: (C, M/group, *kernel)."""

    name = "convtranspose"
    op_types = ("ConvTranspose",)

    def output_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels | Refusal:
        group = attr_int(node, "group", 1)
        if w.shape[0] % group:
            return Refusal(
                f"{label(node)}: {w.shape[0]} input channels not divisible by group={group}"
            )
        return Channels(1, w.shape[1] * group, "output channels")

    def input_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels:
        return Channels(1, w.shape[0], "input channels")

    def fold_output(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray,
    ) -> Arrays:
        w_new, b_new = algebra.convtranspose_output(w, b, s, t, attr_int(node, "group", 1))
        return {1: w_new, 2: b_new}

    def fold_input(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray | None,
    ) -> Arrays:
        w_new, b_new = algebra.convtranspose_input(w, b, s, t, attr_int(node, "group", 1))
        return {1: w_new, 2: b_new}

    def shift_blocked(self, node: onnx.NodeProto, w: np.ndarray) -> BlockedShift | None:
        one_to_one = (
            all(k == 1 for k in w.shape[2:])
            and all(v == 1 for v in attr_ints(node, "strides"))
            and not any(attr_ints(node, "pads"))
            and not any(attr_ints(node, "output_padding"))
            and not attr_ints(node, "output_shape")
        )
        if one_to_one:
            return None
        return BlockedShift(
            "spreads a constant input unevenly over its output",
            f"{label(node)}: the shift stays and the map has a zero scale",
        )


class GemmRule(LayerRule):
    """Y = alpha * A' @ B' + beta * C with A' = A^T if transA, B' = B^T if transB."""

    name = "gemm"
    op_types = ("Gemm",)
    weight_label = "B"

    def output_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels:
        trans_b = bool(attr_int(node, "transB", 0))
        return Channels(1, w.shape[0 if trans_b else 1], "output columns")

    def input_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels:
        trans_a, trans_b = bool(attr_int(node, "transA", 0)), bool(attr_int(node, "transB", 0))
        return Channels(0 if trans_a else 1, w.shape[1 if trans_b else 0], "input columns")

    def fold_output(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray,
    ) -> Arrays:
        b_new, c_new = algebra.gemm_output(
            w,
            b,
            s,
            t,
            trans_b=bool(attr_int(node, "transB", 0)),
            beta=attr_float(node, "beta", 1.0),
        )
        return {1: b_new, 2: c_new}

    def fold_input(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray | None,
    ) -> Arrays:
        b_new, c_new = algebra.gemm_input(
            w,
            b,
            s,
            t,
            trans_b=bool(attr_int(node, "transB", 0)),
            alpha=attr_float(node, "alpha", 1.0),
            beta=attr_float(node, "beta", 1.0),
        )
        return {1: b_new} if c_new is None else {1: b_new, 2: c_new}

    def attrs(self, consts: Arrays) -> list[tuple[str, object]]:
        return [("beta", 1.0)] if 2 in consts else []  # C' already carries beta


class MatMulRule(LayerRule):
    """X @ W with W constant; the channel axis is the last one of X and of Y.

    The match's constant 2 is the bias the shift becomes (what a Gemm would add).
    """

    name = "matmul"
    op_types = ("MatMul",)
    weights = (1,)

    def check_weight(self, node: onnx.NodeProto, w: np.ndarray) -> Refusal | None:
        return Refusal(f"{label(node)}: weight of rank {w.ndim}") if w.ndim < 2 else None

    def output_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels:
        return Channels(-1, w.shape[-1], "output columns")

    def input_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels:
        return Channels(-1, w.shape[-2], "input columns")

    def fold_output(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray,
    ) -> Arrays:
        return {1: algebra.matmul_output(w, s)}

    def fold_input(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray | None,
    ) -> Arrays:
        w_new, bias = algebra.matmul_input(w, s, np.zeros_like(s) if t is None else t)
        return {1: w_new, 2: bias}

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> LayerMatch | Refusal:
        m = super().match_forward(g, node, index, aff)
        out = node.output[0]
        if not isinstance(m, Refusal) and aff.has_shift and g.rank(out) is None:
            return Refusal(f"{label(node)}: rank of '{out}' unknown")
        return m

    def rewrite_backward(self, s: Search, m: LayerMatch, edge: Edge, switch: bool) -> Plan:
        node, w_new = m.node, m.consts[1]
        back = Direction.BACKWARD
        if not m.aff.has_shift:
            return self.step(back, node, rename_output(node), set_const(node, 1, w_new))
        options = [
            self.step(back, node, rename_output(node), set_const(node, 1, w_new))
            + s.settle_after(edge, m.aff.shift_only(), switch)
        ]
        bias = cast(node, m.w, m.shift)
        if s.g.rank(node.input[0]) == 2 and m.w.ndim == 2 and not isinstance(bias, Refusal):
            to_gemm = matmul_to_gemm(node, w_new, bias[0])
            options.append(self.step(back, node, rename_output(node), to_gemm) + _op_change())
        elif _flattened(s.g, node, edge[0], m.w) and not isinstance(bias, Refusal):
            to_gemm = gemm_before_reshape(node, edge[0], w_new, bias[0])
            options.append(self.step(back, node, to_gemm) + _op_change())
        options[0].reasons.append(f"{label(node)} has no bias for the shift")
        return best(options)

    def rewrite_forward(self, s: Search, m: LayerMatch, switch: bool) -> Plan:
        node, w_new = m.node, m.consts[1]
        fwd = Direction.FORWARD
        if not m.aff.has_shift:
            return self.step(fwd, node, set_const(node, 1, w_new))
        out = node.output[0]
        out_rank = s.g.rank(out)
        assert out_rank is not None  # the match refuses otherwise
        bias64 = m.raw[2]
        carry = Affine.make(
            np.ones(1), bias64.reshape((1,) * (out_rank - bias64.ndim) + bias64.shape)
        )
        options = [
            self.step(fwd, node, set_const(node, 1, w_new), rename_output(node))
            + s.forward_value(out, carry, switch)
        ]
        readers = s.g.consumers(out)
        if s.g.rank(node.input[0]) == 2 and m.w.ndim == 2:
            to_gemm = matmul_to_gemm(node, w_new, m.consts[2])
            options.append(self.step(fwd, node, to_gemm) + _op_change())
        elif len(readers) == 1 and _flattened(s.g, node, readers[0][0], m.w):
            to_gemm = gemm_before_reshape(node, readers[0][0], w_new, m.consts[2])
            options.append(self.step(fwd, node, to_gemm) + _op_change())
        return best(options)


def _op_change() -> Plan:
    return Plan(cost=cost.OP_CHANGE)


def _flattened(g: Graph, node: onnx.NodeProto, reshape: onnx.NodeProto, w: np.ndarray) -> bool:
    """Whether ``node`` (a MatMul of rank > 2, 2-D weight) feeds only ``reshape``, which
    merges the leading axes of its output and keeps the last: a token Linear
    ``[B, N, C] @ W -> [B*N, D]``, as LeViT-style blocks flatten tokens for a BN."""
    out, rank = node.output[0], g.rank(node.input[0])
    if w.ndim != 2 or rank is None or rank < 3 or reshape.domain not in ("", "ai.onnx"):
        return False
    if g.exclusive(out, reshape) is not None or reshape.input[0] != out:
        return False
    shape = g.shape(reshape.output[0])
    if shape is None or len(shape) != 2 or shape[1] != int(w.shape[1]):
        return False
    if reshape.op_type == "Flatten":
        return attr_int(reshape, "axis", 1) % rank == rank - 1
    return reshape.op_type == "Reshape"
