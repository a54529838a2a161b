"""The base of every rule that absorbs a map into a layer's weight and bias.

A layer rule states where the layer's channels are and which pure function
of ``algebra.py`` folds the map; the base does the rest, the same way for
every layer:

- match: read the constant weight (input 1) and bias (input 2), check that
  the map varies along the layer's channels only, fold in float64, cast
  once (:func:`~bnfold.folding.rule.cast`); forward, say whether the
  shift can enter the bias (:meth:`LayerRule.shift_blocked`).
- rewrite: swap in the folded initializers (and attributes, e.g. Gemm's
  beta); backward, the layer's output gets a fresh name; forward, a shift
  that cannot enter the bias stays in front of the layer as ``x + t / s``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np
import onnx

from bnfold.folding.affine import Affine
from bnfold.folding.edits import rename_output, set_attr, set_const
from bnfold.folding.nodes import const_input, label
from bnfold.folding.refusal import Refusal
from bnfold.folding.rule import Absorbs, Direction, Match, Rule, cast

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph
    from bnfold.folding.plan import Action, Edge, Plan
    from bnfold.folding.search import Search


# (weight, bias or None, scale vector, shift vector) of a layer a map meets
Found = tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]


class Channels(NamedTuple):
    """Where the layer's channels are on the tensor the map is on."""

    axis: int  # negative: from the end (MatMul's last axis)
    size: int  # how many channels
    what: str  # "output channels", "input columns", ... for the refusal text


@dataclass(frozen=True)
class BlockedShift:
    """Why a shift on the layer's input cannot enter its bias."""

    why: str  # "pads with zeros (...)": the reason in the report
    zero_scale: str  # the refusal when a channel's scale is 0 (the shift would be t / 0)


@dataclass(frozen=True, eq=False)
class LayerMatch(Match):
    w: np.ndarray  # the layer's weight as it is (its dtype is the model's)
    scale: np.ndarray  # the map as vectors over the layer's channels
    shift: np.ndarray
    raw: dict[int, np.ndarray]  # input index -> folded constant, float64
    consts: dict[int, np.ndarray]  # the same, cast to the weight's dtype
    blocked: BlockedShift | None = None  # forward: the shift stays in front of the layer


class LayerRule(Rule[LayerMatch]):
    absorbs = Absorbs.WEIGHTS
    weights: ClassVar[tuple[int, ...]] = (1, 2)  # (weight, bias)
    weight_label = "weight"  # what the refusal calls input 1 when the map is on it

    # ---- what a layer states ------------------------------------------------------
    @abstractmethod
    def output_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels | Refusal: ...

    @abstractmethod
    def input_channels(self, node: onnx.NodeProto, w: np.ndarray) -> Channels | Refusal: ...

    @abstractmethod
    def fold_output(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray,
    ) -> dict[int, np.ndarray]:
        """The float64 constants (by input index) of the layer followed by the map."""

    @abstractmethod
    def fold_input(
        self,
        node: onnx.NodeProto,
        w: np.ndarray,
        b: np.ndarray | None,
        s: np.ndarray,
        t: np.ndarray | None,
    ) -> dict[int, np.ndarray]:
        """The float64 constants of the map followed by the layer (``t=None``: scale only)."""

    def check_weight(self, node: onnx.NodeProto, w: np.ndarray) -> Refusal | None:
        return None

    def shift_blocked(self, node: onnx.NodeProto, w: np.ndarray) -> BlockedShift | None:
        """Why an input shift cannot enter the bias; None when it can."""
        return None

    def attrs(self, consts: dict[int, np.ndarray]) -> list[tuple[str, object]]:
        """Attributes to set beside the new constants."""
        return []

    # ---- match --------------------------------------------------------------------
    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> LayerMatch | Refusal:
        found = self._found(g, node, aff, self.output_channels)
        if isinstance(found, Refusal):
            return found
        w, b, scale, shift = found
        return self._folded(node, aff, found, self.fold_output(node, w, b, scale, shift))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> LayerMatch | Refusal:
        if index != 0:
            return Refusal(f"{label(node)}: the map is on its {self.weight_label} input")
        found = self._found(g, node, aff, self.input_channels)
        if isinstance(found, Refusal):
            return found
        w, b, scale, shift = found
        blocked = self.shift_blocked(node, w) if aff.has_shift else None
        if blocked is not None and not np.all(scale != 0):
            return Refusal(blocked.zero_scale)
        t = shift if aff.has_shift and blocked is None else None
        return self._folded(node, aff, found, self.fold_input(node, w, b, scale, t), blocked)

    def _found(
        self,
        g: Graph,
        node: onnx.NodeProto,
        aff: Affine,
        channels_of: Callable[[onnx.NodeProto, np.ndarray], Channels | Refusal],
    ) -> Found | Refusal:
        """The constant weight and bias, and the map as vectors over the layer's channels."""
        w = const_input(g, node, self.weights[0], "weight")
        if w is None:
            return Refusal(f"{label(node)}: no weight")
        if isinstance(w, Refusal):
            return w
        b = const_input(g, node, self.weights[1], "bias") if len(self.weights) > 1 else None
        if isinstance(b, Refusal):
            return b
        if (refusal := self.check_weight(node, w)) is not None:
            return refusal
        channels = channels_of(node, w)
        if isinstance(channels, Refusal):
            return channels
        axis = channels.axis if channels.axis >= 0 else channels.axis + aff.rank
        vec = aff.vectors(axis, channels.size)
        if vec is None:
            return Refusal(
                f"{label(node)}: the map varies along more than its {channels.what} "
                f"({channels.size} along axis {axis})"
            )
        return w, b, *vec

    def _folded(
        self,
        node: onnx.NodeProto,
        aff: Affine,
        found: Found,
        raw: dict[int, np.ndarray],
        blocked: BlockedShift | None = None,
    ) -> LayerMatch | Refusal:
        """The match, with ``raw`` cast once to the weight's dtype."""
        w, _, scale, shift = found
        consts = cast(node, w, *raw.values())
        if isinstance(consts, Refusal):
            return consts
        cast_consts = dict(zip(raw, consts, strict=True))
        return LayerMatch(node, aff, w, scale, shift, raw, cast_consts, blocked)

    # ---- rewrite ------------------------------------------------------------------
    def rewrite_backward(self, s: Search, m: LayerMatch, edge: Edge, switch: bool) -> Plan:
        return self.step(Direction.BACKWARD, m.node, *self._edits(m), rename_output(m.node))

    def rewrite_forward(self, s: Search, m: LayerMatch, switch: bool) -> Plan:
        plan = self.step(Direction.FORWARD, m.node, *self._edits(m))
        if m.blocked is not None:
            plan = plan + _shift_stays_before(s, m.node, m.aff, switch, m.blocked.why)
        return plan

    def _edits(self, m: LayerMatch) -> list[Action]:
        edits = [set_const(m.node, index, value) for index, value in m.consts.items()]
        return edits + [set_attr(m.node, k, v) for k, v in self.attrs(m.consts)]


def _shift_stays_before(
    s: Search, node: onnx.NodeProto, aff: Affine, switch: bool, why: str
) -> Plan:
    """The layer took the scale; leave ``x + t / s`` in front of it, saying why.

    layer(W s, x + t / s) = layer(W, s x + t) for any layer linear in x.
    """
    rest = s.settle_before(node, 0, Affine.make(np.ones_like(aff.s), aff.t / aff.s), switch)
    rest.reasons.append(f"{label(node)} {why}: the shift cannot enter its bias")
    return rest
