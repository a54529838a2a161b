"""A plan: one way to place a map, with what it costs and the edits that make it.

Rules return plans from their rewrites; the search adds them up and keeps
the cheapest (:func:`best`). A plan's actions run only if the fold pass
picks it. Whatever part of the map cannot move stays on an edge as a
:class:`Leftover`; the fold pass turns leftovers into internal Affine nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from bnfold.folding import cost
from bnfold.folding.affine import Affine
from bnfold.folding.cost import ZERO, Cost

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph

Action = Callable[["Graph"], None]
Edge = tuple[onnx.NodeProto, int]  # (consumer node, input index)


@dataclass(frozen=True)
class Step:
    """One rule applied to one node, as the fold report lists it (``rule:node``)."""

    rule: str  # the rule's name and the direction, e.g. "conv-backward"
    node: str
    absorbed: bool  # the node took (part of) the map into its constants: listed in folded_into


@dataclass
class Leftover:
    edge: Edge
    map: Affine


@dataclass
class Plan:
    cost: Cost = ZERO
    actions: list[Action] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    # The root's output readers were rewritten, so the root's output name must go.
    forward_root: bool = False

    @staticmethod
    def stay(edge: Edge, aff: Affine, reasons: list[str]) -> Plan:
        leftovers = [] if aff.is_identity else [Leftover(edge, aff)]
        return Plan(cost=aff.cost(), leftovers=leftovers, reasons=list(reasons))

    @staticmethod
    def step(step: Step, *actions: Action) -> Plan:
        return Plan(cost=cost.STEP, actions=list(actions), steps=[step])

    def __add__(self, other: Plan) -> Plan:
        return Plan(
            cost=cost.add(self.cost, other.cost),
            actions=self.actions + other.actions,
            leftovers=self.leftovers + other.leftovers,
            steps=self.steps + other.steps,
            reasons=_dedupe(self.reasons + other.reasons),
            forward_root=self.forward_root or other.forward_root,
        )


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def best(options: list[Plan]) -> Plan:
    """The cheapest plan; ties go to the earlier option. A chosen leftover-only
    plan carries every option's reasons (they say why nothing better exists)."""
    chosen = min(options, key=lambda p: p.cost)  # min keeps the first of equals
    if not chosen.steps:
        chosen.reasons = _dedupe([r for p in options for r in p.reasons])
    return chosen
