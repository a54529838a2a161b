"""What a folding rule is, and the small graph edits rules share.

A rule serves one family of op types and answers two questions about a node
of that family, each as pattern, check, rewrite:

- ``backward(search, node, edge, aff, switch)``: the map ``aff`` is applied
  to the node's output (sitting on ``edge``); can the node absorb it or let
  it through to its inputs?
- ``forward(search, node, index, aff, switch)``: the map is applied to input
  ``index``; can the node absorb it or let it through to its output?

Each returns a :class:`~converter.folding.plan.Plan` (its actions are run
later, only if the planner picks it) or a refusal: a string saying why. A
refusal is an expected outcome, never an exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from bnfold.converter.folding import algebra
from bnfold.converter.folding.affine import Affine

if TYPE_CHECKING:
    from bnfold.converter.folding.graph import Graph
    from bnfold.converter.folding.plan import Action, Edge, Plan, Search


class Rule:
    name = "rule"
    op_types: tuple[str, ...] = ()

    def backward(
        self, s: Search, node: onnx.NodeProto, edge: Edge, aff: Affine, switch: bool
    ) -> Plan | str:
        return f"{node.op_type} '{node.name}' cannot take a map from its output"

    def forward(
        self, s: Search, node: onnx.NodeProto, index: int, aff: Affine, switch: bool
    ) -> Plan | str:
        return f"{node.op_type} '{node.name}' cannot take a map on its input"


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    return int(attr(node, name, default))  # type: ignore[call-overload]


def attr_float(node: onnx.NodeProto, name: str, default: float) -> float:
    return float(attr(node, name, default))  # type: ignore[arg-type]


def attr_ints(node: onnx.NodeProto, name: str) -> list[int]:
    value = attr(node, name, [])
    return [int(v) for v in value] if isinstance(value, list | tuple) else []


def attr_str(node: onnx.NodeProto, name: str, default: str) -> str:
    value = attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name}'"


def const_input(g: Graph, node: onnx.NodeProto, index: int, role: str) -> np.ndarray | str | None:
    """Constant input ``index``; None if absent; a refusal if it is not constant."""
    if len(node.input) <= index or not node.input[index]:
        return None
    value = g.const(node.input[index])
    if value is None:
        return f"{label(node)}: {role} '{node.input[index]}' is not a constant"
    return value


def cast_like(value: np.ndarray, like: np.ndarray, node: onnx.NodeProto) -> np.ndarray | str:
    out = algebra.cast_exact_dtype(value, like.dtype)
    if out is None:
        return f"{label(node)}: folded values overflow {like.dtype}"
    return out


def extra_outputs_used(g: Graph, node: onnx.NodeProto) -> str | None:
    for out in node.output[1:]:
        if out and (g.consumers(out) or out in g.pinned):
            return f"{label(node)}: its output '{out}' is used"
    return None


def set_const(node: onnx.NodeProto, index: int, value: np.ndarray) -> Action:
    """Action: point input ``index`` at a new initializer holding ``value``."""

    def run(g: Graph) -> None:
        base = node.input[index] if len(node.input) > index and node.input[index] else node.name
        g.set_input(node, index, g.add_const(base, value))

    return run


def set_attr(node: onnx.NodeProto, name: str, value: object) -> Action:
    return lambda g: g.set_attr(node, name, value)


def rename_output(node: onnx.NodeProto) -> Action:
    """Action: the node's output changes meaning, so it gets a fresh name."""

    def run(g: Graph) -> None:
        g.rename_output(node, 0)

    return run


def padded(node: onnx.NodeProto, kernel: tuple[int, ...]) -> bool:
    """Whether a Conv/pool node adds zero padding anywhere."""
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return any(k > 1 for k in kernel)  # may pad, depending on the input size
    return any(p != 0 for p in attr_ints(node, "pads"))


def to_rank(v: np.ndarray, rank: int) -> np.ndarray:
    """Left-pad ``v`` with unit dims to ``rank``."""
    return v.reshape((1,) * (rank - v.ndim) + v.shape)


def trim_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Drop leading unit dims of ``value`` down to ``like``'s rank where possible."""
    while value.ndim > like.ndim and value.shape[0] == 1:
        value = value[0]
    return value
