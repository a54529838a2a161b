"""Parity on live traffic (``bnfold serve --shadow-parity RATE``).

A sampled share of the requests a version answers is also run through the
version's reference, off the request's path, and compared with the one
comparator (``contract.compare_outputs``) at the version's gate:

    request --infer--> response                         (never waits for it)
        `-- sampled (RATE): inputs copied --> bounded queue --> one worker thread:
            reference (CPU, 1 ONNX Runtime thread, nice 19) --> compare_outputs --> LiveParity

The reference of a version (:func:`reference_source`):

- a folded version: its ``reference.onnx`` (every BN kept), checked against
  the manifest's sha256 as at load;
- a version that fold on load folded: the original graph it loaded with;
- an int8 or fp16 version: the float32 folded graph its gate compared with,
  which is ``reference.onnx`` folded again in memory (the graph convert,
  import and quantize folded and quantized; whether its sha256 is the one
  the manifest records under ``quantization.source`` is said with it);
- a version without one (a bare ``model.onnx`` served as it is) is not sampled.

Bounded: the request path draws one random number, and for a sample copies
its inputs and puts them on a queue of :data:`QUEUE_SIZE`; when the queue is
full the sample is dropped and counted. One worker thread per process, at
the lowest CPU priority (Linux: nice 19 for that thread), opens each
reference on its first sample and runs it with one ONNX Runtime thread (no
thread pool of its own): under load it gets the CPU that serving leaves and
samples are dropped rather than serving slowed.

The gate: a float32 version is held to the fold's tolerance
(``BNFOLD_FOLD_RTOL``) and to every row's top-1 (``DEFAULT_MIN_TOP1``); an
int8 or fp16 version to its gate (the manifest's ``parity``: ``rtol`` and
``min_top1``). Live numbers count from the version's load: top-1 agreement
is the share of compared rows whose top-1 class the reference agrees with
(classifier outputs, rank >= 2); the errors are the largest over every
compared request. After :data:`MIN_ROWS` rows a version is below its gate
when its agreement is under ``min_top1``, or, without a classifier output,
when its largest relative error is over ``rtol``: then it is flagged in the
repository index (its reason beside READY), ``/parity``'s ``live``,
``bnfold_shadow_below_gate`` and the log. It keeps serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bnfold.contract import (
    DEFAULT_MIN_TOP1,
    DEFAULT_RTOL,
    REFERENCE_FILE,
    Manifest,
    ParityReport,
    compare_outputs,
)

from . import model_limits
from .errors import first_line
from .metrics import Metrics
from .runtime import Runtime, RuntimeOptions, external_data_files

if TYPE_CHECKING:
    from .model import ServedModel

log = logging.getLogger("bnfold.service")

QUEUE_SIZE = 64  # samples waiting for the worker, all versions of a process
# A verdict on fewer rows says little: at the int8 gate (99%) 100 rows is
# the fewest on which one disagreement decides.
MIN_ROWS = 100
QUANTIZED = ("int8", "fp16")
LOWEST_PRIORITY = 19  # nice value of the worker thread
FOLD_ON_LOAD_REFERENCE = "original graph (fold on load, in memory)"

Feeds = dict[str, np.ndarray]
# The bytes of a reference graph and what it is, read when first needed.
ReferenceSource = Callable[[], tuple[bytes, str]]


@dataclass(frozen=True)
class Gate:
    """What live traffic holds a version to."""

    rtol: float  # largest relative error (max |served - reference| / max |reference|)
    min_top1: float  # lowest share of rows whose top-1 class agrees


def _threshold(value: object, default: float) -> float:
    """A threshold from a manifest (repository bytes): a finite number >= 0, else ``default``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value) if math.isfinite(value) and value >= 0 else default


def live_gate(manifest: Manifest | None, fold_rtol: float) -> Gate:
    """The fold's tolerance for a float32 version; the gate's for int8 and fp16."""
    if manifest is not None and manifest.precision in QUANTIZED:
        parity = manifest.parity if isinstance(manifest.parity, dict) else {}
        return Gate(
            _threshold(parity.get("rtol"), DEFAULT_RTOL),
            _threshold(parity.get("min_top1"), DEFAULT_MIN_TOP1),
        )
    return Gate(fold_rtol, DEFAULT_MIN_TOP1)


def reference_source(
    served: ServedModel, max_bytes: int, original: bytes | None = None
) -> ReferenceSource | None:
    """How to read the graph ``served``'s live samples are compared with
    (``original``: the graph fold on load folded); None when it has none."""
    if original is not None:
        return lambda: (original, FOLD_ON_LOAD_REFERENCE)
    manifest = served.manifest
    if manifest is None or REFERENCE_FILE not in manifest.files:
        return None
    version_dir = served.path

    def stored() -> tuple[bytes, str]:
        from .loading import read_reference

        data = read_reference(version_dir, manifest, max_bytes, version_dir.parents[1])
        external_data_files(data, version_dir, max_bytes)  # what a served graph is refused for
        model_limits.check(data, max_bytes)
        if manifest.precision in QUANTIZED:
            return float32_folded(data, manifest)
        return data, REFERENCE_FILE

    return stored


def float32_folded(reference: bytes, manifest: Manifest) -> tuple[bytes, str]:
    """``reference.onnx`` folded: the float32 graph a quantized version's gate
    compared with, and whether it is byte for byte the one it recorded."""
    import onnx

    from bnfold.folding import fold

    folded, _ = fold(onnx.load_from_string(reference))
    data = folded.SerializeToString()
    record = manifest.quantization if isinstance(manifest.quantization, dict) else {}
    source = record.get("source")
    recorded = source.get("sha256") if isinstance(source, dict) else None
    same = hashlib.sha256(data).hexdigest() == recorded
    said = "its sha256 is the one the gate measured" if same else "not byte for byte the gate's"
    return data, f"float32 folded graph ({REFERENCE_FILE} folded in memory; {said})"


@dataclass(frozen=True)
class _Sample:
    live: LiveParity
    feeds: Feeds
    outputs: Mapping[str, np.ndarray]
    rows: int


class LiveParity:
    """Live parity of one version: its samples, its reference (opened by the
    worker on the first one), its numbers since load and its verdict."""

    def __init__(
        self,
        shadow: Shadow,
        name: str,
        version: str,
        gate: Gate,
        source: ReferenceSource,
        *,
        prepare: Callable[[Runtime], None] = lambda runtime: None,
    ) -> None:
        self.name = name
        self.version = version
        self.gate = gate
        self._shadow = shadow
        self._source: ReferenceSource | None = source
        self._prepare = prepare  # the served signature's wire shapes (Runtime.adopt)
        self._reference: Runtime | None = None
        self.reference_what = ""  # what the reference is, once opened
        self.reference_problem = ""  # why it could not be opened
        self._lock = threading.Lock()
        self.requests = 0
        self.rows = 0
        self.agreed = 0.0  # rows whose top-1 agrees (a share per row for rank > 2)
        self.classifier = False  # an output has a top-1 (rank >= 2)
        self.max_abs_error = 0.0
        self.max_rel_error = 0.0
        self.dropped: dict[str, int] = {}
        self.below_gate = False
        self.closed = False
        labels = (name, version)
        self._labels = labels
        m = shadow.metrics
        if m.multiprocess_dir is None:  # a reloaded version starts again
            for gauge in (m.shadow_agreement, m.shadow_max_abs_error, m.shadow_max_rel_error):
                gauge.remove(*labels)
        m.shadow_below_gate.labels(*labels).set(0)
        m.shadow_samples.labels(*labels)  # the series exist (at 0) from the load on

    # --- the request path (event loop)
    def offer(self, feeds: Feeds, outputs: Mapping[str, np.ndarray], rows: int) -> None:
        """A request's inputs and served outputs, compared later when sampled.
        Never waits: a full queue drops the sample."""
        shadow = self._shadow
        if shadow.rate < 1.0 and random.random() >= shadow.rate:
            return
        if self.reference_problem:  # its reference could not be opened
            self.drop("no_reference")
            return
        # copied: an input may live in a shared-memory region its client reuses
        sample = _Sample(self, {k: np.array(v) for k, v in feeds.items()}, outputs, rows)
        if not shadow.put(sample):
            self.drop("queue_full")

    # --- the worker thread
    def drop(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self._shadow.metrics.shadow_dropped.labels(*self._labels, reason).inc()

    def reference(self) -> Runtime | None:
        """The reference session (worker thread only), opened on first use."""
        if self._reference is None and self._source is not None:
            source, self._source = self._source, None
            try:
                data, what = source()
                runtime = Runtime(data, self._shadow.options, label=f"{self.label} (shadow)")
                self._prepare(runtime)
            except Exception as e:
                self.reference_problem = first_line(e) or type(e).__name__
                log.warning(
                    "%s: shadow parity has no reference (%s); its samples are dropped",
                    self.label,
                    self.reference_problem,
                )
                return None
            self._reference, self.reference_what = runtime, what
            log.info("%s: shadow parity compares with the %s", self.label, what)
        return self._reference

    def compare(self, sample: _Sample) -> None:
        if self.closed:  # retired while its sample waited
            return
        reference = self.reference()
        if reference is None:
            self.drop("no_reference")
            return
        try:
            expected = reference.run(sample.feeds)
            names = [n for n in expected if n in sample.outputs]
            report = compare_outputs(
                {n: expected[n] for n in names},
                sample.outputs,
                rtol=self.gate.rtol,
                min_top1=self.gate.min_top1,
                n_samples=sample.rows,
            )
        except Exception as e:
            log.debug("%s: shadow parity sample failed: %s", self.label, first_line(e))
            self.drop("failed")
            return
        self.record(report)

    def record(self, report: ParityReport) -> None:
        """One compared request in the numbers, the series and the verdict."""
        rows = report.n_samples
        top1 = report.top1_agreement
        with self._lock:
            self.requests += 1
            self.rows += rows
            if top1 is not None:
                self.classifier = True
                self.agreed += top1 * rows
            self.max_abs_error = max(self.max_abs_error, report.max_abs_error)
            self.max_rel_error = max(self.max_rel_error, report.max_rel_error)
            agreement = self.agreement
            below = self._below_gate()
            changed, self.below_gate = below != self.below_gate, below
        m, labels = self._shadow.metrics, self._labels
        m.shadow_samples.labels(*labels).inc()
        m.shadow_rows.labels(*labels).inc(rows)
        m.shadow_rel_error.labels(*labels).observe(report.max_rel_error)
        m.shadow_max_abs_error.labels(*labels).set(self.max_abs_error)
        m.shadow_max_rel_error.labels(*labels).set(self.max_rel_error)
        if top1 is not None and agreement is not None:
            m.shadow_agreed_rows.labels(*labels).inc(top1 * rows)
            m.shadow_agreement.labels(*labels).set(agreement)
        if changed:
            m.shadow_below_gate.labels(*labels).set(1 if below else 0)
            if below:
                log.warning("%s: %s; it keeps serving", self.label, self.flag())
            else:
                log.info("%s: live parity is back within its gate", self.label)

    # --- reads
    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.rows if self.classifier and self.rows else None

    def _below_gate(self) -> bool:
        if self.rows < MIN_ROWS:
            return False
        agreement = self.agreement
        if agreement is not None:
            return agreement < self.gate.min_top1
        return self.max_rel_error > self.gate.rtol

    def flag(self) -> str:
        """What the index says beside READY while the version is below its gate."""
        agreement = self.agreement
        if agreement is not None:
            measured = f"top-1 agreement {agreement:.4f} < {self.gate.min_top1:g}"
        else:
            measured = f"max rel error {self.max_rel_error:.3g} > {self.gate.rtol:g}"
        return (
            f"live parity below its gate: {measured} over {self.rows} rows of "
            f"{self.requests} sampled requests (shadow parity)"
        )

    def to_dict(self) -> dict[str, Any]:
        """``/parity``'s ``live``: the numbers in the terms of a parity report."""
        with self._lock:
            out: dict[str, Any] = {
                "rate": self._shadow.rate,
                "reference": self.reference_what or None,
                "reference_problem": self.reference_problem or None,
                "requests": self.requests,
                "dropped": dict(self.dropped),
                "n_samples": self.rows,
                "top1_agreement": self.agreement,
                "max_abs_error": self.max_abs_error if self.requests else None,
                "max_rel_error": self.max_rel_error if self.requests else None,
                "rtol": self.gate.rtol,
                "min_top1": self.gate.min_top1,
                "min_rows": MIN_ROWS,
                "below_gate": self.below_gate,
            }
            if self.rows >= MIN_ROWS:
                out["passed"] = not self.below_gate
        return out

    def close(self) -> None:
        """The version retired: its reference is freed (by the worker if it runs it)."""
        self.closed = True
        self._source = None
        self._reference = None


class Shadow:
    """The bounded queue and the one worker thread of a process."""

    def __init__(
        self,
        rate: float,
        metrics: Metrics,
        *,
        max_model_bytes: int = 2 << 30,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.rate = rate
        self.metrics = metrics
        self.max_model_bytes = max_model_bytes
        # CPU, one ONNX Runtime thread (the caller's: no pool), no spinning
        self.options = RuntimeOptions(
            device="cpu",
            intra_op_threads=1,
            inter_op_threads=1,
            spinning=False,
            max_model_bytes=max_model_bytes,
        )
        self._queue: queue.Queue[_Sample | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(
        self, served: ServedModel, fold_rtol: float, original: bytes | None = None
    ) -> LiveParity | None:
        """``served``'s live parity; None when it has no reference."""
        source = reference_source(served, self.max_model_bytes, original)
        if source is None:
            return None
        gate = live_gate(served.manifest, fold_rtol)
        signature = served.signature
        return LiveParity(
            self,
            served.name,
            served.version_str,
            gate,
            source,
            prepare=lambda r: r.adopt(signature),
        )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="bnfold-shadow", daemon=True)
            self._thread.start()

    def put(self, sample: _Sample) -> bool:
        """Queue ``sample``; False when the queue is full (or closed)."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            return False
        return True

    def idle(self) -> bool:
        """Nothing queued and nothing being compared."""
        return self._queue.unfinished_tasks == 0

    def _work(self) -> None:
        _lower_priority()
        while True:
            sample = self._queue.get()
            try:
                if sample is None or self._closed:
                    return
                sample.live.compare(sample)
            except Exception:  # one bad sample must not end the worker
                log.exception("shadow parity: a sample failed")
            finally:
                self._queue.task_done()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (what is queued is dropped uncounted)."""
        self._closed = True
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):  # full: it sees _closed after its sample
            self._queue.put_nowait(None)
        self._thread.join(timeout)


def _lower_priority() -> None:
    """The calling thread at the lowest CPU priority (on Linux the nice value
    is per thread); elsewhere, or when refused, it stays as it is."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
