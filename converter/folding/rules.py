"""The rule registry: a plain tuple, looked up by op type."""

from __future__ import annotations

from bnfold.converter.folding.absorb import (
    ComposeRule,
    ConvRule,
    ConvTransposeRule,
    GemmRule,
    MatMulRule,
)
from bnfold.converter.folding.across import (
    ActivationRule,
    AddRule,
    ConcatRule,
    IdentityRule,
    PoolRule,
    ReshapeRule,
    TransposeRule,
)
from bnfold.converter.folding.rule import Rule

RULES: tuple[Rule, ...] = (
    ConvRule(),
    ConvTransposeRule(),
    GemmRule(),
    MatMulRule(),
    ComposeRule(),
    IdentityRule(),
    TransposeRule(),
    ReshapeRule(),
    PoolRule(),
    ActivationRule(),
    ConcatRule(),
    AddRule(),
)

BY_OP: dict[str, Rule] = {op: rule for rule in RULES for op in rule.op_types}
BACKWARD = BY_OP
FORWARD = BY_OP
