"""Materialise layer constants that an exporter computes in the graph.

torch's dynamo exporter (``optimize=False``) gives a bias-less Conv a zero
bias built as ``Expand(CastLike(0, activation), Shape(weight))``. That bias
is a constant, and the CastLike reads the activation only for its dtype, yet
it counts as a reader of the activation and would stop every fold through
it. Here such weight, bias and BN-statistic inputs are evaluated once (a
handful of shape/cast ops in numpy) and replaced by initializers; the nodes
that computed them are then dead and removed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.folding.graph import Graph
from bnfold.folding.nodes import attr

MAX_ELEMENTS = 1 << 24


def _dtype_of(g: Graph, name: str) -> np.dtype | None:
    value = g.const(name)
    if value is not None:
        return value.dtype
    elem = g.dtypes.get(name)
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else None


def evaluate(g: Graph, name: str, depth: int = 0) -> np.ndarray | None:
    """The value of ``name`` if it is computable from constants alone, else None."""
    value = g.const(name)
    if value is not None or depth > 16:
        return value
    node = g.producer(name)
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    if op == "CastLike":  # the second input contributes its dtype only
        x, like = evaluate(g, node.input[0], depth + 1), _dtype_of(g, node.input[1])
        return None if x is None or like is None else x.astype(like)
    if op == "Shape":
        shape = g.shape(node.input[0])
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        start, end = int(attr(node, "start", 0)), attr(node, "end", None)  # type: ignore[call-overload]
        dims = list(shape)[start : None if end is None else int(end)]  # type: ignore[call-overload]
        return np.array(dims, dtype=np.int64)
    args = [evaluate(g, i, depth + 1) if i else None for i in node.input]
    if any(a is None for a, i in zip(args, node.input, strict=True) if i):
        return None
    out = _apply(node, args)
    if out is not None and out.size > MAX_ELEMENTS:
        return None
    return out


def _apply(node: onnx.NodeProto, args: list[np.ndarray | None]) -> np.ndarray | None:
    op = node.op_type
    if op == "Identity":
        return args[0]
    if op == "Cast":
        return np.asarray(args[0]).astype(helper.tensor_dtype_to_np_dtype(int(attr(node, "to"))))  # type: ignore[call-overload]
    if op == "Expand":
        x, shape = np.asarray(args[0]), np.asarray(args[1]).astype(int)
        return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))).copy()
    if op == "ConstantOfShape":
        fill = attr(node, "value", None)
        base = (
            numpy_helper.to_array(fill)
            if isinstance(fill, onnx.TensorProto)
            else np.zeros(1, np.float32)
        )
        return np.full(
            tuple(np.asarray(args[0]).astype(int)), base.reshape(-1)[0], dtype=base.dtype
        )
    if op == "Reshape":
        return np.reshape(np.asarray(args[0]), tuple(np.asarray(args[1]).astype(int)))
    if op in ("Unsqueeze", "Squeeze") and len(args) > 1 and args[1] is not None:
        axes = tuple(int(a) for a in np.asarray(args[1]).reshape(-1))
        fn = np.expand_dims if op == "Unsqueeze" else np.squeeze
        return fn(np.asarray(args[0]), axes)
    if op == "Concat":
        return np.concatenate([np.asarray(a) for a in args], axis=int(attr(node, "axis", 0)))  # type: ignore[call-overload]
    return None


def materialize(g: Graph, weight_inputs: Mapping[str, tuple[int, ...]]) -> int:
    """Replace computed layer constants by initializers; return how many.

    ``weight_inputs``: by op type, the inputs that hold a layer's constants
    (``rules.REGISTRY.weight_inputs()``).
    """
    count = 0
    for node in list(g.nodes):
        for index in weight_inputs.get(node.op_type, ()):
            if index >= len(node.input) or not node.input[index]:
                continue
            name = node.input[index]
            if g.const(name) is not None:
                continue
            value = evaluate(g, name)
            if value is not None:
                g.set_input(node, index, g.add_const(name, value))
                count += 1
    if count:
        g.remove_dead()
    return count
