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

:class:`FoldSummary` is the one set of numbers every tool shows (``bnfold
fold``, ``import``, ``convert``, the manifest's ``folding.summary``,
``/parity`` and the page): the BNs found, how many folded, partly folded and
kept, and the ops they leave, counted against the same network without its
BNs (``residual_ops``: 0 means the folded graph has exactly the ops of the
network as if it had no BN). It is computed from the report, stored or
fresh, by :meth:`FoldSummary.of`.
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


# The name of the input normalisation the converter puts in front of a
# network (converter/input_map.py): the fold folds it as a BN, the summary
# leaves it out of the network's BNs.
INPUT_MAP = "input_normalization"


@dataclass(frozen=True)
class FoldSummary:
    """The fold in five numbers; ``bns = folded + partial + kept``."""

    bns: int
    folded: int
    partial: int
    kept: int
    ops_left: int  # ops the BNs leave, beyond the network without its BNs

    @classmethod
    def of(cls, report: FoldReport | dict[str, Any]) -> FoldSummary:
        """The summary of a report, or of its JSON form (a stored manifest's).
        An input normalisation in front (:data:`INPUT_MAP`) is not one of the
        network's BNs: neither it nor the ops it leaves are counted."""
        data = report.to_dict() if isinstance(report, FoldReport) else report
        bns = [b for b in data.get("bns", []) if isinstance(b, dict)]
        ours = [b for b in bns if not str(b.get("name", "")).startswith(INPUT_MAP)]
        statuses = [b.get("status") for b in ours]
        theirs = sum(len(b.get("residual", [])) for b in bns if b not in ours)
        return cls(
            bns=len(statuses),
            folded=statuses.count("folded"),
            partial=statuses.count("partial"),
            kept=statuses.count("kept"),
            ops_left=int(data.get("residual_ops", 0)) - theirs,
        )

    def describe(self) -> str:
        """One line: '6 BNs: 5 folded, 1 partial, 0 kept; 1 op left by BNs'."""
        if not self.bns:
            return "no BN found; nothing to fold"
        ops = "1 op" if self.ops_left == 1 else f"{self.ops_left} ops"
        bns = "1 BN" if self.bns == 1 else f"{self.bns} BNs"
        return (
            f"{bns}: {self.folded} folded, {self.partial} partial, {self.kept} kept; "
            f"{ops} left by BNs"
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


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

    def summary(self) -> FoldSummary:
        return FoldSummary.of(self)
