"""What a graph will cost once ONNX Runtime has loaded it, told before it does.

A graph's stored tensors are checked against the model-size limit where
they are read (``runtime.external_data_files``). Some tensors cost nothing
on disk and everything in memory, because ONNX Runtime makes them dense or
computes them at load (constant folding), before any request:

- a sparse initializer, or a ``Constant`` with ``sparse_value``, is stored
  as its few values and indices but made dense: ``prod(dims) * itemsize``;
- ``ConstantOfShape`` of a constant shape is a tensor of that shape;
- ``Expand`` and ``Tile`` of constants are their broadcast or tiled result,
  and each feeds the next (``Tile(Expand(ConstantOfShape(...)))``).

A 190-byte graph can declare gigabytes this way. :func:`declared_bytes`
adds these up over the graph and its subgraphs, as pure arithmetic on the
protobuf (nothing is allocated), and :func:`check` refuses a graph whose
total is over the limit, naming the largest tensor. Shapes that come from
the request (``Shape`` of an input) are not constants and are not counted:
they are bounded by the request's own size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

# A shape or repeats vector is a handful of int64s; anything longer is no
# shape this module needs to read (it is counted as stored data only).
MAX_SHAPE_VALUES = 64
COMPUTED = ("ConstantOfShape", "Expand", "Tile")


@dataclass
class _Known:
    """What is known of the constants in scope: shapes, and small int values."""

    dims: dict[str, tuple[list[int], int]] = field(default_factory=dict)  # name -> (dims, dtype)
    values: dict[str, list[int]] = field(default_factory=dict)  # name -> flat int values

    def copy(self) -> _Known:
        return _Known(dict(self.dims), dict(self.values))


@dataclass(frozen=True)
class Cost:
    """One tensor ONNX Runtime will hold: what makes it and how many bytes."""

    what: str
    dims: tuple[int, ...]
    nbytes: int


def _itemsize(data_type: int) -> int:
    if data_type == onnx.TensorProto.STRING:
        return 8  # one pointer an element, before the strings themselves
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:
        return 1


def _nbytes(dims: list[int], data_type: int) -> int:
    return math.prod(max(d, 0) for d in dims) * _itemsize(data_type)


def _small_ints(tensor: onnx.TensorProto) -> list[int] | None:
    """The values of a small integer tensor stored in the graph, else None."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    if tensor.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return None
    if math.prod(tensor.dims) > MAX_SHAPE_VALUES:
        return None
    try:
        return [int(v) for v in numpy_helper.to_array(tensor).ravel()]
    except Exception:
        return None


def _remember(known: _Known, name: str, tensor: onnx.TensorProto) -> None:
    known.dims[name] = (list(tensor.dims), tensor.data_type)
    values = _small_ints(tensor)
    if values is not None:
        known.values[name] = values


def _broadcast(a: list[int], b: list[int]) -> list[int] | None:
    rank = max(len(a), len(b))
    a, b = [1] * (rank - len(a)) + a, [1] * (rank - len(b)) + b
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            return None  # ONNX Runtime refuses it; nothing to count
        out.append(max(x, y))
    return out


def _computed(node: onnx.NodeProto, known: _Known) -> tuple[list[int], int] | None:
    """The dims and dtype of a ``COMPUTED`` node's output when its inputs are constants."""
    ins = list(node.input)
    if node.op_type == "ConstantOfShape" and ins and ins[0] in known.values:
        data_type: int = onnx.TensorProto.FLOAT
        for attr in node.attribute:
            if attr.name == "value":
                data_type = attr.t.data_type
        return known.values[ins[0]], data_type
    if len(ins) >= 2 and ins[0] in known.dims and ins[1] in known.values:
        dims, data_type = known.dims[ins[0]]
        if node.op_type == "Expand":
            out = _broadcast(dims, known.values[ins[1]])
            return (out, data_type) if out is not None else None
        if node.op_type == "Tile" and len(known.values[ins[1]]) == len(dims):
            return [d * r for d, r in zip(dims, known.values[ins[1]], strict=True)], data_type
    return None


def _costs(graph: onnx.GraphProto, known: _Known) -> Iterator[Cost]:
    for tensor in graph.initializer:
        _remember(known, tensor.name, tensor)
    for sparse in graph.sparse_initializer:
        dims, data_type = list(sparse.dims), sparse.values.data_type
        known.dims[sparse.values.name] = (dims, data_type)
        what = f"sparse initializer {sparse.values.name!r}"
        yield Cost(what, tuple(dims), _nbytes(dims, data_type))
    for node in graph.node:
        label = f"{node.op_type} {node.name or (node.output[0] if node.output else '?')!r}"
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    _remember(known, node.output[0], attr.t)
                elif attr.name == "sparse_value":
                    sparse = attr.sparse_tensor
                    dims, data_type = list(sparse.dims), sparse.values.data_type
                    known.dims[node.output[0]] = (dims, data_type)
                    yield Cost(f"{label} (sparse_value)", tuple(dims), _nbytes(dims, data_type))
                elif attr.name == "value_ints":
                    known.dims[node.output[0]] = ([len(attr.ints)], onnx.TensorProto.INT64)
                    if len(attr.ints) <= MAX_SHAPE_VALUES:
                        known.values[node.output[0]] = list(attr.ints)
        elif node.op_type in COMPUTED and node.output:
            made = _computed(node, known)
            if made is not None:
                dims, data_type = made
                known.dims[node.output[0]] = (dims, data_type)
                yield Cost(label, tuple(dims), _nbytes(dims, data_type))
        for attr in node.attribute:  # subgraphs see the constants of their scope
            subgraphs = [attr.g] if attr.HasField("g") else []
            for sub in [*subgraphs, *attr.graphs]:
                yield from _costs(sub, known.copy())


def stored_bytes(graph: onnx.GraphProto) -> int:
    """Dense initializers as declared (their shapes, whether stored here or external)."""
    total = sum(_nbytes(list(t.dims), t.data_type) for t in graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                total += _nbytes(list(attr.t.dims), attr.t.data_type)
            if attr.HasField("g"):
                total += stored_bytes(attr.g)
            total += sum(stored_bytes(g) for g in attr.graphs)
    return total


def computed_costs(model: onnx.ModelProto) -> list[Cost]:
    """Every tensor made dense or computed from constants at load, largest first."""
    return sorted(_costs(model.graph, _Known()), key=lambda c: -c.nbytes)


def declared_bytes(model: onnx.ModelProto) -> int:
    """Stored tensors plus what :func:`computed_costs` finds."""
    return stored_bytes(model.graph) + sum(c.nbytes for c in computed_costs(model))


def check(data: bytes | onnx.ModelProto, max_bytes: int) -> None:
    """Refuse (``ValueError``, the reason in the index) a graph whose tensors,
    once ONNX Runtime has made them dense and folded its constants, would
    take over ``max_bytes``."""
    model = data if isinstance(data, onnx.ModelProto) else _parse(data)
    costs = computed_costs(model)
    if not costs:
        return
    total = stored_bytes(model.graph) + sum(c.nbytes for c in costs)
    if total > max_bytes:
        top = costs[0]
        raise ValueError(
            f"the graph's constants take {total} bytes once made dense and folded, over the "
            f"{max_bytes}-byte limit: {top.what} is shape {list(top.dims)} ({top.nbytes} bytes); "
            "refused"
        )


def _parse(data: bytes) -> onnx.ModelProto:
    try:
        return onnx.ModelProto.FromString(data)
    except Exception as e:
        raise ValueError(f"not an ONNX model: {e}") from None
