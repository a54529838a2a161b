"""What a request asks of each output beyond its name, on HTTP and gRPC
alike: classification (service/classification.py) and, where set, the
shared-memory region it is written to (service/shm.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .classification import class_count, classify
from .errors import BadRequest

if TYPE_CHECKING:
    from .shm import Slice
    from .signature import TensorSpec


@dataclass(frozen=True)
class OutputOptions:
    classification: int = 0  # top K as "score:index:label" (0: the tensor itself)
    shm: Slice | None = None  # written into this shared-memory region, not the response

    @property
    def plain(self) -> bool:
        return self.classification == 0 and self.shm is None


PLAIN = OutputOptions()


def classes(spec: TensorSpec, batched: bool) -> int | None:
    """How many values one classification ranks (per row when ``batched``),
    when the signature fixes it."""
    dims = spec.shape[1:] if batched else spec.shape
    return None if any(d < 0 for d in dims) else math.prod(dims)


def output_options(
    name: str,
    spec: TensorSpec,
    params: Mapping[str, Any],
    batched: bool,
    where: Slice | None = None,
) -> OutputOptions:
    """An output's ``parameters`` (HTTP JSON, or gRPC's as plain values),
    checked against its spec before the model runs; ``where`` is the
    shared-memory region they name. K is bounded by the output's size, as
    Triton returns at most that many classes."""
    count = class_count(name, params.get("classification"))
    if count and spec.datatype == "BYTES":
        raise BadRequest(
            "class result not available for output due to unsupported type 'BYTES'"
            f" (output {name!r})"
        )
    if count and where is not None:
        raise BadRequest("Output can't set both 'shared_memory_region' and 'classification'")
    size = classes(spec, batched)
    if size is not None:
        count = min(count, max(size, 1))
    if count == 0 and where is None:
        return PLAIN
    return OutputOptions(classification=count, shm=where)


def finish(
    name: str,
    array: np.ndarray,
    options: OutputOptions | None,
    labels: Sequence[str],
    batched: bool,
) -> np.ndarray:
    """The output as the request asked for it."""
    if options is None or options.classification == 0:
        return array
    return classify(name, array, options.classification, labels, batched=batched)
