"""The fold report: where every BN went, or why it stayed.

JSON shape (``FoldReport.to_dict()``)::

    {"bn_before": 3, "bn_after": 0, "residual_ops": 1, "iterations": 2,
     "evaluated": ["Transpose 'node_Transpose_6'", ...],
     "bns": [{"name": "bn1", "kind": "BatchNormalization", "status": "partial",
              "folded_into": ["conv2"], "rules": ["pool-forward:pool1", ...],
              "residual": ["Mul 'bn1_mul__bnfold7'"],
              "reasons": ["forward: MaxPool 'pool1': 3 channel(s) have a negative ..."]}]}

``status`` is ``folded`` (nothing left), ``partial`` (folded somewhere, ops
left: see ``residual``) or ``kept`` (nothing folded; the BN stays as it was,
or as what ``lower`` makes of it). ``rules`` lists the steps as
``rule-direction:node``; ``folded_into`` the nodes of the steps whose rule
absorbs. ``bn_before``/``bn_after`` are :func:`bnfold.folding.count_bn`
of the input and output models; ``residual_ops`` counts every op left by BNs;
``evaluated`` names the nodes computed as constants before folding
(``constants.materialize``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnfold.folding.plan import Step


@dataclass
class BNOutcome:
    name: str
    kind: str  # "BatchNormalization" or "Mul/Add"
    status: str = "kept"
    folded_into: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    residual: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def record_steps(self, steps: Iterable[Step]) -> None:
        for step in steps:
            self.rules.append(f"{step.rule}:{step.node}")
            if step.absorbed and step.node not in self.folded_into:
                self.folded_into.append(step.node)

    def finish(self) -> None:
        self.reasons = list(dict.fromkeys(self.reasons))
        if not self.rules:
            self.status = "kept"
        elif self.residual:
            self.status = "partial"
        else:
            self.status = "folded"
            self.reasons = []


@dataclass
class FoldReport:
    bn_before: int
    bn_after: int
    residual_ops: int
    iterations: int
    bns: list[BNOutcome]
    # the nodes evaluated as constants before folding ("Transpose 'node_Transpose_6'")
    evaluated: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def outcome(self, name: str) -> BNOutcome:
        for b in self.bns:
            if b.name == name:
                return b
        raise KeyError(name)

    def count(self, status: str) -> int:
        return sum(1 for b in self.bns if b.status == status)
