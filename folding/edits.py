"""The graph edits a plan runs if it is chosen: swap an initializer, set an attribute, rename.

Each function returns an :data:`~bnfold.folding.plan.Action` (a function of
the graph) and changes nothing itself: a rule's rewrite only collects them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph
    from bnfold.folding.plan import Action


def set_const(node: onnx.NodeProto, index: int, value: np.ndarray) -> Action:
    """Point input ``index`` at a new initializer holding ``value`` (never edit a shared one)."""

    def run(g: Graph) -> None:
        base = node.input[index] if len(node.input) > index and node.input[index] else node.name
        g.set_input(node, index, g.add_const(base, value))

    return run


def set_attr(node: onnx.NodeProto, name: str, value: object) -> Action:
    return lambda g: g.set_attr(node, name, value)


def rename_output(node: onnx.NodeProto) -> Action:
    """The node's output changes meaning, so it gets a fresh name."""

    def run(g: Graph) -> None:
        g.rename_output(node, 0)

    return run


def matmul_to_gemm(node: onnx.NodeProto, w: np.ndarray, bias: np.ndarray) -> Action:
    """MatMul(A, W) -> Gemm(A, W', bias): one op that also adds the bias."""

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


def gemm_before_reshape(
    node: onnx.NodeProto, reshape: onnx.NodeProto, w: np.ndarray, bias: np.ndarray
) -> Action:
    """MatMul(A, W) -> Reshape to 2-D  becomes  Reshape of A to 2-D -> Gemm(., W', bias).

    The reshape merges the leading axes and keeps the last one, so it
    commutes with the MatMul: reshape(A @ W) = reshape(A) @ W. The Gemm
    writes the reshape's output (whatever name it has when this runs); the
    MatMul's own output is gone.
    """

    def run(g: Graph) -> None:
        a, out = node.input[0], reshape.output[0]
        flat = g.fresh(a + "_2d")
        if reshape.op_type == "Reshape":
            shape = g.add_const(reshape.name + "_shape", np.array([-1, w.shape[0]], np.int64))
            del reshape.input[:]
            reshape.input.extend([a, shape])
            kept = [x for x in reshape.attribute if x.name != "allowzero"]
            del reshape.attribute[:]
            reshape.attribute.extend(kept)
        else:  # Flatten over the last axis
            reshape.input[0] = a
        reshape.output[0] = flat
        g.shapes[flat] = (None, int(w.shape[0]))
        g.dtypes[flat] = g.dtypes.get(a, 0)
        w_name = g.add_const(node.input[1], w)
        b_name = g.add_const(node.name + "_bias", bias)
        node.op_type = "Gemm"
        del node.input[:]
        node.input.extend([flat, w_name, b_name])
        del node.attribute[:]
        node.output[0] = out
        g.nodes.remove(reshape)
        g.nodes.insert(g.nodes.index(node), reshape)
        g.touch()

    return run
