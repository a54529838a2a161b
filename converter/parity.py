"""One numerical comparison for every pair of outputs in the project.

PyTorch eval vs reference.onnx, reference.onnx vs model.onnx, ONNX Runtime vs
HTTP: all go through :func:`compare`, so every report speaks the same terms.

- ``max_abs_error``: ``max |actual - expected|``.
- ``max_rel_error``: ``max_abs_error / max |expected|``, the error relative to
  the output's scale. Element-wise relative error explodes on logits near
  zero and says nothing about the model; this normwise form is what the
  thresholds below are stated in.
- ``top1_agreement``: share of rows whose arg-max over the last axis agrees
  (only for outputs of rank >= 2).

numpy only: the service imports this module, and the service has no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# float32 folding reorders a handful of multiply-adds per output; 1e-5 of the
# output's scale is ~80 float32 ulps, loose enough for that and tight enough
# to catch any wrong channel, sign or epsilon.
DEFAULT_RTOL = 1e-5
# Fraction of rows whose predicted class may differ (ties broken differently).
DEFAULT_MIN_TOP1 = 1.0


@dataclass(frozen=True)
class Parity:
    """Outcome of one comparison; ``passed`` applies the thresholds given."""

    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    n_samples: int
    rtol: float
    min_top1: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    expected: np.ndarray,
    actual: np.ndarray,
    *,
    rtol: float = DEFAULT_RTOL,
    min_top1: float = DEFAULT_MIN_TOP1,
) -> Parity:
    """Compare ``actual`` against ``expected`` (the trusted side)."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    if expected.shape != actual.shape:
        raise ValueError(f"shape mismatch: expected {expected.shape}, got {actual.shape}")
    e = expected.astype(np.float64)
    a = actual.astype(np.float64)
    if not (np.isfinite(e).all() and np.isfinite(a).all()):
        return Parity(float("inf"), float("inf"), None, _rows(e), rtol, min_top1, False)
    abs_err = float(np.max(np.abs(a - e))) if e.size else 0.0
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
    top1: float | None = None
    if e.ndim >= 2 and e.shape[-1] > 1 and e.size:
        top1 = float(np.mean(np.argmax(e, axis=-1) == np.argmax(a, axis=-1)))
    passed = rel_err <= rtol and (top1 is None or top1 >= min_top1)
    return Parity(abs_err, rel_err, top1, _rows(e), rtol, min_top1, passed)


def _rows(x: np.ndarray) -> int:
    return int(x.shape[0]) if x.ndim else 1
