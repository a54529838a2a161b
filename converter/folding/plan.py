"""Search for the cheapest exact placement of one affine map.

A map sits on an *edge* (consumer node, input index). Moving it backward asks
the producer of that edge's value to absorb it (Conv, Gemm, ...) or to let it
through (Identity, Transpose, MaxPool if s > 0, ...); moving it forward asks
the consumer the same. A rule may let only part of the map through and leave
the rest on the edge (a *leftover*), e.g. ReLU passes the scale but not the
shift. A leftover may then try the other direction once, so "scale back into
the Conv, shift forward into the next Conv" is one plan.

Every option is a :class:`Plan`; the cheapest one wins (see
:meth:`converter.folding.affine.Affine.cost`). Staying put is always an option,
so a plan never makes the graph more expensive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from bnfold.converter.folding.affine import ZERO, Affine, Cost, add_cost

if TYPE_CHECKING:
    from bnfold.converter.folding.graph import Graph

Action = Callable[["Graph"], None]
Edge = tuple[onnx.NodeProto, int]
MAX_DEPTH = 48


@dataclass
class Leftover:
    edge: Edge
    map: Affine


@dataclass
class Plan:
    cost: Cost = ZERO
    actions: list[Action] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    steps: list[tuple[str, str]] = field(default_factory=list)  # (rule, node name)
    merged_into: list[str] = field(default_factory=list)  # Affine nodes composed with
    reasons: list[str] = field(default_factory=list)
    # The root's output readers were rewritten, so the root's output name must go.
    forward_root: bool = False

    @staticmethod
    def stay(edge: Edge, aff: Affine, reasons: list[str]) -> Plan:
        leftovers = [] if aff.is_identity else [Leftover(edge, aff)]
        return Plan(cost=aff.cost(), leftovers=leftovers, reasons=list(reasons))

    @staticmethod
    def step(rule: str, node: onnx.NodeProto, *actions: Action) -> Plan:
        return Plan(cost=(0, 0, 1), actions=list(actions), steps=[(rule, node.name)])

    def __add__(self, other: Plan) -> Plan:
        return Plan(
            cost=add_cost(self.cost, other.cost),
            actions=self.actions + other.actions,
            leftovers=self.leftovers + other.leftovers,
            steps=self.steps + other.steps,
            merged_into=self.merged_into + other.merged_into,
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


class Search:
    """Plans for one root Affine node ``x -> A -> y``."""

    def __init__(self, g: Graph, root: onnx.NodeProto) -> None:
        from bnfold.converter.folding import rules  # rules import this module

        self.g = g
        self.root = root
        self.x, self.y = root.input[0], root.output[0]
        self.backward_rules = rules.BACKWARD
        self.forward_rules = rules.FORWARD
        self.depth = 0

    # ---- backward: make the producer of an edge's value emit the mapped value --------
    def backward(self, edge: Edge, aff: Affine, switch: bool) -> Plan:
        node, index = edge
        value = node.input[index]
        options = [Plan.stay(edge, aff, [])]
        if switch:
            options.append(self._forward_from(edge, aff))
        reason = self.g.exclusive(value, node)
        producer = self.g.producer(value)
        if reason is None and producer is None:
            reason = f"'{value}' is a graph input (the BN is the first layer)"
        if reason is None and self.depth > MAX_DEPTH:
            reason = "search depth exceeded"
        if reason is None and producer is self.root:  # a leftover walked back to the root
            return self.backward((self.root, 0), aff, switch)
        if reason is None:
            assert producer is not None
            rule = self.backward_rules.get(producer.op_type)
            if rule is None or producer.domain not in ("", "ai.onnx", "ai.bnfold"):
                reason = f"{producer.op_type} '{producer.name}' does not commute with the map"
            else:
                self.depth += 1
                result = rule.backward(self, producer, edge, aff, switch)
                self.depth -= 1
                if isinstance(result, str):
                    reason = result
                else:
                    options.append(result)
        if reason is not None:
            options[0].reasons.append(reason)
        return best(options)

    def _forward_from(self, edge: Edge, aff: Affine) -> Plan:
        node, index = edge
        if node is self.root:
            return self.forward_value(self.y, aff, switch=False)
        return self.forward_into(node, index, aff, switch=False)

    # ---- forward: make the consumers of a mapped value read the unmapped one ---------
    def forward_value(self, value: str, aff: Affine, switch: bool) -> Plan:
        if value in self.g.pinned:
            return Plan(cost=(1 << 20, 0, 0), reasons=[f"'{value}' is a graph output"])
        plan = Plan(forward_root=value == self.y)
        for consumer, index in self.g.consumers(value):
            plan = plan + self.forward_into(consumer, index, aff, switch)
        return plan

    def forward_into(self, node: onnx.NodeProto, index: int, aff: Affine, switch: bool) -> Plan:
        if node is self.root:
            return self.forward_value(self.y, aff, switch)
        edge = (node, index)
        options = [Plan.stay(edge, aff, [])]
        if switch:
            producer = self.g.producer(node.input[index])
            if producer is self.root:
                if self.g.exclusive(self.y, node) is None:
                    options.append(self.backward((self.root, 0), aff, switch=False))
            else:
                options.append(self.backward(edge, aff, switch=False))
        rule = self.forward_rules.get(node.op_type)
        reason: str | None = None
        if rule is None or node.domain not in ("", "ai.onnx", "ai.bnfold"):
            reason = f"{node.op_type} '{node.name}' does not commute with the map"
        elif self.depth > MAX_DEPTH:
            reason = "search depth exceeded"
        else:
            self.depth += 1
            result = rule.forward(self, node, index, aff, switch)
            self.depth -= 1
            if isinstance(result, str):
                reason = result
            else:
                options.append(result)
        if reason is not None:
            options[0].reasons.append(reason)
        return best(options)

    # ---- leftovers -----------------------------------------------------------------
    def settle_after(self, edge: Edge, aff: Affine, switch: bool) -> Plan:
        """A leftover of a backward move on ``edge``: stay, or go forward."""
        if aff.is_identity:
            return Plan()
        options = [Plan.stay(edge, aff, [])]
        if switch:
            options.append(self._forward_from(edge, aff))
        return best(options)

    def settle_before(self, node: onnx.NodeProto, index: int, aff: Affine, switch: bool) -> Plan:
        """A leftover of a forward move on input ``index`` of ``node``: stay, or go back."""
        if aff.is_identity:
            return Plan()
        edge = (node, index)
        options = [Plan.stay(edge, aff, [])]
        if switch:
            producer = self.g.producer(node.input[index])
            if producer is self.root:
                if self.g.exclusive(self.y, node) is None:
                    options.append(self.backward((self.root, 0), aff, switch=False))
            else:
                options.append(self.backward(edge, aff, switch=False))
        return best(options)

    def root_options(self, aff: Affine) -> tuple[Plan, Plan]:
        """(backward plan, forward plan) for the root map."""
        back = self.backward((self.root, 0), aff, switch=True)
        back.reasons = [f"backward: {r}" for r in back.reasons]
        fwd = self.forward_value(self.y, aff, switch=True)
        fwd.reasons = [f"forward: {r}" for r in fwd.reasons]
        return back, fwd
