"""What a folding rule is: its facts, a match and a rewrite per direction.

A rule serves a family of op types and states its facts once, as class
attributes: ``name`` (step ids in the fold report are ``name-direction``),
``op_types``, what it ``absorbs`` and which inputs hold the node's
constants (``weights``, which ``constants.materialize`` evaluates when an
exporter computes them in the graph). ``applies`` narrows the pattern beyond
the op type (Add with a constant operand, Add of two branches).

For each direction the rule is two functions:

- ``match_backward(g, node, aff)`` / ``match_forward(g, node, index, aff)``:
  the map ``aff`` is on the node's output / on input ``index``. Returns a
  :class:`Match` (what was found, folded constants already cast) or a
  :class:`~bnfold.folding.refusal.Refusal` saying why not. Reads the
  graph, changes nothing.
- ``rewrite_backward(search, match, edge, switch)`` /
  ``rewrite_forward(search, match, switch)``: the
  :class:`~bnfold.folding.plan.Plan` for the match; its actions (from
  ``edits.py``) run later, only if the planner picks it. A rewrite that lets
  the map through asks ``search`` to move it on.

The math is not here: ``algebra.py`` computes folded weights in float64 and
:func:`cast` casts them back once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import numpy as np
import onnx

from bnfold.folding import algebra
from bnfold.folding.affine import Affine
from bnfold.folding.nodes import label
from bnfold.folding.plan import Plan, Step
from bnfold.folding.refusal import Refusal

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph
    from bnfold.folding.plan import Action, Edge
    from bnfold.folding.search import Search


class Direction(Enum):
    BACKWARD = "backward"  # the map is on the node's output
    FORWARD = "forward"  # the map is on one of the node's inputs


class Absorbs(Enum):
    """Where a rule puts the map; anything but NOTHING lists the node in ``folded_into``."""

    NOTHING = "nothing: the map passes through the node"
    WEIGHTS = "the layer's weight and bias"
    CONSTANT = "the shift, into the node's constant operand"
    MAP = "the other BN's map: the two compose"


@dataclass(frozen=True, eq=False)
class Match:
    """What a rule found at a node: the node and the map it meets there."""

    node: onnx.NodeProto
    aff: Affine


M = TypeVar("M", bound=Match)


class Rule(ABC, Generic[M]):
    name: ClassVar[str]
    op_types: ClassVar[tuple[str, ...]]
    absorbs: ClassVar[Absorbs] = Absorbs.NOTHING
    weights: ClassVar[tuple[int, ...]] = ()

    def applies(self, g: Graph, node: onnx.NodeProto) -> bool:
        return True

    @abstractmethod
    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> M | Refusal: ...

    @abstractmethod
    def rewrite_backward(self, s: Search, m: M, edge: Edge, switch: bool) -> Plan: ...

    @abstractmethod
    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> M | Refusal: ...

    @abstractmethod
    def rewrite_forward(self, s: Search, m: M, switch: bool) -> Plan: ...

    def step_id(self, direction: Direction) -> str:
        return f"{self.name}-{direction.value}"

    def step(self, direction: Direction, node: onnx.NodeProto, *actions: Action) -> Plan:
        """A plan of one step of this rule on ``node``, running ``actions``."""
        absorbed = self.absorbs is not Absorbs.NOTHING
        return Plan.step(Step(self.step_id(direction), node.name, absorbed), *actions)


def cast(node: onnx.NodeProto, like: np.ndarray, *values: np.ndarray) -> list[np.ndarray] | Refusal:
    """Folded float64 ``values`` cast once to ``like``'s dtype; a refusal if one overflows it.

    Every rule that writes constants calls this, once, on everything it writes.
    """
    out = []
    for value in values:
        cast_value = algebra.cast_exact_dtype(value, like.dtype)
        if cast_value is None:
            return Refusal(f"{label(node)}: folded values overflow {like.dtype}")
        out.append(cast_value)
    return out
