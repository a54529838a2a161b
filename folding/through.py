"""The base of every rule that lets a map through a node, whole or in part.

Such a rule only matches: it says how the map looks on the other side of the
node (a :class:`Through`); the rewrite is the same for all of them. For an op
f and a map a, moving a across f uses an identity f(a(x)) = a'(f(x)):
backward, the map on f's output becomes maps on f's inputs; forward, the map
on one input becomes a map on f's output. What cannot cross stays where the
map was (``left``), and may then try the other direction once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bnfold.folding.affine import Affine
from bnfold.folding.edits import rename_output, set_const
from bnfold.folding.plan import best
from bnfold.folding.rule import Direction, Match, Rule

if TYPE_CHECKING:
    from bnfold.folding.plan import Action, Edge, Plan
    from bnfold.folding.search import Search

Up = tuple[tuple[int, Affine], ...]  # (input index, map sent up that input)


@dataclass(frozen=True, eq=False)
class Through(Match):
    """How the map crosses the node.

    Backward, ``up`` lists the maps sent up the node's inputs (``or_up``:
    another way; the cheaper wins). Forward, ``down`` is the map sent on to
    the node's consumers (None: the output keeps its value). ``left`` stays
    where the map was; ``consts`` are new constants for the node's inputs;
    ``reasons`` say why anything stays.
    """

    index: int = 0  # forward: the input the map is on
    up: Up = ()
    or_up: Up | None = None
    down: Affine | None = None
    left: Affine | None = None
    consts: tuple[tuple[int, np.ndarray], ...] = ()
    reasons: tuple[str, ...] = ()


class ThroughRule(Rule[Through]):
    def rewrite_backward(self, s: Search, m: Through, edge: Edge, switch: bool) -> Plan:
        plan = self._up(s, m, m.up, edge, switch)
        if m.or_up is None:
            return plan
        return best([plan, self._up(s, m, m.or_up, edge, switch)])

    def _up(self, s: Search, m: Through, up: Up, edge: Edge, switch: bool) -> Plan:
        node = m.node
        plan = self.step(Direction.BACKWARD, node, *self._edits(m), rename_output(node))
        for index, aff_in in up:
            if not aff_in.is_identity:
                plan = plan + s.backward((node, index), aff_in, switch)
        if m.left is not None:
            plan = plan + s.settle_after(edge, m.left, switch)
        plan.reasons.extend(m.reasons)
        return plan

    def rewrite_forward(self, s: Search, m: Through, switch: bool) -> Plan:
        node = m.node
        if m.down is None:
            plan = self.step(Direction.FORWARD, node, *self._edits(m))
        else:
            plan = self.step(Direction.FORWARD, node, *self._edits(m), rename_output(node))
            plan = plan + s.forward_value(node.output[0], m.down, switch)
        if m.left is not None:
            plan = plan + s.settle_before(node, m.index, m.left, switch)
        plan.reasons.extend(m.reasons)
        return plan

    def _edits(self, m: Through) -> list[Action]:
        return [set_const(m.node, index, value) for index, value in m.consts]
