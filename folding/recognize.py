"""Find the BNs in a graph, in either of the forms exporters emit.

1. A ``BatchNormalization`` node in inference mode with constant parameters:
   (s, t) = (gamma / sqrt(var + eps), beta - mean * s) along axis 1.
2. A chain of ``Mul``/``Add``/``Sub``/``Div`` by constants, each intermediate
   feeding only the next (tf2onnx's ``x * scale + offset``, possibly NHWC):
   composed into one (s, t). It counts as a BN when some Mul/Div constant and
   some Add/Sub constant are per-channel vectors along the same single axis;
   a bias Add or a scalar Mul alone is not a BN.

Each BN found becomes one internal Affine node; one that cannot be read as an
affine map (training mode, non-constant statistics, var + eps <= 0) stays as
it is, and the reason goes into the fold report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from bnfold.folding import algebra, cost
from bnfold.folding.affine import Affine
from bnfold.folding.cost import Cost
from bnfold.folding.graph import AFFINE_DOMAIN, AffineInfo, Graph
from bnfold.folding.nodes import attr
from bnfold.folding.refusal import Refusal

_ELEMENTWISE = ("Mul", "Add", "Sub", "Div")
BN_PARAMETERS = (1, 2, 3, 4)  # scale, bias, mean, var: the inputs that must be constants


@dataclass
class Refused:
    """A BN node that stays as it is, and why."""

    name: str
    kind: str
    reason: str


def bn_node_affine(g: Graph, node: onnx.NodeProto) -> Affine | Refusal:
    """The BN's per-channel map on its input, or why it cannot be folded."""
    if int(attr(node, "training_mode", 0)):  # type: ignore[call-overload]
        return Refusal("training_mode=1: output uses batch statistics")
    for extra in node.output[1:]:
        if extra and (g.consumers(extra) or extra in g.pinned):
            return Refusal(f"running-statistics output '{extra}' is used")
    params = []
    roles = ("scale", "bias", "mean", "var")
    for role, index in zip(roles, BN_PARAMETERS, strict=True):
        name = node.input[index]
        value = g.const(name)
        if value is None:
            return Refusal(f"BN {role} '{name}' is not a constant")
        params.append(value)
    x = node.input[0]
    rank, dtype = g.rank(x), g.np_dtype(x)
    if rank is None or rank < 2:
        return Refusal(f"rank of input '{x}' is unknown")
    if dtype is None:
        return Refusal(f"input '{x}' is not float16/float32/float64")
    eps = float(attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    channels = g.shape(x)[1]  # type: ignore[index]
    sizes = {p.size for p in (gamma, beta, mean, var)}
    if len(sizes) != 1 or (isinstance(channels, int) and sizes != {channels}):
        return Refusal(f"parameter sizes {sorted(sizes)} do not match the {channels} channels")
    if np.any(var + eps <= 0):
        return Refusal("var + epsilon <= 0 for some channel")
    s, t = algebra.bn_scale_shift(gamma, beta, mean, var, eps)
    if not (np.isfinite(s).all() and np.isfinite(t).all()):
        return Refusal("scale or shift is not finite")
    return Affine.channel(s, t, rank, 1)


def _elementwise_map(g: Graph, node: onnx.NodeProto) -> tuple[int, Affine] | None:
    """(index of the variable input, map) if ``node`` is x op const or const op x."""
    if (
        node.op_type not in _ELEMENTWISE
        or node.domain not in ("", "ai.onnx")
        or len(node.input) != 2
    ):
        return None
    consts = [g.const(name) for name in node.input]
    if sum(c is not None for c in consts) != 1:
        return None
    var_index = 0 if consts[1] is not None else 1
    c = consts[1 - var_index]
    x = node.input[var_index]
    shape, dtype = g.shape(x), g.np_dtype(x)
    if c is None or shape is None or dtype is None or c.dtype.kind != "f" or c.ndim > len(shape):
        return None
    c64 = c.astype(np.float64).reshape((1,) * (len(shape) - c.ndim) + c.shape)
    for dc, dx in zip(c64.shape, shape, strict=True):
        if dc != 1 and dc != dx:  # would broadcast x itself: not elementwise on x
            return None
    op = node.op_type
    if op == "Mul":
        return var_index, Affine.make(c64, np.zeros_like(c64))
    if op == "Add":
        return var_index, Affine.make(np.ones_like(c64), c64)
    if op == "Sub":  # x - c, or c - x
        if var_index == 0:
            return var_index, Affine.make(np.ones_like(c64), -c64)
        return var_index, Affine.make(-np.ones_like(c64), c64)
    if var_index == 0 and np.all(c64 != 0):  # x / c
        return var_index, Affine.make(1.0 / c64, np.zeros_like(c64))
    return None


def _per_channel_axis(g: Graph, node: onnx.NodeProto) -> int | None:
    """The single axis along which this node's constant varies, if any."""
    name = node.input[1] if g.const(node.input[1]) is not None else node.input[0]
    c = g.const(name)
    x = node.input[0] if name == node.input[1] else node.input[1]
    rank = g.rank(x)
    if c is None or rank is None:
        return None
    axes = [rank - c.ndim + i for i, d in enumerate(c.shape) if d > 1]
    return axes[0] if len(axes) == 1 else None


def decomposed_chains(g: Graph) -> list[tuple[list[onnx.NodeProto], Affine]]:
    """Maximal Mul/Add/Sub/Div-by-constant chains that form a BN."""
    maps = {id(n): m for n in g.nodes if (m := _elementwise_map(g, n)) is not None}

    def next_in_chain(n: onnx.NodeProto) -> onnx.NodeProto | None:
        out = n.output[0]
        if out in g.pinned:
            return None
        uses = g.consumers(out)
        if len(uses) != 1:
            return None
        nxt, i = uses[0]
        if id(nxt) in maps and maps[id(nxt)][0] == i:
            return nxt
        return None

    has_prev = {id(m) for n in g.nodes if id(n) in maps and (m := next_in_chain(n)) is not None}
    chains = []
    for n in g.nodes:
        if id(n) not in maps or id(n) in has_prev:
            continue
        chain = [n]
        while (nxt := next_in_chain(chain[-1])) is not None:
            chain.append(nxt)
        if _is_layer_bias(g, chain[0], maps[id(chain[0])][0]) and _is_bn_chain(g, chain[1:]):
            chain = chain[1:]  # MatMul -> Add(bias) -> Mul -> Add: the first Add is the layer's
        if _is_bn_chain(g, chain):
            aff = maps[id(chain[0])][1]
            for m in chain[1:]:
                aff = aff.then(maps[id(m)][1])
            chains.append((chain, aff))
    return chains


def _is_layer_bias(g: Graph, node: onnx.NodeProto, var_index: int) -> bool:
    producer = g.producer(node.input[var_index])
    return node.op_type == "Add" and producer is not None and producer.op_type == "MatMul"


def _is_bn_chain(g: Graph, chain: list[onnx.NodeProto]) -> bool:
    scale_axes: set[int] = set()
    shift_axes: set[int] = set()
    all_axes: set[int] = set()
    for n in chain:
        axis = _per_channel_axis(g, n)
        c = g.const(n.input[1]) if g.const(n.input[1]) is not None else g.const(n.input[0])
        if c is not None and sum(d > 1 for d in c.shape) > 1:
            return False
        if axis is None:
            continue
        all_axes.add(axis)
        (scale_axes if n.op_type in ("Mul", "Div") else shift_axes).add(axis)
    return len(all_axes) == 1 and bool(scale_axes) and bool(shift_axes)


def chain_name(chain: list[onnx.NodeProto]) -> str:
    return "+".join(n.name for n in chain)


def count_bn_graph(g: Graph) -> int:
    """BatchNormalization nodes plus decomposed-BN chains."""
    n_bn = sum(1 for n in g.nodes if n.op_type == "BatchNormalization")
    return n_bn + len(decomposed_chains(g))


def recognize(g: Graph) -> list[Refused]:
    """Replace every foldable BN by an internal Affine node; return the others."""
    refused: list[Refused] = []
    for node in list(g.nodes):
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        result = bn_node_affine(g, node)
        if isinstance(result, Refusal):
            refused.append(Refused(node.name, "BatchNormalization", result.reason))
            continue
        x = node.input[0]
        dtype = g.np_dtype(x)
        assert dtype is not None
        _replace(g, [node], result, dtype, node.name, cost.BATCHNORM)
    for chain, aff in decomposed_chains(g):
        x = next(i for i in chain[0].input if g.const(i) is None)
        dtype = g.np_dtype(x)
        assert dtype is not None
        _replace(g, chain, aff, dtype, chain_name(chain), cost.elementwise_chain(len(chain)))
    return refused


def _replace(
    g: Graph,
    nodes: list[onnx.NodeProto],
    aff: Affine,
    dtype: np.dtype,
    origin: str,
    current: Cost,
) -> None:
    x = next(i for i in nodes[0].input if g.const(i) is None)
    y = nodes[-1].output[0]
    affine = helper.make_node("Affine", [x], [y], name=nodes[0].name, domain=AFFINE_DOMAIN)
    g.insert_before(affine, nodes[0])
    for n in nodes:
        g.remove(n)
    g.affine[affine.name] = AffineInfo(aff, dtype, (origin,), list(nodes), current, x)
