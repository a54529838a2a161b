"""Passes over the graph, run by a manager to a fixed point.

A pass returns whether it changed anything. The fold pass plans every
internal Affine node once per round and applies a plan only if it lowers the
cost (ops, then elementwise passes) of that map; since the total cost falls
with every applied plan, the rounds end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import onnx
from onnx import helper

from bnfold.folding import cost
from bnfold.folding.graph import AFFINE_DOMAIN, AffineInfo, Graph
from bnfold.folding.plan import Plan
from bnfold.folding.report import BNOutcome
from bnfold.folding.rules import Registry
from bnfold.folding.search import Search


class Pass(Protocol):
    name: str

    def __call__(self, g: Graph) -> bool: ...


class PassManager:
    def __init__(self, passes: Sequence[Pass], max_rounds: int = 64) -> None:
        self.passes = list(passes)
        self.max_rounds = max_rounds

    def run(self, g: Graph) -> int:
        """Run every pass until none changes anything; return the rounds taken."""
        for round_ in range(1, self.max_rounds + 1):
            changed = False
            for p in self.passes:
                changed |= p(g)
            if not changed:
                return round_
        raise RuntimeError(f"folding did not reach a fixed point in {self.max_rounds} rounds")


class FoldPass:
    name = "fold"

    def __init__(self, records: dict[str, BNOutcome], rules: Registry) -> None:
        self.records = records
        self.rules = rules

    def __call__(self, g: Graph) -> bool:
        changed = False
        for node in g.affine_nodes():
            if node.name in g.affine:  # not folded away earlier in this round
                changed |= self.fold_one(g, node)
        return changed

    def fold_one(self, g: Graph, node: onnx.NodeProto) -> bool:
        info = g.affine[node.name]
        back, fwd = Search(g, node, self.rules).root_options(info.map)
        chosen = min((back, fwd), key=lambda p: p.cost)
        if not cost.cheaper(chosen.cost, info.current_cost()):
            info.reasons = list(dict.fromkeys(back.reasons + fwd.reasons))
            return False
        self.apply(g, node, info, chosen)
        return True

    def apply(self, g: Graph, node: onnx.NodeProto, info: AffineInfo, plan: Plan) -> None:
        for action in plan.actions:
            action(g)
        for leftover in plan.leftovers:
            consumer, index = leftover.edge
            value = consumer.input[index]
            out = g.fresh(value)
            name = g.node_name(info.origins[0] + "__residual")
            residual = helper.make_node("Affine", [value], [out], name=name, domain=AFFINE_DOMAIN)
            g.insert_before(residual, consumer)
            g.set_input(consumer, index, out)
            g.shapes[out] = g.shapes.get(value)
            g.dtypes[out] = g.dtypes.get(value, 0)
            g.affine[name] = AffineInfo(leftover.map, info.dtype, info.origins, None, None)
        g.bypass(node, keep_output=not plan.forward_root)
        del g.affine[node.name]
        for origin in info.origins:
            if origin in self.records:
                self.records[origin].record_steps(plan.steps)
                self.records[origin].reasons += plan.reasons
