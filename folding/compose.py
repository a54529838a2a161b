"""BN -> BN: a map meets another internal Affine node, and the two become one map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from bnfold.folding import cost
from bnfold.folding.affine import Affine
from bnfold.folding.edits import rename_output
from bnfold.folding.refusal import Refusal
from bnfold.folding.rule import Absorbs, Direction, Match, Rule

if TYPE_CHECKING:
    from bnfold.folding.graph import Graph
    from bnfold.folding.plan import Action, Edge, Plan
    from bnfold.folding.search import Search


@dataclass(frozen=True, eq=False)
class Composed(Match):
    new: Affine  # the other node's map once it has taken this one


class ComposeRule(Rule[Composed]):
    name = "compose"
    op_types = ("Affine",)
    absorbs = Absorbs.MAP

    def match_backward(self, g: Graph, node: onnx.NodeProto, aff: Affine) -> Composed | Refusal:
        return Composed(node, aff, g.affine[node.name].map.then(aff))

    def match_forward(
        self, g: Graph, node: onnx.NodeProto, index: int, aff: Affine
    ) -> Composed | Refusal:
        return Composed(node, aff, aff.then(g.affine[node.name].map))

    def rewrite_backward(self, s: Search, m: Composed, edge: Edge, switch: bool) -> Plan:
        return self._plan(s, m, Direction.BACKWARD, rename_output(m.node))

    def rewrite_forward(self, s: Search, m: Composed, switch: bool) -> Plan:
        return self._plan(s, m, Direction.FORWARD)

    def _plan(self, s: Search, m: Composed, direction: Direction, *edits: Action) -> Plan:
        node, new = m.node, m.new
        root_info = s.g.affine[s.root.name]

        def merge(g: Graph) -> None:
            target = g.affine[node.name]
            target.map = new
            target.origins = tuple(dict.fromkeys(target.origins + root_info.origins))
            target.original = None
            target.original_cost = None

        plan = self.step(direction, node, merge, *edits)
        # The other map changes what it lowers to: that difference, plus the step.
        plan.cost = cost.add(cost.sub(new.cost(), s.g.affine[node.name].current_cost()), cost.STEP)
        return plan
