"""Fold BatchNormalization into its neighbours at the ONNX level, exactly.

    folded, report = fold(model)      # model is not mutated
    count_bn(model)                   # BN nodes + decomposed (Mul/Add) BNs

Pipeline: recognise every BN as an internal per-channel affine map
(``recognize``), move and absorb each map with the rules (``rules``) under a
pass manager until nothing improves (``passes``), turn what is left back into
ONNX ops (``lower``: one op per map, or a Mul then an Add for a map that
is not per channel on axis 1). See docs/folding.md.

No torch here: this package runs in the serving image.
"""

from __future__ import annotations

import onnx

from bnfold.folding.constants import materialize
from bnfold.folding.graph import Graph
from bnfold.folding.lower import lower
from bnfold.folding.passes import FoldPass, PassManager
from bnfold.folding.recognize import count_bn_graph, recognize
from bnfold.folding.report import BNOutcome, FoldReport
from bnfold.folding.rules import REGISTRY

__all__ = ["BNOutcome", "FoldReport", "count_bn", "fold"]


def count_bn(model: onnx.ModelProto) -> int:
    """BatchNormalization nodes plus BNs decomposed into Mul/Add chains."""
    return count_bn_graph(Graph(model))


def fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FoldReport]:
    """Fold every BN that folds exactly; return the new model and the report."""
    g = Graph(model)
    bn_before = count_bn_graph(g)
    evaluated = materialize(g, REGISTRY.weight_inputs())
    refused = recognize(g)
    records: dict[str, BNOutcome] = {}
    for node in g.affine_nodes():
        info = g.affine[node.name]
        kind = (
            "BatchNormalization"
            if info.original
            and len(info.original) == 1
            and (info.original[0].op_type == "BatchNormalization")
            else "Mul/Add"
        )
        for origin in info.origins:
            records[origin] = BNOutcome(origin, kind)
    for r in refused:
        residual = [f"{r.kind} '{r.name}'"]
        records[r.name] = BNOutcome(r.name, r.kind, residual=residual, reasons=[r.reason])
    rounds = PassManager([FoldPass(records, REGISTRY)]).run(g)
    residual_ops = lower(g, records)
    residual_ops += len(refused)
    folded = g.to_model()
    for rec in records.values():
        rec.finish()
    report = FoldReport(
        bn_before=bn_before,
        bn_after=count_bn(folded),
        residual_ops=residual_ops,
        iterations=rounds,
        bns=sorted(records.values(), key=lambda r: _order(model, r.name)),
        evaluated=evaluated,
    )
    return folded, report


def _order(model: onnx.ModelProto, name: str) -> int:
    first = name.split("+")[0]
    for i, n in enumerate(model.graph.node):
        if n.name == first:
            return i
    return len(model.graph.node)
