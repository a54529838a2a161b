"""Resize in nearest mode: a map that does not vary along the resized axes passes it.

Nearest-neighbour resizing copies every output element from one input
element, so for a map constant along every axis the resize changes,
resize(s x + t) = s resize(x) + t: a per-channel map on NCHW passes a
Resize whose scales are [1, 1, h, w]. Refused: other modes (linear, cubic:
the rule keeps to outputs that are copies), ``tf_crop_and_resize`` (outside
the crop the output is a constant, not a copy), a resize along an axis the
map varies along (e.g. the channel axis), scales and sizes that are not
constants. This is the worked example of docs/folding.md, "Adding a rule".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.folding.affine import Affine
from bnfold.folding.nodes import attr_ints, attr_str, label
from bnfold.folding.refusal import Refusal
from bnfold.folding.through import Through, ThroughRule

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph

INPUTS = ("X", "roi", "scales", "sizes")  # opset 11 and later


def _given(g: Graph, node: onnx.NodeProto, index: int) -> np.ndarray | None:
    """Input ``index`` if it is a non-empty constant."""
    value = g.const(node.input[index]) if len(node.input) > index else None
    return value.reshape(-1) if value is not None and value.size else None


def resized_axes(g: Graph, node: onnx.NodeProto, rank: int) -> set[int] | Refusal:
    """The axes the Resize may change (a scale other than 1, or a size other than the input's)."""
    axes = [a % rank for a in attr_ints(node, "axes")] or list(range(rank))
    scales, sizes = _given(g, node, 2), _given(g, node, 3)
    if scales is not None:
        changed = {a for a, v in zip(axes, scales, strict=False) if float(v) != 1.0}
        given = len(scales)
    elif sizes is not None:
        shape = g.shape(node.input[0])
        if attr_str(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            changed = set(axes)  # one scale for all the listed axes: assume each changes
        else:
            changed = {
                a for a, n in zip(axes, sizes, strict=False) if shape is None or shape[a] != int(n)
            }
        given = len(sizes)
    else:
        return Refusal(f"{label(node)}: its scales and sizes are not constants")
    return changed | set(axes[given:])


class ResizeRule(ThroughRule):
    name = "resize"
    op_types = ("Resize",)

    def _check(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Refusal | None:
        mode = attr_str(node, "mode", "nearest")
        if mode != "nearest":
            return Refusal(f"{label(node)}: mode={mode}; only mode=nearest passes")
        if attr_str(node, "coordinate_transformation_mode", "") == "tf_crop_and_resize":
            return Refusal(f"{label(node)}: tf_crop_and_resize fills outside the crop")
        resized = resized_axes(g, node, aff.rank)
        if isinstance(resized, Refusal):
            return resized
        if varying := sorted(aff.varying_axes() & resized):
            return Refusal(f"{label(node)} resizes axis {varying}, along which the map varies")
        return None

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Through | Refusal:
        return self._check(g, node, aff) or Through(node, aff, up=((0, aff),))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Through | Refusal:
        if index != 0:
            return Refusal(f"{label(node)}: the map is on its {INPUTS[index]} input")
        return self._check(g, node, aff) or Through(node, aff, index, down=aff)
