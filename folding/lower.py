"""Turn the internal Affine nodes left after folding back into ONNX ops.

An unchanged BN is re-emitted exactly as it came (the BatchNormalization node
or its Mul/Add chain). A changed map becomes what computes it in the fewest
ops: nothing (identity), ``Mul`` (no shift), ``Add`` (no scale),
``BatchNormalization`` with mean 0, var 1, epsilon 0 (both, varying along
axis 1 only), else ``Mul`` then ``Add`` (both, on another axis such as a
channel-last tensor's, or constant over the whole tensor).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper

from bnfold.folding.graph import AffineInfo, Graph
from bnfold.folding.report import BNOutcome


def _compact(a: np.ndarray) -> np.ndarray:
    """Drop leading unit dims: (1, C, 1, 1) -> (C, 1, 1), as exporters write it."""
    k = 0
    while k < a.ndim and a.shape[k] == 1:
        k += 1
    return a.reshape(a.shape[k:])


def lower(g: Graph, records: dict[str, BNOutcome]) -> int:
    """Replace every Affine node; return the number of ops they left."""
    total = 0
    for node in g.affine_nodes():
        info = g.affine.pop(node.name)
        made = _restore(g, node, info) if info.original is not None else _emit(g, node, info)
        total += len(made)
        for origin in info.origins:
            rec = records.get(origin)
            if rec is not None:
                rec.residual += [f"{n.op_type} '{n.name}'" for n in made]
                if made:
                    rec.reasons += info.reasons
    return total


def _restore(g: Graph, node: onnx.NodeProto, info: AffineInfo) -> list[onnx.NodeProto]:
    assert info.original is not None and info.original_input is not None
    old_x = info.original_input
    nodes = [copy.deepcopy(n) for n in info.original]
    for i, name in enumerate(nodes[0].input):
        if name == old_x:
            nodes[0].input[i] = node.input[0]
    nodes[-1].output[0] = node.output[0]
    for n in nodes:
        g.insert_before(n, node)
    g.remove(node)
    return nodes


def _emit(g: Graph, node: onnx.NodeProto, info: AffineInfo) -> list[onnx.NodeProto]:
    aff, dtype = info.map, info.dtype
    x, y, base = node.input[0], node.output[0], node.name
    if aff.is_identity:
        g.bypass(node)
        return []
    g.remove(node)  # its name passes to the op(s) that replace it

    def const(tag: str, value: np.ndarray) -> str:
        return g.add_const(f"{base}_{tag}", value.astype(dtype))

    def add(op: str, inputs: list[str], out: str, name: str, **attrs: float) -> None:
        node = helper.make_node(op, inputs, [out], name=g.node_name(name))
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        made.append(node)
        g.nodes.append(made[-1])  # to_model() sorts

    made: list[onnx.NodeProto] = []
    channels = _channels(g, x, info)
    if aff.has_scale and aff.has_shift and channels is not None:
        vec = aff.vectors(1, channels)
        assert vec is not None
        params = [const("scale", vec[0]), const("bias", vec[1])]
        params += [const("mean", np.zeros(channels)), const("var", np.ones(channels))]
        add("BatchNormalization", [x, *params], y, base, epsilon=0.0)
    elif aff.has_scale and aff.has_shift:
        mid = g.fresh(base + "_scaled")
        add("Mul", [x, const("scale", _compact(aff.s))], mid, base + "_mul")
        add("Add", [mid, const("shift", _compact(aff.t))], y, base + "_add")
    elif aff.has_scale:
        add("Mul", [x, const("scale", _compact(aff.s))], y, base)
    else:
        add("Add", [x, const("shift", _compact(aff.t))], y, base)
    g.touch()
    return made


def _channels(g: Graph, x: str, info: AffineInfo) -> int | None:
    """C if the map is per channel on axis 1 (so one BatchNormalization computes it)."""
    aff = info.map
    if aff.rank < 2 or aff.varying_axes() != {1}:
        return None
    return max(aff.s.shape[1], aff.t.shape[1])
