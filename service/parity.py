"""Parity between reference.onnx (every BN kept) and model.onnx (folded),
recomputed on the device that serves, through the contract's
``compare_outputs`` (a :class:`~bnfold.contract.ParityReport`) so the
numbers speak the same terms as the converter's stored report; the fold's
numbers are the fold report's one summary (``FoldSummary``), for stored
manifests written before it existed too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnfold.contract import DEFAULT_MIN_TOP1, DEFAULT_RTOL, compare_outputs
from bnfold.folding.report import FoldSummary

from .batching import Feeds
from .model import ServedModel
from .runtime import Runtime


def drop_none(value: Any) -> Any:
    """``value`` without ``None`` anywhere: no response field is ever null."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value if v is not None]
    return value


def stored_report(served: ServedModel) -> dict[str, Any]:
    """What the converter measured when it wrote the version."""
    manifest = served.manifest
    folding = dict((manifest.folding if manifest else None) or _folded_on_load(served))
    if isinstance(folding.get("report"), dict) and "summary" not in folding:
        folding["summary"] = FoldSummary.of(folding["report"]).to_dict()
    report: dict[str, Any] = {
        "model_name": served.name,
        "model_version": served.version_str,
        "parity": (manifest.parity if manifest else None) or {},
        "folding": folding,
        "versions": manifest.versions if manifest else {},
        "reference": served.reference_kind,
        # a quantized version (docs/quantization.md): its gate is its parity above
        "precision": manifest.precision if manifest else None,
        "quantization": manifest.quantization if manifest else None,
    }
    if served.live is not None:  # --shadow-parity: live requests, compared since load
        report["live"] = served.live.to_dict()
    if served.folding is not None:  # fold on load measured it here, on this device
        on_load = served.folding.to_dict()
        if on_load.get("report"):
            on_load["summary"] = FoldSummary.of(on_load["report"]).to_dict()
        report["fold_on_load"] = on_load
    return drop_none(report)


def _folded_on_load(served: ServedModel) -> dict[str, Any]:
    """Without a manifest, the fold that fold on load served, in the
    manifest's terms (the converter's ``folding``); {} when none served."""
    outcome = served.folding
    if outcome is None or outcome.served != "folded":
        return {}
    return {
        "folded": outcome.bn_after < outcome.bn_before,
        "bn_before": outcome.bn_before,
        "bn_after": outcome.bn_after,
        "report": outcome.report,
    }


async def _run_chunked(served: ServedModel, runtime: Runtime, feeds: Feeds) -> Feeds:
    step = served.signature.max_batch_size
    rows = len(next(iter(feeds.values()))) if served.signature.batched else 1
    if not served.signature.batched or rows <= step:
        return await served.run_direct(runtime, feeds)
    parts = []
    for start in range(0, rows, step):
        chunk = {k: v[start : start + step] for k, v in feeds.items()}
        parts.append(await served.run_direct(runtime, chunk))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # (rows, ...)


async def measure(served: ServedModel, feeds: Feeds, rtol: float | None) -> dict[str, Any]:
    """Run both graphs on ``feeds`` and compare every output."""
    reference = await served.reference()
    expected = await _run_chunked(served, reference, feeds)
    actual = await _run_chunked(served, served.runtime, feeds)
    # a quantized version is held to its gate's thresholds, stored as its parity's
    stored = (served.manifest.parity or {}) if served.manifest and served.manifest.precision else {}
    names = served.signature.output_names()
    parity = compare_outputs(
        {name: expected[name] for name in names},
        actual,
        rtol=rtol or stored.get("rtol") or DEFAULT_RTOL,
        min_top1=stored.get("min_top1", DEFAULT_MIN_TOP1),
        n_samples=len(next(iter(feeds.values()))) if served.signature.batched else 1,
    )
    return drop_none(
        {
            "model_name": served.name,
            "model_version": served.version_str,
            "provider": served.provider,
            "reference_provider": reference.provider,
            **parity.summary(),
            "outputs": {name: p.to_dict() for name, p in parity.outputs.items()},
        }
    )
