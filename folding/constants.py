"""Evaluate the constant subgraphs of a graph before folding.

Exporters compute constants in the graph. torch's dynamo exporter
(``optimize=False``) gives a bias-less Conv a zero bias built as
``Expand(CastLike(0, activation), Shape(weight))``, and a Linear on a 3-D
input the weight ``Transpose(W)``. Such a value is a constant, yet the
folding rules read only initializers and Constant nodes: the layer's
weight would count as "not a constant", and the CastLike, which reads the
activation only for its dtype, as another reader of the activation that
stops every fold through it.

So every node whose inputs are all constants is evaluated once, in graph
order (chains fold front to back), and its outputs become initializers of
the same names (the same tensors: names keep their meaning). ``CastLike``
needs only its first input to be constant (the second gives the dtype) and
``Shape``/``Size`` only a static input shape. Common ops run in numpy; any
other op of the default domain runs on ONNX's reference evaluator at the
model's opset. Not evaluated: random ops, control flow, quantisation
(``QuantizeLinear``/``DequantizeLinear``: a quantised weight stays
quantised), nodes that fail to evaluate, outputs over ``MAX_ELEMENTS``, and
outputs that would grow the model (more than ``GROWTH_ELEMENTS`` elements
and more than the node's inputs together) unless they are a layer's weight
or bias. The fold report lists what was evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.folding.graph import Graph
from bnfold.folding.nodes import attr, attr_int, attr_ints, label

MAX_ELEMENTS = 1 << 24
GROWTH_ELEMENTS = 1 << 16

NOT_EVALUATED = frozenset(
    {
        "Constant",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",  # a mask output, and training_mode may be given
        "If",
        "Loop",
        "Scan",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
    }
)
DEFAULT_DOMAINS = ("", "ai.onnx")


def _dtype_of(g: Graph, name: str) -> np.dtype | None:
    value = g.const(name)
    if value is not None:
        return value.dtype
    elem = g.dtypes.get(name)
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else None


def _static_shape(g: Graph, name: str) -> tuple[int, ...] | None:
    shape = g.shape(name)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


def _inputs(g: Graph, node: onnx.NodeProto) -> list[np.ndarray | None] | None:
    """The node's input values (None for an absent optional input), or None if one is not known."""
    op = node.op_type
    if op == "CastLike":  # the second input contributes its dtype only
        x, like = g.const(node.input[0]), _dtype_of(g, node.input[1])
        return None if x is None or like is None else [x, np.zeros(0, like)]
    if op in ("Shape", "Size"):
        shape = _static_shape(g, node.input[0])
        # only the shape is read: a broadcast zero of that shape holds no data
        return None if shape is None else [np.broadcast_to(np.zeros((), np.uint8), shape)]
    args: list[np.ndarray | None] = []
    for name in node.input:
        value = g.const(name) if name else None
        if name and value is None:
            return None
        args.append(value)
    return args


def _numpy(node: onnx.NodeProto, args: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The output of the common shape and cast ops; None for an op left to the reference."""
    op = node.op_type
    if not args or args[0] is None:
        return None
    x: np.ndarray = args[0]
    if op == "Identity":
        return x
    if op == "Cast":
        to = helper.tensor_dtype_to_np_dtype(attr_int(node, "to", 1))
        return x.astype(to)
    if op == "CastLike":
        return x.astype(np.asarray(args[1]).dtype)
    if op == "Shape":
        shape = list(x.shape)
        start, end = attr_int(node, "start", 0), attr(node, "end", None)
        return np.array(shape[start : None if end is None else int(end)], dtype=np.int64)  # type: ignore[call-overload]
    if op == "Size":
        return np.array(x.size, dtype=np.int64)
    if op == "Transpose":
        perm = attr_ints(node, "perm") or None
        return np.transpose(x, perm)
    if op == "Reshape":
        dims = [int(d) for d in np.asarray(args[1]).reshape(-1)]
        if not attr_int(node, "allowzero", 0):  # 0 copies the input's dim
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return np.reshape(x, dims)
    if op == "Expand":
        target = tuple(int(d) for d in np.asarray(args[1]).reshape(-1))
        return np.broadcast_to(x, np.broadcast_shapes(x.shape, target)).copy()
    if op == "ConstantOfShape":
        fill = attr(node, "value", None)
        base = (
            numpy_helper.to_array(fill)
            if isinstance(fill, onnx.TensorProto)
            else np.zeros(1, np.float32)
        )
        return np.full(tuple(np.asarray(x).astype(int)), base.reshape(-1)[0], dtype=base.dtype)
    if op == "Concat":
        return np.concatenate([np.asarray(a) for a in args], axis=attr_int(node, "axis", 0))
    if op in ("Unsqueeze", "Squeeze") and len(args) > 1 and args[1] is not None:
        axes = tuple(int(a) for a in np.asarray(args[1]).reshape(-1))
        fn = np.expand_dims if op == "Unsqueeze" else np.squeeze
        return fn(np.asarray(x), axes)
    return None


def _reference(
    node: onnx.NodeProto, args: Sequence[np.ndarray | None], opsets: dict[str, int]
) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" for i in range(len(args))]
    single = helper.make_node(
        node.op_type,
        [n if a is not None else "" for n, a in zip(names, args, strict=True)],
        [f"out{i}" if o else "" for i, o in enumerate(node.output)],
        domain=node.domain,
    )
    single.attribute.extend(node.attribute)
    feeds = {n: a for n, a in zip(names, args, strict=True) if a is not None}
    try:
        outs = ReferenceEvaluator(single, opsets=opsets).run(None, feeds)
    except Exception:  # an op the reference does not know, or inputs it refuses
        return None
    return [np.asarray(o) for o in outs] if all(isinstance(o, np.ndarray) for o in outs) else None


def evaluate_node(
    g: Graph, node: onnx.NodeProto, opsets: dict[str, int]
) -> list[np.ndarray] | None:
    """The values of ``node``'s outputs if they follow from constants alone, else None."""
    if node.domain not in DEFAULT_DOMAINS or node.op_type in NOT_EVALUATED or not node.input:
        return None
    args = _inputs(g, node)
    if args is None:
        return None
    if (one := _numpy(node, args)) is not None:
        outs: list[np.ndarray] | None = [np.asarray(one)]
    else:
        outs = _reference(node, args, opsets)
    if outs is None or len(outs) != sum(1 for o in node.output if o):
        return None
    return outs


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    found = {o.domain: int(o.version) for o in model.opset_import}
    return {"": found.get("", found.get("ai.onnx", 17))}


def materialize(g: Graph, weight_inputs: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Replace the outputs of constant subgraphs by initializers; return the nodes evaluated.

    ``weight_inputs``: by op type, the inputs that hold a layer's constants
    (``rules.REGISTRY.weight_inputs()``); values read there may grow the model.
    """
    weights = {
        node.input[i]
        for node in g.nodes
        for i in weight_inputs.get(node.op_type, ())
        if i < len(node.input) and node.input[i]
    }
    opsets = _opsets(g.model)
    evaluated, done = [], set()
    for node in g.nodes:
        outs = node.output
        if any(o in g.pinned for o in outs):
            continue
        values = evaluate_node(g, node, opsets)
        if values is None:
            continue
        sizes = [v.size for v in values]
        in_size = sum(v.size for i in node.input if (v := g.const(i)) is not None)
        grows = any(n > max(GROWTH_ELEMENTS, in_size) for n in sizes)
        if max(sizes) > MAX_ELEMENTS or (grows and not all(o in weights for o in outs if o)):
            continue
        for name, value in zip([o for o in outs if o], values, strict=True):
            g.set_const(name, value)  # read as a constant from here on, so chains fold
        done.add(id(node))
        evaluated.append(label(node))
    if evaluated:  # removed at the end: the graph's indices are rebuilt once
        g.nodes = [n for n in g.nodes if id(n) not in done]
        g.touch()
        g.remove_dead()
    return evaluated
