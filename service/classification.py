"""Triton's classification extension on V2 inference (HTTP and gRPC).

A requested output with ``parameters.classification: K`` comes back as
the K largest values instead of the tensor: BYTES elements
``"score:index:label"`` (``"score:index"`` when the model has no labels),
largest first, the score printed as Triton prints it (C's ``%f`` for
floats). For a model with a batch axis each row is classified on its own
(shape ``[batch, K]``); without one the whole tensor is (shape ``[K]``).
K larger than the classes is capped at the number of classes, as Triton does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import BadRequest

# Triton's bound on the tensor classified (classification.cc,
# kMaxClassificationElements): a larger output is refused, not sorted.
MAX_CLASSIFIED_ELEMENTS = 1_000_000
# Triton's names of the datatypes that cannot be classified (no fixed size).
_UNCLASSIFIABLE = {"O": "BYTES", "U": "BYTES", "S": "BYTES"}


def class_count(output: str, value: object) -> int:
    """``parameters.classification`` of ``output`` (0: no classification)."""
    if value is None or value is False:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(
            f"output {output!r}: parameters.classification must be a non-negative integer"
        )
    return value


def _score(value: np.generic, floating: bool) -> str:
    return f"{float(value):f}" if floating else str(int(value))


def classify(
    output: str, array: np.ndarray, k: int, labels: Sequence[str], *, batched: bool
) -> np.ndarray:
    """The top ``k`` of ``array`` (per row when ``batched``) as BYTES."""
    if array.dtype.kind not in "biuf":
        kind = _UNCLASSIFIABLE.get(array.dtype.kind, str(array.dtype))
        raise BadRequest(
            f"class result not available for output due to unsupported type '{kind}'"
            f" (output {output!r})"
        )
    if array.size > MAX_CLASSIFIED_ELEMENTS:
        raise BadRequest("classification output tensor too large")
    if batched and array.ndim == 0:
        raise BadRequest(f"output {output!r} is a scalar: it cannot be classified per row")
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    floating = array.dtype.kind == "f"
    out = np.empty((rows.shape[0], k), dtype=object)
    for r, row in enumerate(rows):
        # largest first; among equal values the lower index first (stable)
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for j, index in enumerate(order.tolist()):
            text = f"{_score(row[index], floating)}:{index}"
            if index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            out[r, j] = text
    return out if batched else out.reshape(k)
