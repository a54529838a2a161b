"""Search for the cheapest exact placement of one affine map.

A map sits on an *edge* (consumer node, input index). Moving it backward asks
the producer of that edge's value to absorb it (Conv, Gemm, ...) or to let it
through (Identity, Transpose, MaxPool if s > 0, ...); moving it forward asks
the consumer the same. The registry (``rules.py``) names the rule for a node;
the rule's ``match`` says whether it applies (or refuses, with the reason) and
its ``rewrite`` turns the match into a :class:`~bnfold.folding.plan.Plan`,
calling back into the search to move the map further. A rule may let only
part of the map through and leave the rest on the edge (a *leftover*), e.g.
ReLU passes the scale but not the shift. A leftover may then try the other
direction once, so "scale back into the Conv, shift forward into the next
Conv" is one plan.

Every option is a plan; the cheapest one wins (see ``cost.py``). Staying put
is always an option, so a plan never makes the graph more expensive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from bnfold.folding import cost
from bnfold.folding.affine import Affine
from bnfold.folding.graph import AFFINE_DOMAIN
from bnfold.folding.plan import Edge, Plan, best
from bnfold.folding.refusal import Refusal

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph
    from bnfold.folding.rules import Registry

MAX_DEPTH = 48


class Search:
    """Plans for one root Affine node ``x -> A -> y``."""

    def __init__(self, g: Graph, root: onnx.NodeProto, rules: Registry) -> None:
        self.g = g
        self.root = root
        self.y = root.output[0]
        self.rules = rules
        self.depth = 0

    # ---- backward: make the producer of an edge's value emit the mapped value --------
    def backward(self, edge: Edge, aff: Affine, switch: bool) -> Plan:
        node, index = edge
        value = node.input[index]
        options = [Plan.stay(edge, aff, [])]
        if switch:
            options.append(self._forward_from(edge, aff))
        refusal = self.g.exclusive(value, node)
        if refusal is not None:
            refusal = _residual_stream(self.g, value, node, refusal)
        producer = self.g.producer(value)
        if refusal is None and producer is None:
            refusal = Refusal(f"'{value}' is a graph input (the BN is the first layer)")
        if refusal is None and self.depth > MAX_DEPTH:
            refusal = Refusal("search depth exceeded")
        if refusal is None and producer is self.root:  # a leftover walked back to the root
            return self.backward((self.root, 0), aff, switch)
        if refusal is None:
            assert producer is not None
            rule = self.rules.find(self.g, producer)
            if rule is None:
                refusal = _no_rule(producer)
            else:
                self.depth += 1
                match = rule.match_backward(self.g, producer, aff)
                if isinstance(match, Refusal):
                    refusal = match
                else:
                    options.append(rule.rewrite_backward(self, match, edge, switch))
                self.depth -= 1
        if refusal is not None:
            options[0].reasons.append(refusal.reason)
        return best(options)

    def _forward_from(self, edge: Edge, aff: Affine) -> Plan:
        node, index = edge
        if node is self.root:
            return self.forward_value(self.y, aff, switch=False)
        return self.forward_into(node, index, aff, switch=False)

    # ---- forward: make the consumers of a mapped value read the unmapped one ---------
    def forward_value(self, value: str, aff: Affine, switch: bool) -> Plan:
        if value in self.g.pinned:
            return Plan(cost=cost.BLOCKED, reasons=[f"'{value}' is a graph output"])
        plan = Plan(forward_root=value == self.y)
        for consumer, index in self.g.consumers(value):
            plan = plan + self.forward_into(consumer, index, aff, switch)
        return plan

    def forward_into(self, node: onnx.NodeProto, index: int, aff: Affine, switch: bool) -> Plan:
        if node is self.root:
            return self.forward_value(self.y, aff, switch)
        options = [Plan.stay((node, index), aff, [])]
        if switch:
            options.extend(self._backward_from(node, index, aff))
        rule = self.rules.find(self.g, node)
        refusal: Refusal | None = None
        if rule is None:
            refusal = _no_rule(node)
        elif self.depth > MAX_DEPTH:
            refusal = Refusal("search depth exceeded")
        else:
            self.depth += 1
            match = rule.match_forward(self.g, node, index, aff)
            if isinstance(match, Refusal):
                refusal = match
            else:
                options.append(rule.rewrite_forward(self, match, switch))
            self.depth -= 1
        if refusal is not None:
            options[0].reasons.append(refusal.reason)
        return best(options)

    def _backward_from(self, node: onnx.NodeProto, index: int, aff: Affine) -> list[Plan]:
        """The other way for a map on input ``index`` of ``node``: back up that input."""
        if self.g.producer(node.input[index]) is not self.root:
            return [self.backward((node, index), aff, switch=False)]
        if self.g.exclusive(self.y, node) is None:
            return [self.backward((self.root, 0), aff, switch=False)]
        return []

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
        options = [Plan.stay((node, index), aff, [])]
        if switch:
            options.extend(self._backward_from(node, index, aff))
        return best(options)

    def root_options(self, aff: Affine) -> tuple[Plan, Plan]:
        """(backward plan, forward plan) for the root map."""
        back = self.backward((self.root, 0), aff, switch=True)
        back.reasons = [f"backward: {r}" for r in back.reasons]
        fwd = self.forward_value(self.y, aff, switch=True)
        fwd.reasons = [f"forward: {r}" for r in fwd.reasons]
        return back, fwd


def _residual_stream(g: Graph, value: str, node: onnx.NodeProto, refusal: Refusal) -> Refusal:
    """Say so when ``value`` is a residual stream: one of its readers is an Add of two branches.

    The map could then move back only if the whole stream took it: every
    block that writes the stream and every reader of it, the shortcut
    included, which no local exact rewrite does. Readers behind an internal
    map (a BN not folded yet) count as readers of ``value``.
    """
    readers = [node] + [n for n, _ in g.consumers(value) if n is not node]
    for reader in list(readers):
        if reader.domain == AFFINE_DOMAIN and reader is not node:
            readers += [n for n, _ in g.consumers(reader.output[0])]
    for reader in readers:
        if reader.op_type not in ("Add", "Sub") or reader.domain not in ("", "ai.onnx"):
            continue
        if all(g.const(i) is None for i in reader.input):
            return Refusal(
                f"{refusal.reason}; '{value}' is a residual stream (read by the shortcut of "
                f"{reader.op_type} '{reader.name}'): the map could move back only with the "
                "whole stream, every block writing it and every reader, which no local "
                "exact rewrite does"
            )
    return refusal


def _no_rule(node: onnx.NodeProto) -> Refusal:
    return Refusal(f"{node.op_type} '{node.name}' does not commute with the map")
