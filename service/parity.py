"""Parity between reference.onnx (every BN kept) and model.onnx (folded),
recomputed on the device that serves, through ``bnfold.contract.compare``
so the numbers speak the same terms as the converter's stored report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnfold.contract import DEFAULT_MIN_TOP1, DEFAULT_RTOL, compare

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
    report: dict[str, Any] = {
        "model_name": served.name,
        "model_version": served.version_str,
        "parity": (manifest.parity if manifest else None) or {},
        "folding": (manifest.folding if manifest else None) or {},
        "versions": manifest.versions if manifest else {},
        "reference": served.reference_kind,
        # a quantized version (docs/quantization.md): its gate is its parity above
        "precision": manifest.precision if manifest else None,
        "quantization": manifest.quantization if manifest else None,
    }
    if served.folding is not None:  # fold on load measured it here, on this device
        report["fold_on_load"] = served.folding.to_dict()
    return drop_none(report)


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
    rtol = rtol or stored.get("rtol") or DEFAULT_RTOL
    min_top1 = stored.get("min_top1", DEFAULT_MIN_TOP1)
    results = {
        name: compare(expected[name], actual[name], rtol=rtol, min_top1=min_top1).to_dict()
        for name in served.signature.output_names()
    }
    top1 = [r["top1_agreement"] for r in results.values() if r["top1_agreement"] is not None]
    return drop_none(
        {
            "model_name": served.name,
            "model_version": served.version_str,
            "provider": served.provider,
            "reference_provider": reference.provider,
            "n_samples": len(next(iter(feeds.values()))) if served.signature.batched else 1,
            "passed": all(r["passed"] for r in results.values()),
            "max_abs_error": max(r["max_abs_error"] for r in results.values()),
            "max_rel_error": max(r["max_rel_error"] for r in results.values()),
            "top1_agreement": min(top1) if top1 else None,
            "outputs": results,
        }
    )
