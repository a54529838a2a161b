"""The rule registry: facts stated once, ids from names, every rule documented."""

from __future__ import annotations

from pathlib import Path

from bnfold.folding.rule import Absorbs, Direction
from bnfold.folding.rules import REGISTRY, RULES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "folding.md"


def test_names_are_unique_and_make_the_step_ids():
    names = [r.name for r in RULES]
    assert len(set(names)) == len(names)
    conv = next(r for r in RULES if r.name == "conv")
    assert conv.step_id(Direction.BACKWARD) == "conv-backward"
    assert conv.step_id(Direction.FORWARD) == "conv-forward"


def test_every_rule_is_in_the_docs_table():
    text = DOCS.read_text()
    for row in REGISTRY.table():
        ops = "(another BN)" if row.name == "compose" else ", ".join(row.op_types)
        assert f"| `{row.name}` | {ops}" in text, row


def test_weight_inputs_come_from_the_rules():
    assert REGISTRY.weight_inputs() == {
        "Conv": (1, 2),
        "ConvTranspose": (1, 2),
        "Gemm": (1, 2),
        "MatMul": (1,),
        "BatchNormalization": (1, 2, 3, 4),
    }


def test_only_absorbing_rules_fill_folded_into():
    absorbing = {r.name for r in RULES if r.absorbs is not Absorbs.NOTHING}
    assert absorbing == {
        "conv",
        "convtranspose",
        "gemm",
        "matmul",
        "compose",
        "bias-add",
        "identity-branch",
    }
