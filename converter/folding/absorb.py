"""Rules that absorb a map into a layer's constants (see algebra.py for the math).

- Conv / ConvTranspose / Gemm / MatMul, backward: the map on the layer's
  output scales its output channels and shifts its bias.
- The same layers, forward: the map on the layer's input scales its input
  channels; the shift enters the bias only where no zero padding is added.
- Another BN (an internal Affine node) either way: the two maps compose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.converter.folding import algebra
from bnfold.converter.folding.affine import Affine
from bnfold.converter.folding.plan import Plan, best
from bnfold.converter.folding.rule import (
    Rule,
    attr_float,
    attr_int,
    attr_ints,
    attr_str,
    cast_like,
    const_input,
    label,
    padded,
    rename_output,
    set_attr,
    set_const,
)

if TYPE_CHECKING:
    from bnfold.converter.folding.graph import Graph
    from bnfold.converter.folding.plan import Action, Edge, Search


def _weights(g: Graph, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None] | str:
    w = const_input(g, node, 1, "weight")
    if w is None:
        return f"{label(node)}: no weight"
    if isinstance(w, str):
        return w
    b = const_input(g, node, 2, "bias")
    if isinstance(b, str):
        return b
    return w, b


def _set_wb(
    node: onnx.NodeProto, w: np.ndarray, b: np.ndarray, w_like: np.ndarray
) -> list[Action] | str:
    w_cast, b_cast = cast_like(w, w_like, node), cast_like(b, w_like, node)
    if isinstance(w_cast, str):
        return w_cast
    if isinstance(b_cast, str):
        return b_cast
    return [set_const(node, 1, w_cast), set_const(node, 2, b_cast)]


def _channels_only(
    aff: Affine, axis: int, n: int, node: onnx.NodeProto, what: str
) -> tuple[np.ndarray, np.ndarray] | str:
    vec = aff.vectors(axis, n)
    if vec is None:
        return f"{label(node)}: the map varies along more than its {what} ({n} along axis {axis})"
    return vec


def _shift_stays_before(
    s: Search, node: onnx.NodeProto, aff: Affine, switch: bool, why: str
) -> Plan:
    """The layer took the scale; leave ``x + t / s`` in front of it, saying why.

    layer(W s, x + t / s) = layer(W, s x + t) for any layer linear in x.
    """
    rest = s.settle_before(node, 0, Affine.make(np.ones_like(aff.s), aff.t / aff.s), switch)
    rest.reasons.append(f"{label(node)} {why}: the shift cannot enter its bias")
    return rest


class ConvRule(Rule):
    name = "conv"
    op_types = ("Conv",)

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        wb = _weights(s.g, node)
        if isinstance(wb, str):
            return wb
        w, b = wb
        vec = _channels_only(aff, 1, w.shape[0], node, "output channels")
        if isinstance(vec, str):
            return vec
        actions = _set_wb(node, *algebra.conv_output(w, b, *vec), w)
        if isinstance(actions, str):
            return actions
        return Plan.step("conv-backward", node, *actions, rename_output(node))

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        if index != 0:
            return f"{label(node)}: the map is on its weight input"
        wb = _weights(s.g, node)
        if isinstance(wb, str):
            return wb
        w, b = wb
        group = attr_int(node, "group", 1)
        vec = _channels_only(aff, 1, w.shape[1] * group, node, "input channels")
        if isinstance(vec, str):
            return vec
        scale, shift = vec
        pads = padded(node, tuple(w.shape[2:]))
        fold_shift = aff.has_shift and not pads
        if aff.has_shift and not fold_shift and not np.all(scale != 0):
            return f"{label(node)} pads with zeros and the map has a zero scale"
        actions = _set_wb(
            node, *algebra.conv_input(w, b, scale, shift if fold_shift else None, group), w
        )
        if isinstance(actions, str):
            return actions
        plan = Plan.step("conv-forward", node, *actions)
        if aff.has_shift and pads:
            plan = plan + _shift_stays_before(
                s, node, aff, switch,
                f"pads with zeros (pads={attr_ints(node, 'pads')}, "
                f"auto_pad={attr_str(node, 'auto_pad', 'NOTSET')})",
            )  # fmt: skip
        return plan


class ConvTransposeRule(Rule):
    name = "convtranspose"
    op_types = ("ConvTranspose",)

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        wb = _weights(s.g, node)
        if isinstance(wb, str):
            return wb
        w, b = wb
        group = attr_int(node, "group", 1)
        if w.shape[0] % group:
            return f"{label(node)}: {w.shape[0]} input channels not divisible by group={group}"
        vec = _channels_only(aff, 1, w.shape[1] * group, node, "output channels")
        if isinstance(vec, str):
            return vec
        actions = _set_wb(node, *algebra.convtranspose_output(w, b, *vec, group), w)
        if isinstance(actions, str):
            return actions
        return Plan.step("convtranspose-backward", node, *actions, rename_output(node))

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        if index != 0:
            return f"{label(node)}: the map is on its weight input"
        wb = _weights(s.g, node)
        if isinstance(wb, str):
            return wb
        w, b = wb
        group = attr_int(node, "group", 1)
        vec = _channels_only(aff, 1, w.shape[0], node, "input channels")
        if isinstance(vec, str):
            return vec
        scale, shift = vec
        one_to_one = (
            all(k == 1 for k in w.shape[2:])
            and all(v == 1 for v in attr_ints(node, "strides"))
            and not any(attr_ints(node, "pads"))
            and not any(attr_ints(node, "output_padding"))
            and not attr_ints(node, "output_shape")
        )
        fold_shift = aff.has_shift and one_to_one
        if aff.has_shift and not fold_shift and not np.all(scale != 0):
            return f"{label(node)}: the shift stays and the map has a zero scale"
        actions = _set_wb(
            node,
            *algebra.convtranspose_input(w, b, scale, shift if fold_shift else None, group),
            w,
        )
        if isinstance(actions, str):
            return actions
        plan = Plan.step("convtranspose-forward", node, *actions)
        if aff.has_shift and not fold_shift:
            plan = plan + _shift_stays_before(
                s, node, aff, switch, "spreads a constant input unevenly over its output"
            )
        return plan


class GemmRule(Rule):
    """Y = alpha * A' @ B' + beta * C with A' = A^T if transA, B' = B^T if transB."""

    name = "gemm"
    op_types = ("Gemm",)

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        wb = _weights(s.g, node)
        if isinstance(wb, str):
            return wb
        b_mat, c = wb
        trans_b = bool(attr_int(node, "transB", 0))
        vec = _channels_only(aff, 1, b_mat.shape[0 if trans_b else 1], node, "output columns")
        if isinstance(vec, str):
            return vec
        beta = attr_float(node, "beta", 1.0)
        b_new, c_new = algebra.gemm_output(b_mat, c, *vec, trans_b=trans_b, beta=beta)
        actions = _set_wb(node, b_new, c_new, b_mat)
        if isinstance(actions, str):
            return actions
        return Plan.step(
            "gemm-backward", node, *actions, set_attr(node, "beta", 1.0), rename_output(node)
        )

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        if index != 0:
            return f"{label(node)}: the map is on its B input"
        wb = _weights(s.g, node)
        if isinstance(wb, str):
            return wb
        b_mat, c = wb
        trans_a, trans_b = bool(attr_int(node, "transA", 0)), bool(attr_int(node, "transB", 0))
        k = b_mat.shape[1 if trans_b else 0]
        vec = _channels_only(aff, 0 if trans_a else 1, k, node, "input columns")
        if isinstance(vec, str):
            return vec
        scale, shift = vec
        b_new, c_new = algebra.gemm_input(
            b_mat,
            c,
            scale,
            shift if aff.has_shift else None,
            trans_b=trans_b,
            alpha=attr_float(node, "alpha", 1.0),
            beta=attr_float(node, "beta", 1.0),
        )
        b_cast = cast_like(b_new, b_mat, node)
        if isinstance(b_cast, str):
            return b_cast
        actions: list[Action] = [set_const(node, 1, b_cast)]
        if c_new is not None:
            c_cast = cast_like(c_new, b_mat, node)
            if isinstance(c_cast, str):
                return c_cast
            actions += [set_const(node, 2, c_cast), set_attr(node, "beta", 1.0)]
        return Plan.step("gemm-forward", node, *actions)


def _to_gemm(node: onnx.NodeProto, w: np.ndarray, bias: np.ndarray) -> Action:
    """Action: MatMul(A, W) -> Gemm(A, W', bias); same output, one op."""

    def run(g: Graph) -> None:
        a = node.input[0]
        w_name = g.add_const(node.input[1], w)
        b_name = g.add_const(node.name + "_bias", bias)
        node.op_type = "Gemm"
        del node.input[:]
        node.input.extend([a, w_name, b_name])
        del node.attribute[:]
        g.touch()

    return run


class MatMulRule(Rule):
    """X @ W with W constant; the channel axis is the last one of X and of Y."""

    name = "matmul"
    op_types = ("MatMul",)

    def _w(self, s: Search, node: onnx.NodeProto) -> np.ndarray | str:
        w = const_input(s.g, node, 1, "weight")
        if w is None or isinstance(w, str):
            return w or f"{label(node)}: no weight"
        if w.ndim < 2:
            return f"{label(node)}: weight of rank {w.ndim}"
        return w

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        w = self._w(s, node)
        if isinstance(w, str):
            return w
        vec = _channels_only(aff, aff.rank - 1, w.shape[-1], node, "output columns")
        if isinstance(vec, str):
            return vec
        scale, shift = vec
        w_new = cast_like(algebra.matmul_output(w, scale), w, node)
        if isinstance(w_new, str):
            return w_new
        base = Plan.step("matmul-backward", node, rename_output(node))
        if not aff.has_shift:
            return base + Plan(actions=[set_const(node, 1, w_new)])
        options = [
            base
            + Plan(actions=[set_const(node, 1, w_new)])
            + s.settle_after(edge, aff.shift_only(), switch)
        ]
        bias = cast_like(shift, w, node)
        if s.g.rank(node.input[0]) == 2 and w.ndim == 2 and not isinstance(bias, str):
            options.append(base + Plan(cost=(0, 0, 1), actions=[_to_gemm(node, w_new, bias)]))
        options[0].reasons.append(f"{label(node)} has no bias for the shift")
        return best(options)

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        if index != 0:
            return f"{label(node)}: the map is on its weight input"
        w = self._w(s, node)
        if isinstance(w, str):
            return w
        vec = _channels_only(aff, aff.rank - 1, w.shape[-2], node, "input columns")
        if isinstance(vec, str):
            return vec
        scale, shift = vec
        w_new64, bias64 = algebra.matmul_input(w, scale, shift)
        w_new, bias = cast_like(w_new64, w, node), cast_like(bias64, w, node)
        if isinstance(w_new, str):
            return w_new
        if isinstance(bias, str):
            return bias
        if not aff.has_shift:
            return Plan.step("matmul-forward", node, set_const(node, 1, w_new))
        out = node.output[0]
        out_rank = s.g.rank(out)
        if out_rank is None:
            return f"{label(node)}: rank of '{out}' unknown"
        carry = Affine.make(
            np.ones(1), bias64.reshape((1,) * (out_rank - bias64.ndim) + bias64.shape)
        )
        options = [
            Plan.step("matmul-forward", node, set_const(node, 1, w_new), rename_output(node))
            + s.forward_value(out, carry, switch)
        ]
        if s.g.rank(node.input[0]) == 2 and w.ndim == 2:
            to_gemm = Plan.step("matmul-forward", node, _to_gemm(node, w_new, bias))
            to_gemm.cost = (0, 0, 2)  # prefer an existing bias Add to changing the op
            options.append(to_gemm)
        return best(options)


class ComposeRule(Rule):
    """BN -> BN: two maps in a row are one map."""

    name = "compose"
    op_types = ("Affine",)

    def _plan(self, s: Search, node: onnx.NodeProto, new: Affine, rename: bool) -> Plan:
        info = s.g.affine[node.name]
        root_info = s.g.affine[s.root.name]
        old = info.current_cost()
        delta = tuple(a - b for a, b in zip(new.cost(), old, strict=True))

        def run(g: Graph) -> None:
            target = g.affine[node.name]
            target.map = new
            target.origins = tuple(dict.fromkeys(target.origins + root_info.origins))
            target.original = None
            target.original_cost = None

        actions: list[Action] = [run] + ([rename_output(node)] if rename else [])
        plan = Plan.step("compose", node, *actions)
        plan.cost = (delta[0], delta[1], delta[2] + 1)
        plan.merged_into.append(node.name)
        return plan

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        return self._plan(s, node, s.g.affine[node.name].map.then(aff), rename=True)

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        return self._plan(s, node, aff.then(s.g.affine[node.name].map), rename=False)
