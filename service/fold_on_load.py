"""Fold on load: the BNs of a plain ONNX model folded in memory, proven, then served.

A model that arrives with its BatchNormalizations (a Triton repository, a
bare ``model.onnx``) is folded when it loads; the folded graph is run beside
the original on the serving device on generated inputs, and served only if
every output agrees within the contract's tolerance. Otherwise the original
serves and the reason is kept: in the index, the logs, the model metadata
and ``GET .../parity``. The original stays loaded as the reference for
``POST .../parity``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import onnx

from bnfold.contract import DEFAULT_RTOL, compare_outputs

from .errors import ServiceError, first_line
from .runtime import Runtime, RuntimeOptions
from .signature import Signature, generate_inputs

N_ROWS = 64  # rows of generated input per comparison (batched models)
SEED = 0


@dataclass
class FoldOutcome:
    """What fold on load did: ``served`` is 'folded' or 'original'."""

    served: str
    bn_before: int
    bn_after: int
    reason: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Without the fold report: what the model metadata shows."""
        return {k: v for k, v in self.to_dict().items() if k != "report"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "bn_before": self.bn_before,
            "bn_after": self.bn_after,
            "reason": self.reason,
            "parity": self.parity,
            "seconds": round(self.seconds, 3),
            "report": self.report,
        }


def fold_on_load(
    data: bytes,
    original: Runtime,
    signature: Signature,
    options: RuntimeOptions,
    *,
    label: str,
    rtol: float = DEFAULT_RTOL,
) -> tuple[Runtime | None, FoldOutcome]:
    """The folded runtime to serve (None: serve ``original``) and the outcome."""
    from bnfold.folding import count_bn, fold  # only when a model asks for it

    start = time.perf_counter()
    try:
        model = onnx.load_from_string(data)
        bn_before = count_bn(model)
        if bn_before == 0:
            reason = "the graph holds no BatchNormalization; served as it is"
            return None, FoldOutcome("original", 0, 0, reason)
        folded, report = fold(model)
        bn_after = count_bn(folded)
        candidate = Runtime(folded.SerializeToString(), options, label=f"{label} (folded)")
    except Exception as e:
        outcome = FoldOutcome("original", 0, 0, f"folding failed: {first_line(e)}")
        outcome.seconds = time.perf_counter() - start
        return None, outcome
    outcome = FoldOutcome("original", bn_before, bn_after, report=report.to_dict())
    if (candidate.inputs, candidate.outputs) != (original.inputs, original.outputs):
        outcome.reason = "the folded graph's inputs or outputs differ from the original's"
        return None, _timed(outcome, start)
    try:
        rows = N_ROWS if signature.batched else 1
        feeds = generate_inputs(signature, min(rows, signature.max_batch_size or 1), SEED)
    except ServiceError as e:
        outcome.reason = f"no inputs to prove parity on: {e}"
        return None, _timed(outcome, start)
    parity = compare_outputs(original.run(feeds), candidate.run(feeds), rtol=rtol)
    outcome.parity = parity.summary() | {"device": original.provider}
    if not parity.passed:
        outcome.reason = (
            f"parity failed (max rel error {parity.max_rel_error:.3g} > {rtol:g}); "
            "served the original"
        )
        return None, _timed(outcome, start)
    outcome.served = "folded"
    return candidate, _timed(outcome, start)


def _timed(outcome: FoldOutcome, start: float) -> FoldOutcome:
    outcome.seconds = time.perf_counter() - start
    return outcome
