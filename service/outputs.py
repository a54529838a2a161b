"""What a request asks of each output beyond its name, on HTTP and gRPC
alike: classification (service/classification.py) and, where set, the
shared-memory region it is written to (service/shm.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .classification import class_count, classify
from .errors import BadRequest
from .shm import no_shared_memory

if TYPE_CHECKING:
    from .shm import Regions, Slice


@dataclass(frozen=True)
class OutputOptions:
    classification: int = 0  # top K as "score:index:label" (0: the tensor itself)
    shm: Slice | None = None  # written into this shared-memory region, not the response

    @property
    def plain(self) -> bool:
        return self.classification == 0 and self.shm is None


def output_options(
    name: str, datatype: str, params: Mapping[str, Any], shm: Regions | None = None
) -> OutputOptions:
    """An output's ``parameters`` (HTTP JSON, or gRPC's as plain values),
    checked against its ``datatype`` and the registered shared-memory regions
    before the model runs."""
    count = class_count(name, params.get("classification"))
    if count and datatype == "BYTES":
        raise BadRequest(f"output {name!r} is not numeric: it cannot be classified")
    where = f"output {name!r}"
    if shm is None:
        no_shared_memory(where, dict(params))
        return OutputOptions(classification=count)
    return OutputOptions(classification=count, shm=shm.slice(where, dict(params)))


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
