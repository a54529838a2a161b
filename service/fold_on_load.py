"""Fold on load: the BNs of a plain ONNX model folded in memory, proven, then served.

A model that arrives with its BatchNormalizations (a Triton repository, a
bare ``model.onnx``) is folded when it loads; the folded graph is run beside
the original on the serving device on generated inputs, and served only if
every output agrees within the contract's tolerance. Otherwise the original
serves and the reason is kept, with what the user can do about it: in the
index, the logs, the model metadata and ``GET .../parity``. The original
stays loaded as the reference for ``POST .../parity``.

A graph that keeps its weights in external data (torch's dynamo exporter
writes ``model.onnx.data`` beside the graph) is folded too: its external
tensors are read into the graph from inside the version folder, through
:func:`read_external` (the one function that opens those files: the
repository's confinement rules, no link out, regular files only), and the
folded graph serves with its weights in memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import onnx

from bnfold.contract import DEFAULT_RTOL, compare_outputs

from .errors import ServiceError, first_line
from .runtime import Runtime, RuntimeOptions
from .signature import Signature, generate_inputs

log = logging.getLogger("bnfold.service")

N_ROWS = 64  # rows of generated input per comparison (batched models)
SEED = 0
PROTOBUF_LIMIT = (2 << 30) - 1  # a serialized ModelProto cannot be larger
OFFLINE = "fold it offline with `bnfold import` and serve the folded version"


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

    def note(self) -> str:
        """One line for the repository index and the load log."""
        if self.served == "folded":
            error = self.parity.get("max_rel_error", 0.0)
            return (
                f"folded on load: {self.bn_before} BNs -> {self.bn_after}, parity max rel "
                f"error {error:.3g} on {self.parity.get('device', '?')}"
            )
        return f"fold on load: {self.reason}"

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
    """The folded runtime to serve (None: serve ``original``) and the outcome.

    ``data`` holds every weight: external data was read into it through
    service/files.py (``files.embed_external_data``) before ``original``
    loaded, so the folded graph serves from memory too."""
    from bnfold.folding import count_bn, fold  # only when a model asks for it

    start = time.perf_counter()
    try:
        model = onnx.load_from_string(data)
        bn_before = count_bn(model)
        if bn_before == 0:
            reason = "the graph holds no BatchNormalization; served as it is"
            return None, _log(label, _timed(FoldOutcome("original", 0, 0, reason), start))
        folded, report = fold(model)
        bn_after = count_bn(folded)
        if folded.ByteSize() > PROTOBUF_LIMIT:
            reason = (
                "the folded graph with its weights is over protobuf's 2 GiB limit and cannot "
                f"be served from memory; served the original unfolded ({OFFLINE})"
            )
            outcome = FoldOutcome("original", bn_before, bn_after, reason)
            return None, _log(label, _timed(outcome, start))
        candidate = Runtime(folded.SerializeToString(), options, label=f"{label} (folded)")
        candidate.adopt(signature)
    except Exception as e:
        reason = f"folding failed: {first_line(e)}; served the original unfolded ({OFFLINE})"
        return None, _log(label, _timed(FoldOutcome("original", 0, 0, reason), start))
    outcome = FoldOutcome("original", bn_before, bn_after, report=report.to_dict())
    if (candidate.inputs, candidate.outputs) != (original.inputs, original.outputs):
        outcome.reason = (
            "the folded graph's inputs or outputs differ from the original's; served the "
            "original unfolded"
        )
        return None, _log(label, _timed(outcome, start))
    try:
        rows = N_ROWS if signature.batched else 1
        feeds = generate_inputs(signature, min(rows, signature.max_batch_size or 1), SEED)
    except ServiceError as e:
        outcome.reason = (
            f"no inputs to prove parity on: {e}; served the original unfolded "
            f"(pin the variable dimensions in the configuration's dims, or {OFFLINE})"
        )
        return None, _log(label, _timed(outcome, start))
    parity = compare_outputs(original.run(feeds), candidate.run(feeds), rtol=rtol)
    outcome.parity = parity.summary() | {"device": original.provider}
    if not parity.passed:
        outcome.reason = (
            f"parity failed (max rel error {parity.max_rel_error:.3g} > {rtol:g}); "
            "served the original (BNFOLD_FOLD_RTOL sets the tolerance; `bnfold import` "
            "shows the fold report per BN)"
        )
        return None, _log(label, _timed(outcome, start))
    outcome.served = "folded"
    return candidate, _log(label, _timed(outcome, start))


def _timed(outcome: FoldOutcome, start: float) -> FoldOutcome:
    outcome.seconds = time.perf_counter() - start
    return outcome


def _log(label: str, outcome: FoldOutcome) -> FoldOutcome:
    if outcome.served == "folded":
        log.info(
            "%s: fold on load: %d BNs -> %d, parity max rel error %.3g on %s; serving the "
            "folded graph",
            label,
            outcome.bn_before,
            outcome.bn_after,
            outcome.parity.get("max_rel_error", 0.0),
            outcome.parity.get("device", "?"),
        )
    else:
        log.info("%s: fold on load: %s", label, outcome.reason)
    return outcome
