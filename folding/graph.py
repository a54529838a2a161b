"""A small mutable view of an ONNX graph for the folding rules.

Nodes stay ``onnx.NodeProto`` objects (rules hold references to them);
constants are read as numpy arrays from initializers or Constant nodes;
static shapes and dtypes come from ONNX shape inference. New constants are
always new initializers: an initializer shared with another node is never
changed in place, and orphaned ones are dropped when the model is rebuilt.

Invariant kept by every rewrite: a value name means the same tensor in the
input and the output model. A value whose contents change gets a fresh name
(:meth:`Graph.rename_output`), which is what lets ``verify`` compare
intermediate tensors by name.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import helper, numpy_helper

from bnfold.folding.affine import Affine, Shape
from bnfold.folding.cost import Cost
from bnfold.folding.refusal import Refusal

AFFINE_DOMAIN = "ai.bnfold"
FLOAT_TYPES: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
}


@dataclass
class AffineInfo:
    """Book-keeping for one internal Affine node."""

    map: Affine
    dtype: np.dtype
    origins: tuple[str, ...]  # names of the BNs this map came from
    original: list[onnx.NodeProto] | None  # re-emitted verbatim while unmodified
    original_cost: Cost | None
    original_input: str | None = None  # the input name the original nodes read
    reasons: list[str] = field(default_factory=list)

    def current_cost(self) -> Cost:
        if self.original is not None and self.original_cost is not None:
            return self.original_cost
        return self.map.cost()


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            for n in g.node:
                names.update(n.input)
                names |= _subgraph_names(n)
    return names


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats"):
            return np.array(helper.get_attribute_value(a), dtype=np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.array(helper.get_attribute_value(a), dtype=np.int64)
    return None


# Initializers larger than this reach shape inference as typed graph inputs
# (their shapes, not their bytes): data propagation only reads small integer
# tensors, and serialising a model's weights for it cost most of a fold.
SHAPE_ONLY_ELEMENTS = 4096


def _copy_without(msg: Message, skip: set[str]) -> Message:
    """A copy of a protobuf message without the fields named in ``skip``."""
    out = type(msg)()
    for fd, value in msg.ListFields():
        if fd.name in skip:
            continue
        field = getattr(out, fd.name)
        if hasattr(value, "extend"):  # repeated
            field.extend(value)
        elif hasattr(value, "CopyFrom"):
            field.CopyFrom(value)
        else:
            setattr(out, fd.name, value)
    return out


def _skeleton(model: onnx.ModelProto, skip: set[str]) -> onnx.ModelProto:
    """The model with a graph that lacks the fields in ``skip`` (no deep copy of the rest)."""
    out = _copy_without(model, {"graph"})
    assert isinstance(out, onnx.ModelProto)
    out.graph.CopyFrom(_copy_without(model.graph, skip))
    return out


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference with data propagation; the model itself if it fails.

    Large initializers are given to it by type and shape only.
    """
    light = _skeleton(model, {"initializer"})
    inputs = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if int(np.prod(t.dims)) <= SHAPE_ONLY_ELEMENTS:
            light.graph.initializer.append(t)
        elif t.name not in inputs:
            light.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    try:
        return onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # custom ops or >2 GB: fall back to what the model states
        return model


class Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model  # not mutated; rebuilt by to_model()
        g = model.graph
        self.nodes: list[onnx.NodeProto] = [copy.deepcopy(n) for n in g.node]
        self._name_nodes()
        graph_inputs = {i.name for i in g.input}
        self.inits: dict[str, onnx.TensorProto] = {
            t.name: t for t in g.initializer if t.name not in graph_inputs
        }
        self.new_consts: dict[str, np.ndarray] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self.inputs = graph_inputs
        self.outputs = [o.name for o in g.output]
        self.pinned = set(self.outputs)
        for n in self.nodes:
            self.pinned |= _subgraph_names(n)
        self.shapes: dict[str, Shape | None] = {}
        self.dtypes: dict[str, int] = {}
        inferred = infer_shapes(model).graph
        for vi in (*inferred.input, *inferred.value_info, *inferred.output):
            self._record(vi)
        for t in g.initializer:
            self.shapes[t.name] = tuple(int(d) for d in t.dims)
            self.dtypes[t.name] = t.data_type
        self.affine: dict[str, AffineInfo] = {}  # by Affine node name
        self._counter = 0
        self._index_dirty = True
        self._producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        self._dead_at_load = {id(n) for n in self._dead()}

    def _record(self, vi: onnx.ValueInfoProto) -> None:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            return
        self.dtypes[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            dims: list[int | str | None] = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param"):
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            self.shapes[vi.name] = tuple(dims)

    def _name_nodes(self) -> None:
        seen: set[str] = set()
        for i, n in enumerate(self.nodes):
            if not n.name or n.name in seen:
                n.name = f"{n.op_type}_{i}" if f"{n.op_type}_{i}" not in seen else f"node_{i}"
            seen.add(n.name)

    # ---- indices -----------------------------------------------------------------
    def _index(self) -> None:
        if not self._index_dirty:
            return
        self._producer = {}
        self._consumers = defaultdict(list)
        for n in self.nodes:
            for o in n.output:
                if o:
                    self._producer[o] = n
            for i, name in enumerate(n.input):
                if name:
                    self._consumers[name].append((n, i))
        self._index_dirty = False

    def touch(self) -> None:
        self._index_dirty = True

    def producer(self, name: str) -> onnx.NodeProto | None:
        self._index()
        return self._producer.get(name)

    def consumers(self, name: str) -> list[tuple[onnx.NodeProto, int]]:
        self._index()
        return list(self._consumers.get(name, []))

    def exclusive(self, name: str, consumer: onnx.NodeProto) -> Refusal | None:
        """None if ``name`` feeds ``consumer`` only (once); else why not."""
        if name in self.pinned:
            return Refusal(f"'{name}' is a graph output")
        uses = self.consumers(name)
        if len(uses) != 1 or uses[0][0] is not consumer:
            return Refusal(f"'{name}' feeds {len(uses)} inputs")
        return None

    # ---- values ------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """The constant value of ``name``, or None if it is not a constant."""
        if not name or name in self.inputs:
            return None
        if name in self.new_consts:
            return self.new_consts[name]
        if name in self._arrays:
            return self._arrays[name]
        arr: np.ndarray | None = None
        if name in self.inits:
            arr = numpy_helper.to_array(self.inits[name])
        else:
            p = self.producer(name)
            if p is not None and p.op_type == "Constant" and p.domain in ("", "ai.onnx"):
                arr = _constant_node_value(p)
        if arr is not None:
            self._arrays[name] = arr
        return arr

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def np_dtype(self, name: str) -> np.dtype | None:
        return FLOAT_TYPES.get(self.dtypes.get(name, 0))

    def fresh(self, base: str) -> str:
        self._counter += 1
        return f"{base}__bnfold{self._counter}"

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.new_consts[name] = value
        self.shapes[name] = tuple(int(d) for d in value.shape)
        return name

    def set_const(self, name: str, value: np.ndarray) -> None:
        """Make ``name`` (a value no node produces any more) an initializer holding ``value``."""
        self.new_consts[name] = value
        self._arrays.pop(name, None)
        self.shapes[name] = tuple(int(d) for d in value.shape)
        self.dtypes[name] = helper.np_dtype_to_tensor_dtype(value.dtype)

    # ---- edits -------------------------------------------------------------------
    def set_input(self, node: onnx.NodeProto, index: int, name: str) -> None:
        while len(node.input) <= index:
            node.input.append("")
        node.input[index] = name
        self.touch()

    def set_attr(self, node: onnx.NodeProto, name: str, value: object) -> None:
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute(name, value))

    def rename_output(self, node: onnx.NodeProto, index: int = 0) -> str:
        """Give output ``index`` of ``node`` a fresh name (its contents changed)."""
        old = node.output[index]
        new = self.fresh(old)
        self._rename(old, new)
        return new

    def _rename(self, old: str, new: str) -> None:
        self._index()
        producer = self._producer.get(old)
        if producer is not None:
            producer.output[list(producer.output).index(old)] = new
        for consumer, i in self._consumers.get(old, []):
            consumer.input[i] = new
        if old in self.shapes:
            self.shapes[new] = self.shapes[old]
        if old in self.dtypes:
            self.dtypes[new] = self.dtypes[old]
        self.touch()

    def insert_before(self, new: onnx.NodeProto, anchor: onnx.NodeProto) -> None:
        self.nodes.insert(self.nodes.index(anchor), new)
        self.touch()

    def remove(self, node: onnx.NodeProto) -> None:
        self.nodes.remove(node)
        self.touch()

    def bypass(self, node: onnx.NodeProto, keep_output: bool = True) -> None:
        """Remove a one-in one-out node whose output now equals its input.

        ``keep_output``: the input now carries what the output meant, so it
        takes the output's name; otherwise the output's readers read the input.
        """
        x, y = node.input[0], node.output[0]
        self.remove(node)
        producer = self.producer(x)
        renamable = (
            producer is not None
            and x not in self.pinned
            and not self.consumers(x)
            and producer.op_type != "Constant"
        )
        if renamable and (keep_output or y in self.pinned):
            assert producer is not None
            producer.output[list(producer.output).index(x)] = y
        elif y not in self.pinned:
            for consumer, i in self.consumers(y):
                consumer.input[i] = x
        else:  # graph input straight to graph output: keep the name with an Identity
            self.nodes.append(
                helper.make_node("Identity", [x], [y], name=self.node_name("identity"))
            )
        self.touch()

    def node_name(self, base: str) -> str:
        """A node name not used yet: ``base``, else ``base_2``, ``base_3``..."""
        taken = {n.name for n in self.nodes}
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name

    def _dead(self) -> list[onnx.NodeProto]:
        used = set(self.pinned)
        for n in self.nodes:
            used.update(n.input)
        return [n for n in self.nodes if not any(o and o in used for o in n.output)]

    def remove_dead(self) -> None:
        """Drop nodes whose outputs nobody reads any more (not those dead from the start)."""
        while dead := [n for n in self._dead() if id(n) not in self._dead_at_load]:
            for n in dead:
                self.nodes.remove(n)
        self.touch()

    def affine_nodes(self) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.domain == AFFINE_DOMAIN]

    # ---- output ------------------------------------------------------------------
    def to_model(self) -> onnx.ModelProto:
        if self.affine_nodes():
            raise AssertionError("internal Affine nodes left in the graph")
        self.remove_dead()
        nodes = self._toposort()
        used: set[str] = set(self.outputs)
        for n in nodes:
            used.update(n.input)
            used |= _subgraph_names(n)
        model = _skeleton(self.model, {"node", "initializer", "value_info"})
        g = model.graph
        g.node.extend(nodes)
        graph_inputs = {i.name for i in self.model.graph.input}
        kept = [t for t in self.model.graph.initializer if t.name in used or t.name in graph_inputs]
        g.initializer.extend(kept)
        for name, arr in self.new_consts.items():
            if name in used:
                g.initializer.append(numpy_helper.from_array(arr, name))
        present = {o for n in nodes for o in n.output}
        g.value_info.extend(vi for vi in self.model.graph.value_info if vi.name in present)
        return model

    def _toposort(self) -> list[onnx.NodeProto]:
        """Keep the list order, pulling a node's producers in front of it when needed."""
        produced = {o: n for n in self.nodes for o in n.output if o}
        out: list[onnx.NodeProto] = []
        state: dict[int, int] = {}  # 1 visiting, 2 done

        def visit(n: onnx.NodeProto) -> None:
            stack = [(n, False)]
            while stack:
                node, expanded = stack.pop()
                if state.get(id(node)) == 2:
                    continue
                if expanded:
                    state[id(node)] = 2
                    out.append(node)
                    continue
                if state.get(id(node)) == 1:
                    raise AssertionError("graph has a cycle after folding")
                state[id(node)] = 1
                stack.append((node, True))
                names = list(node.input) + sorted(_subgraph_names(node))
                for name in reversed(names):
                    dep = produced.get(name)
                    if dep is not None and dep is not node and state.get(id(dep)) != 2:
                        stack.append((dep, False))

        for n in self.nodes:
            visit(n)
        return out
