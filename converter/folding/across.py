"""Rules that let a map through a node, whole or in part.

For an op f and a map a, moving a across f uses an identity f(a(x)) = a'(f(x)):

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
- Add/Sub of two branches (backward): s (a + b) + t = (s a + t) + (s b)
- Add/Sub of a constant:              the constant absorbs the shift
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.converter.folding.affine import Affine, Shape, concat_extend
from bnfold.converter.folding.plan import Plan, best
from bnfold.converter.folding.rule import (
    Rule,
    attr_int,
    attr_ints,
    cast_like,
    extra_outputs_used,
    label,
    padded,
    rename_output,
    set_const,
    to_rank,
    trim_like,
)

if TYPE_CHECKING:
    from bnfold.converter.folding.plan import Edge, Search


def through_backward(
    s: Search,
    node: onnx.NodeProto,
    edge: Edge,
    inputs: list[tuple[int, Affine]],
    left: Affine | None,
    switch: bool,
    rule: str,
) -> Plan:
    """Send ``inputs`` maps up the node's inputs, keep ``left`` after it."""
    plan = Plan.step(rule, node, rename_output(node))
    for index, aff_in in inputs:
        if not aff_in.is_identity:
            plan = plan + s.backward((node, index), aff_in, switch)
    if left is not None:
        plan = plan + s.settle_after(edge, left, switch)
    return plan


def through_forward(
    s: Search,
    node: onnx.NodeProto,
    index: int,
    out: Affine,
    left: Affine | None,
    switch: bool,
    rule: str,
) -> Plan:
    """Send ``out`` past the node to its consumers, keep ``left`` on its input."""
    plan = Plan.step(rule, node, rename_output(node))
    plan = plan + s.forward_value(node.output[0], out, switch)
    if left is not None:
        plan = plan + s.settle_before(node, index, left, switch)
    return plan


class IdentityRule(Rule):
    name = "identity"
    op_types = ("Identity", "Dropout")

    def _check(self, s: Search, node: onnx.NodeProto) -> str | None:
        if (why := extra_outputs_used(s.g, node)) is not None:
            return why
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = s.g.const(node.input[2])
            if mode is None or bool(mode):
                return f"{label(node)} may run in training mode"
        return None

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        why = self._check(s, node)
        rule = "across-" + node.op_type.lower()
        return why or through_backward(s, node, edge, [(0, aff)], None, switch, rule)

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        why = self._check(s, node)
        rule = "across-" + node.op_type.lower()
        return why or through_forward(s, node, index, aff, None, switch, rule)


class TransposeRule(Rule):
    name = "transpose"
    op_types = ("Transpose",)

    def _perm(self, node: onnx.NodeProto, rank: int) -> list[int]:
        return attr_ints(node, "perm") or list(reversed(range(rank)))

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        inverse = list(np.argsort(self._perm(node, aff.rank)))
        aff_in = aff.transpose(inverse)
        return through_backward(s, node, edge, [(0, aff_in)], None, switch, "across-transpose")

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        out = aff.transpose(self._perm(node, aff.rank))
        return through_forward(s, node, index, out, None, switch, "across-transpose")


class ReshapeRule(Rule):
    name = "reshape"
    op_types = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")

    def _shapes(self, s: Search, node: onnx.NodeProto) -> tuple[Shape, Shape] | str:
        src, dst = s.g.shape(node.input[0]), s.g.shape(node.output[0])
        if src is None or dst is None:
            return f"{label(node)}: static shapes unknown"
        return src, dst

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        shapes = self._shapes(s, node)
        if isinstance(shapes, str):
            return shapes
        aff_in = aff.reshape(shapes[1], shapes[0])
        if isinstance(aff_in, str):
            return f"{label(node)}: {aff_in}"
        return through_backward(s, node, edge, [(0, aff_in)], None, switch, "across-reshape")

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        if index != 0:
            return f"{label(node)}: the map is on its shape input"
        shapes = self._shapes(s, node)
        if isinstance(shapes, str):
            return shapes
        out = aff.reshape(shapes[0], shapes[1])
        if isinstance(out, str):
            return f"{label(node)}: {out}"
        return through_forward(s, node, index, out, None, switch, "across-reshape")


class PoolRule(Rule):
    name = "pool"
    op_types = ("AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool")

    def _check(self, s: Search, node: onnx.NodeProto, aff: Affine) -> str | None:
        if (why := extra_outputs_used(s.g, node)) is not None:
            return why
        if not aff.varying_axes() <= {1}:
            return f"{label(node)}: the map varies along the pooled axes"
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

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        if (why := self._check(s, node, aff)) is not None:
            return why
        rule = "across-" + node.op_type.lower()
        if self._counts_padding(node):
            plan = through_backward(
                s, node, edge, [(0, aff.scale_only())], aff.shift_only(), switch, rule
            )
            plan.reasons.append(f"{label(node)} averages zero padding: the shift stays")
            return plan
        if "Max" in node.op_type and not aff.positive:
            sign, rest = aff.sign_split()  # aff = sign after rest; rest passes
            plan = through_backward(s, node, edge, [(0, rest)], sign, switch, rule)
            plan.reasons.append(self._negative(node, aff))
            return plan
        return through_backward(s, node, edge, [(0, aff)], None, switch, rule)

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        if (why := self._check(s, node, aff)) is not None:
            return why
        rule = "across-" + node.op_type.lower()
        if self._counts_padding(node):
            if not np.all(aff.s != 0):
                return f"{label(node)} averages zero padding and the map has a zero scale"
            pre = Affine.make(np.ones_like(aff.s), aff.t / aff.s)  # avg(s (x + t/s)) = s avg(...)
            plan = through_forward(s, node, index, aff.scale_only(), pre, switch, rule)
            plan.reasons.append(f"{label(node)} averages zero padding: the shift stays")
            return plan
        if "Max" in node.op_type and not aff.positive:
            sign = Affine.make(np.where(aff.s < 0, -1.0, 1.0), np.zeros_like(aff.s))
            rest = Affine.make(np.abs(aff.s), aff.t)  # aff = rest after sign
            plan = through_forward(s, node, index, rest, sign, switch, rule)
            plan.reasons.append(self._negative(node, aff))
            return plan
        return through_forward(s, node, index, aff, None, switch, rule)


class ActivationRule(Rule):
    """Positively homogeneous activations: f(s x) = s f(x) for s > 0."""

    name = "activation"
    op_types = ("Relu", "LeakyRelu", "PRelu")

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        rule = "across-" + node.op_type.lower()
        sign, rest = aff.sign_split()
        left = Affine.make(sign.s, aff.t)  # s relu(z) + t = sign relu(|s| z) + t
        plan = through_backward(s, node, edge, [(0, rest.scale_only())], left, switch, rule)
        if aff.has_shift:
            plan.reasons.append(f"the shift does not pass {label(node)}")
        if not aff.positive:
            plan.reasons.append(
                f"{label(node)}: {aff.n_negative()} channel(s) have a negative scale; "
                "only |scale| passes"
            )
        return plan

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        if index != 0:
            return f"{label(node)}: the map is on its slope input"
        if not bool(np.all(aff.s > 0)):
            return (
                f"{label(node)}: {int(np.sum(aff.s <= 0))} channel(s) have a scale <= 0; "
                "only a positive scale passes"
            )
        left = Affine.make(np.ones_like(aff.s), aff.t / aff.s)  # relu(s x + t) = s relu(x + t/s)
        rule = "across-" + node.op_type.lower()
        plan = through_forward(s, node, index, aff.scale_only(), left, switch, rule)
        if aff.has_shift:
            plan.reasons.append(f"the shift does not pass {label(node)}")
        return plan


class ConcatRule(Rule):
    name = "concat"
    op_types = ("Concat",)

    def _sizes(self, s: Search, node: onnx.NodeProto, rank: int) -> tuple[int, list[int]] | str:
        axis = attr_int(node, "axis", 0) % rank
        sizes = []
        for name in node.input:
            shape = s.g.shape(name)
            if shape is None or not isinstance(shape[axis], int):
                return f"{label(node)}: size of '{name}' along axis {axis} unknown"
            sizes.append(int(shape[axis]))  # type: ignore[arg-type]
        return axis, sizes

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        found = self._sizes(s, node, aff.rank)
        if isinstance(found, str):
            return found
        axis, sizes = found
        offsets = np.cumsum([0, *sizes])
        parts = [
            (i, aff.take(axis, int(offsets[i]), int(offsets[i + 1]))) for i in range(len(sizes))
        ]
        return through_backward(s, node, edge, parts, None, switch, "across-concat")

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        if list(node.input).count(node.input[index]) > 1:
            return f"{label(node)} reads the same tensor twice"
        found = self._sizes(s, node, aff.rank)
        if isinstance(found, str):
            return found
        axis, sizes = found
        out = concat_extend(aff, axis, sizes, index)
        return through_forward(s, node, index, out, None, switch, "across-concat")


class AddRule(Rule):
    """Add/Sub: a constant operand absorbs the shift; two branches share the map."""

    name = "add"
    op_types = ("Add", "Sub")

    def _const(self, s: Search, node: onnx.NodeProto) -> tuple[int, np.ndarray] | None:
        for i in (0, 1):
            c = s.g.const(node.input[i])
            if c is not None and c.dtype.kind == "f":
                return i, c
        return None

    def _same_shapes(self, s: Search, node: onnx.NodeProto) -> str | None:
        out = s.g.shape(node.output[0])
        for name in node.input:
            if out is None or s.g.shape(name) != out:
                return f"{label(node)} broadcasts its inputs"
        return None

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        const = self._const(s, node)
        if const is not None:
            ci, c = const
            c64 = to_rank(c.astype(np.float64), aff.rank)
            # Add: s(u+c)+t = su + (sc+t); Sub(u,c): s(u-c)+t = su - (sc-t);
            # Sub(c,u): s(c-u)+t = (sc+t) - su.
            sign = -1.0 if (node.op_type == "Sub" and ci == 1) else 1.0
            c_new = cast_like(trim_like(aff.s * c64 + sign * aff.t, c), c, node)
            if isinstance(c_new, str):
                return c_new
            plan = through_backward(
                s, node, edge, [(1 - ci, aff.scale_only())], None, switch, "bias-add-backward"
            )
            return Plan(actions=[set_const(node, ci, c_new)]) + plan
        if (why := self._same_shapes(s, node)) is not None:
            return why
        minus = -1.0 if node.op_type == "Sub" else 1.0
        shift_b = Affine.make(aff.s, minus * aff.t)
        options = [
            through_backward(
                s, node, edge, [(0, aff), (1, aff.scale_only())], None, switch, "across-add"
            ),
            through_backward(
                s, node, edge, [(0, aff.scale_only()), (1, shift_b)], None, switch, "across-add"
            ),
        ]
        return best(options)

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        const = self._const(s, node)
        if const is not None and const[0] != index:
            ci, c = const
            # Add: (su+t)+c = su + (c+t); Sub(u,c): (su+t)-c = su - (c-t);
            # Sub(c,u): c-(su+t) = (c-t) - su.
            sign = -1.0 if node.op_type == "Sub" else 1.0
            c64 = to_rank(c.astype(np.float64), aff.rank)
            c_new = cast_like(trim_like(c64 + sign * aff.t, c), c, node)
            if isinstance(c_new, str):
                return c_new
            plan = Plan.step("bias-add-forward", node, set_const(node, ci, c_new))
            return plan + s.settle_before(node, index, aff.scale_only(), switch)
        if const is not None:
            return f"{label(node)}: the map is on its constant input"
        if (why := self._same_shapes(s, node)) is not None:
            return why
        # (s a + t) + b = (s a + b) + t: the shift passes, the scale stays.
        out = aff.shift_only()
        if node.op_type == "Sub" and index == 1:
            out = Affine.make(np.ones(1), -aff.t)
        return through_forward(
            s, node, index, out, aff.scale_only() if aff.has_scale else None, switch, "across-add"
        )
