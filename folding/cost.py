"""What a placement of a map costs, and the named costs the planner adds up.

A cost is ``(ops, elementwise passes, rewrite steps)``, compared in that
order: first fewer ops left in the graph, then fewer passes over a tensor
(a BatchNormalization multiplies and adds: two), then fewer edits. The fold
pass applies a plan only if it lowers the first two (:func:`cheaper`); the
steps only break ties between plans that leave the same ops.
"""

from __future__ import annotations

Cost = tuple[int, int, int]

ZERO: Cost = (0, 0, 0)
# What a map lowers to if it stays (see Affine.cost and lower.py).
ONE_OP: Cost = (1, 1, 0)  # a Mul or an Add
BATCHNORM: Cost = (1, 2, 0)  # one BatchNormalization: a multiply and an add per element
MUL_ADD: Cost = (2, 2, 0)  # a Mul then an Add
# What a plan's edits cost.
STEP: Cost = (0, 0, 1)  # one rule applied to one node
OP_CHANGE: Cost = (
    0,
    0,
    1,
)  # on top of its step: a MatMul becomes a Gemm (an existing Add is preferred)
BLOCKED: Cost = (1 << 20, 0, 0)  # the plan would change a graph output: dearer than staying put


def add(a: Cost, b: Cost) -> Cost:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def sub(a: Cost, b: Cost) -> Cost:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def elementwise_chain(n: int) -> Cost:
    """A BN decomposed into ``n`` Mul/Add/Sub/Div ops: n ops, n passes."""
    return (n, n, 0)


def cheaper(a: Cost, b: Cost) -> bool:
    """Whether ``a`` leaves fewer ops (then passes) than ``b``; rewrite steps do not count."""
    return a[:2] < b[:2]
