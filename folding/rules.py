"""The rule registry: one row per rule, looked up by op type.

Each row is a rule instance whose class states its facts (name, op types,
what it absorbs, weight inputs); :func:`table` lists them. For an op type
the first rule whose ``applies`` holds serves the node (Add with a constant
operand is ``bias-add``, Add of two branches is ``add``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import onnx

from bnfold.folding.absorb import ConvRule, ConvTransposeRule, GemmRule, MatMulRule
from bnfold.folding.across import (
    ConcatRule,
    IdentityRule,
    PoolRule,
    ReluRule,
    ReshapeRule,
    TransposeRule,
)
from bnfold.folding.add import AddRule, BiasAddRule
from bnfold.folding.branch import IdentityBranchRule
from bnfold.folding.compose import ComposeRule
from bnfold.folding.graph import AFFINE_DOMAIN, Graph
from bnfold.folding.recognize import BN_PARAMETERS
from bnfold.folding.reduce import ReduceMeanRule
from bnfold.folding.resize import ResizeRule
from bnfold.folding.rule import Absorbs, Rule

RULES: tuple[Rule[Any], ...] = (
    ConvRule(),
    ConvTransposeRule(),
    GemmRule(),
    MatMulRule(),
    ComposeRule(),
    BiasAddRule(),
    IdentityRule(),
    TransposeRule(),
    ReshapeRule(),
    PoolRule(),
    ReduceMeanRule(),
    ReluRule(),
    ConcatRule(),
    IdentityBranchRule(),
    AddRule(),
    ResizeRule(),
)

DOMAINS = ("", "ai.onnx", AFFINE_DOMAIN)


class Row(NamedTuple):
    name: str
    op_types: tuple[str, ...]
    absorbs: Absorbs
    weights: tuple[int, ...]


class Registry:
    def __init__(self, rules: Sequence[Rule[Any]]) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names are not unique: {names}")
        self.rules = tuple(rules)
        self._by_op: dict[str, list[Rule[Any]]] = defaultdict(list)
        for rule in self.rules:
            for op in rule.op_types:
                self._by_op[op].append(rule)

    def find(self, g: Graph, node: onnx.NodeProto) -> Rule[Any] | None:
        """The rule serving ``node``; None if no rule knows it (it does not commute)."""
        if node.domain not in DOMAINS:
            return None
        for rule in self._by_op.get(node.op_type, ()):
            if rule.applies(g, node):
                return rule
        return None

    def weight_inputs(self) -> dict[str, tuple[int, ...]]:
        """The inputs holding a layer's constants, by op type (for ``constants.materialize``)."""
        table = {op: r.weights for r in self.rules for op in r.op_types if r.weights}
        return {**table, "BatchNormalization": BN_PARAMETERS}

    def table(self) -> list[Row]:
        """The registry as rows of facts (docs/folding.md, "The rules")."""
        return [Row(r.name, r.op_types, r.absorbs, r.weights) for r in self.rules]


REGISTRY = Registry(RULES)
