"""Questions rules ask about one node: attributes, constant inputs, padding, extra outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from bnfold.folding.refusal import Refusal

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph


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


def const_input(
    g: Graph, node: onnx.NodeProto, index: int, role: str
) -> np.ndarray | Refusal | None:
    """Constant input ``index``; None if absent; a refusal if it is not constant."""
    if len(node.input) <= index or not node.input[index]:
        return None
    value = g.const(node.input[index])
    if value is None:
        return Refusal(f"{label(node)}: {role} '{node.input[index]}' is not a constant")
    return value


def extra_outputs_used(g: Graph, node: onnx.NodeProto) -> Refusal | None:
    """A refusal if any output but the first is read (a Dropout mask, a MaxPool's indices)."""
    for out in node.output[1:]:
        if out and (g.consumers(out) or out in g.pinned):
            return Refusal(f"{label(node)}: its output '{out}' is used")
    return None


def padded(node: onnx.NodeProto, kernel: tuple[int, ...]) -> bool:
    """Whether a Conv/pool node adds zero padding anywhere."""
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return any(k > 1 for k in kernel)  # may pad, depending on the input size
    return any(p != 0 for p in attr_ints(node, "pads"))
