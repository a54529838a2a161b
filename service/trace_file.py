"""Triton's trace file (trace mode ``triton``, ``--trace-config triton,file=PATH``).

Each traced inference becomes Triton's JSON trace records, all with the
trace's ``id`` (1, 2, ... in the order traces start):

    {"id": 1, "model_name": "simple", "model_version": 1, "request_id": "..."}
    (request_id: the inference request's ``id``, when it has one)
    {"id": 1, "timestamps": [{"name": "HTTP_RECV_START", "ns": 2356425054785863}]}
    ... HTTP_RECV_END, REQUEST_START, QUEUE_START, COMPUTE_START,
    COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END, REQUEST_END,
    HTTP_SEND_START, HTTP_SEND_END (over gRPC: GRPC_WAITREAD_START,
    GRPC_WAITREAD_END first, GRPC_SEND_START last)
    {"id": 1, "activity": "TENSOR_QUEUE_INPUT",
     "tensor": {"name": "INPUT0", "data": "1,2,3", "shape": "1,3", "dtype": "INT32"}}
    ... TENSOR_BACKEND_OUTPUT (level TENSORS)

Timestamps are ``CLOCK_MONOTONIC`` nanoseconds, as Triton's steady clock,
each taken where bnfold sees the moment (docs/service.md says what each
means here): the protocol's (``Front``: the request handed to bnfold and
its body read, its answer handed to the server to send), the request's
entry into the data plane and its answer encoded (request), entering the
batcher's queue (queue), its batch's start, inputs merged, ONNX Runtime's
run done, and outputs split (compute). Where they go is Triton's layout:

- ``log_frequency`` 0: one JSON array in ``PATH``, ``[`` written at start
  (the file truncated), ``]`` at shutdown (Triton keeps the traces in memory until
  then; bnfold writes each as it ends, so memory does not grow);
- ``log_frequency`` N: every N traces one JSON array in ``PATH.0``,
  ``PATH.1``, ...; the rest at shutdown in the next one. A model with a
  ``log_frequency`` of its own gathers its traces apart from the server's.

The file is opened by the operator's setting, never a path a client names.
Writes happen on the event loop (small, buffered, flushed per trace); one
that fails is logged and the request answered all the same.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .batching import Feeds
from .protocol import DATATYPE_OF
from .tracing import Sampled

log = logging.getLogger("bnfold.service")


def _ns(perf_counter: float) -> int:
    """A ``perf_counter`` reading (CLOCK_MONOTONIC on Linux) in nanoseconds."""
    return int(perf_counter * 1e9)


def _data(array: np.ndarray) -> str:
    """Triton's ``data``: the elements, comma-separated."""
    items = array.ravel().tolist()
    return ",".join(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in items)


Stamp = tuple[str, float]  # a timestamp's name and its perf_counter reading
COMPUTE = ("QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START")


class Trace:
    """One traced inference being answered."""

    def __init__(
        self, trace_id: int, model: str, sampled: Sampled, front: Sequence[Stamp] = ()
    ) -> None:
        self.id = trace_id
        self.model = model
        self.request_id = ""  # the inference request's "id", when it has one
        self.sampled = sampled
        self.front = front  # the protocol's stamps before the data plane
        self.start = time.perf_counter()
        self.tensors: list[tuple[Feeds, Feeds]] | None = [] if "TENSORS" in sampled.levels else None
        self.version: str | None = None
        self.stamps: Sequence[float] = ()
        self.end = self.start
        self.after: list[Stamp] = []  # the protocol's stamps after the answer

    def finish(self, version: str | None, stamps: Sequence[float]) -> None:
        """Answered (or failed) by the data plane: ``stamps``, the batcher's
        (enqueued, started, inputs merged, run done, finished) when it got
        there."""
        self.version, self.stamps, self.end = version, stamps, time.perf_counter()

    def records(self, datatype: Mapping[Any, str]) -> list[dict[str, Any]]:
        """Triton's records of this trace, once finished."""
        header: dict[str, Any] = {"id": self.id, "model_name": self.model}
        version = self.version
        header["model_version"] = int(version) if version and version.isdigit() else -1
        if self.request_id:
            header["request_id"] = self.request_id
        records = [header]
        if "TIMESTAMPS" in self.sampled.levels:
            named = [*self.front, ("REQUEST_START", self.start)]
            if len(self.stamps) == len(COMPUTE) + 1:
                named += zip(COMPUTE, self.stamps, strict=False)
                named.append(("COMPUTE_END", self.stamps[-1]))
            named.append(("REQUEST_END", self.end))
            named += self.after
            records += [
                {"id": self.id, "timestamps": [{"name": name, "ns": _ns(t)}]} for name, t in named
            ]
        for inputs, outputs in self.tensors or ():
            for activity, tensors in (
                ("TENSOR_QUEUE_INPUT", inputs),
                ("TENSOR_BACKEND_OUTPUT", outputs),
            ):
                for name, array in tensors.items():
                    tensor = {
                        "name": name,
                        "data": _data(array),
                        "shape": ",".join(map(str, array.shape)),
                        "dtype": datatype.get(array.dtype, str(array.dtype)),
                    }
                    records.append({"id": self.id, "activity": activity, "tensor": tensor})
        return records


class Front:
    """One request's stamps of the protocol that carries it (HTTP, gRPC),
    made only in Triton's trace mode: those taken before the data plane
    samples it (``stamps``); once it is traced, its ``trace``, which
    ``done`` writes after the protocol's last stamps (or, without them, when
    its answer could not be sent)."""

    __slots__ = ("file", "stamps", "trace")

    def __init__(self, file: TraceFile, *stamps: Stamp) -> None:
        self.file = file
        self.stamps = list(stamps)
        self.trace: Trace | None = None

    def done(self, *stamps: Stamp) -> None:
        trace, self.trace = self.trace, None
        if trace is not None:
            trace.after += stamps
            self.file.write(trace, trace.records(DATATYPE_OF))


class TraceFile:
    """The operator's trace file and its indexed siblings."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._ids = itertools.count(1)
        self._index = itertools.count(0)
        self._main: IO[str] | None = None  # PATH, opened at start
        self._empty = True  # nothing written in PATH yet
        self._groups: dict[str | None, list[str]] = {}  # traces waiting for PATH.i

    def begin(self, model: str, sampled: Sampled, front: Sequence[Stamp] = ()) -> Trace:
        return Trace(next(self._ids), model, sampled, front)

    def write(self, trace: Trace, records: list[dict[str, Any]]) -> None:
        """One trace's records, where its ``log_frequency`` sends them; a
        trace that cannot be written (a full disk) is logged and dropped,
        never the answer of the request it traces."""
        try:
            self._write(trace, records)
        except OSError as e:
            log.warning("trace %d not written to %s: %s", trace.id, self.path, e)

    def _write(self, trace: Trace, records: list[dict[str, Any]]) -> None:
        text = ",".join(json.dumps(r, separators=(",", ":")) for r in records)
        sampled = trace.sampled
        waiting = self._groups.setdefault(sampled.group, [])
        if sampled.log_frequency == 0:
            if waiting:  # gathered under a log_frequency since set back to 0
                self._save_indexed(sampled.group)
            self._append(text)
            return
        waiting.append(text)
        if len(waiting) >= sampled.log_frequency:
            self._save_indexed(sampled.group)

    def open(self) -> None:
        """``PATH`` truncated and its ``[`` written, at start: a path that
        cannot be written stops the start, not the first traced request."""
        self._main = self.path.open("w", encoding="utf-8")
        self._main.write("[")
        self._main.flush()
        self._empty = True

    def _append(self, text: str) -> None:
        if self._main is None:
            self.open()
        assert self._main is not None
        if not self._empty:
            self._main.write(",")
        self._main.write(text)
        self._main.flush()
        self._empty = False

    def _save_indexed(self, group: str | None) -> None:
        waiting = self._groups.pop(group, [])
        target = self.path.with_name(f"{self.path.name}.{next(self._index)}")
        part = target.with_name(target.name + ".part")
        try:
            part.write_text("[" + ",".join(waiting) + "]", encoding="utf-8")
            os.replace(part, target)  # whole or absent
        except OSError:
            part.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """The traces still gathered to their indexed files; ``PATH`` closed
        (its ``]`` written)."""
        for group in [g for g, waiting in self._groups.items() if waiting]:
            self._save_indexed(group)
        if self._main is not None:
            self._main.write("]")
            self._main.close()
            self._main = None
