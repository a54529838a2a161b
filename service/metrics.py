"""Prometheus metrics and Triton's statistics extension, from one set of events.

``ModelMetrics`` is the batcher's observer for one model version: each batch
and each finished request updates both the Prometheus series (``/metrics``)
and the counters ``GET /v2/models/{m}/stats`` reports in Triton's format
(the one perf_analyzer reads for its server-side breakdown). A registry per
app keeps several servers in one process (tests) apart.

With ``bnfold serve --workers N`` each worker is a process of its own:
``service.cli`` sets ``PROMETHEUS_MULTIPROC_DIR`` (an emptied folder) before
the workers start, so prometheus_client keeps every value in a per-process
file there and ``/metrics`` sums counters and histograms over all workers,
whichever worker answers the scrape. ``bnfold_model_ready`` is reported per
live worker, with a ``pid`` label; the load gauges (``bnfold_queue_depth``,
``bnfold_requests_in_flight``) are summed over live workers. Triton's
statistics (``/v2/models/{m}/stats``) stay per worker.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from .triton_metrics import failure_reason

if TYPE_CHECKING:
    from .triton_metrics import LatencyObserver, TritonMetrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The files prometheus_client writes in that folder (and the only ones removed).
MULTIPROC_FILES = (
    "counter_*.db",
    "gauge_*.db",
    "histogram_*.db",
    "summary_*.db",
    "triton_*.json",  # Triton's families, a file per worker (service/triton_metrics.py)
)


def multiprocess_dir() -> str | None:
    """The shared metrics folder when prometheus_client runs in multiprocess
    mode. That mode is chosen when prometheus_client is imported, from
    prometheus_client's own variable, so this reads it too (not a bnfold
    setting: ``service.cli`` sets it before the workers start)."""
    return os.environ.get(MULTIPROC_ENV) or None


# The front end answering the current request ("http" or "grpc"): a label of
# the series counted deep inside the data plane (cancelled requests).
protocol: contextvars.ContextVar[str] = contextvars.ContextVar("bnfold_protocol", default="http")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Relative error of one compared request (shadow parity): float32 folding
# rounds near 1e-7, int8 near 1e-2.
ERROR_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9) * count

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _BatchStat:
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)


class ModelMetrics:
    """Counters of one model version; also the batcher's ``BatchObserver``."""

    def __init__(self, metrics: Metrics, name: str, version: int) -> None:
        self.name = name
        self.version = version
        labels = {"model": name, "version": str(version)}
        self._requests = metrics.infer_requests.labels(**labels)
        self._latency = metrics.infer_latency.labels(**labels)
        self._queue = metrics.queue_time.labels(**labels)
        self._compute = metrics.compute_time.labels(**labels)
        self._batch = metrics.batch_size.labels(**labels)
        self._queue_depth = metrics.queue_depth.labels(**labels)
        self._in_flight = metrics.in_flight.labels(**labels)
        self._cancelled = metrics.cancelled
        self._lock = threading.Lock()
        self.success = _Duration()
        self.fail = _Duration()
        self.queue = _Duration()
        self.compute_input = _Duration()
        self.compute_infer = _Duration()
        self.compute_output = _Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, _BatchStat] = {}
        # Triton's families (service/triton_metrics.py): failures by Triton's
        # reason, requests waiting for a batch, and the summaries and
        # histogram when --metrics-config asks for them.
        self.failures: dict[str, int] = {}
        self.pending = 0
        self.latency: LatencyObserver | None = (
            metrics.triton.observer() if metrics.triton is not None else None
        )

    # --- per request (event loop)
    def request_done(self, seconds: float) -> None:
        self._requests.inc()
        self._latency.observe(seconds)
        with self._lock:
            self.success.add(seconds)
        if self.latency is not None:
            self.latency.request(seconds)

    def request_failed(self, seconds: float, error: BaseException | None = None) -> None:
        """Triton's ``fail``, and its failure ``reason`` (Triton's metrics);
        the failure with bnfold's reason is counted where the error is
        answered (``Metrics.count_failure``)."""
        reason = failure_reason(error) if error is not None else "OTHER"
        self._requests.inc()
        with self._lock:
            self.fail.add(seconds)
            self.failures[reason] = self.failures.get(reason, 0) + 1

    # --- per batch (BatchObserver)
    def batch_done(
        self, rows: int, queue_s: Sequence[float], input_s: float, infer_s: float, output_s: float
    ) -> None:
        n = len(queue_s)
        for q in queue_s:
            self._queue.observe(q)
        self._compute.observe(input_s + infer_s + output_s)
        self._batch.observe(rows)
        with self._lock:
            for q in queue_s:
                self.queue.add(q)
            self.compute_input.add(input_s, n)
            self.compute_infer.add(infer_s, n)
            self.compute_output.add(output_s, n)
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            stat = self.batches.setdefault(rows, _BatchStat())
            stat.compute_input.add(input_s)
            stat.compute_infer.add(infer_s)
            stat.compute_output.add(output_s)
        if self.latency is not None:
            self.latency.batch(queue_s, input_s, infer_s, output_s)

    def batch_failed(self, requests: int, error: BaseException) -> None:
        pass  # counted per request: request_failed, and count_failure with the reason

    # --- load (LoadObserver): what an autoscaler scales on
    def load_changed(self, queued: int, in_flight: int) -> None:
        if queued:
            self.pending += queued
            self._queue_depth.inc(queued)
        if in_flight:
            self._in_flight.inc(in_flight)

    # --- callers that went away (CancelObserver)
    def request_cancelled(self, stage: str) -> None:
        self._cancelled.labels(self.name, str(self.version), protocol.get(), stage).inc()

    def triton_stats(self) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` (statistics extension)."""
        zero = {"count": 0, "ns": 0}
        with self._lock:
            return {
                "name": self.name,
                "version": str(self.version),
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.to_json(),
                    "fail": self.fail.to_json(),
                    "queue": self.queue.to_json(),
                    "compute_input": self.compute_input.to_json(),
                    "compute_infer": self.compute_infer.to_json(),
                    "compute_output": self.compute_output.to_json(),
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": s.compute_input.to_json(),
                        "compute_infer": s.compute_infer.to_json(),
                        "compute_output": s.compute_output.to_json(),
                    }
                    for size, s in sorted(self.batches.items())
                ],
                "memory_usage": [],
            }


class Metrics:
    """All series of one app, in its own registry."""

    def __init__(self, triton: TritonMetrics | None = None) -> None:
        # Triton's families (nv_*), unless --allow-metrics false
        self.triton = triton
        self.registry = CollectorRegistry()
        r = self.registry
        model = ["model", "version"]
        self.http_requests = Counter(
            "bnfold_http_requests",
            "HTTP requests by route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "bnfold_http_request_duration_seconds",
            "Time from request start to response end, by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.infer_requests = Counter(
            "bnfold_inference_requests", "Inference requests (any outcome).", model, registry=r
        )
        self.infer_failures = Counter(
            "bnfold_inference_failures",
            "Refused or failed requests by reason, any route; model and version are "
            "empty unless the request named a model the repository knows.",
            [*model, "reason"],
            registry=r,
        )
        self.infer_latency = Histogram(
            "bnfold_inference_duration_seconds",
            "Successful inference requests, decode to encode.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "bnfold_queue_duration_seconds",
            "Time a request waited in the batcher's queue.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_time = Histogram(
            "bnfold_compute_duration_seconds",
            "Time of one batch: merge, ONNX Runtime, split.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "bnfold_batch_size",
            "Rows per executed batch.",
            model,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_ready = Gauge(
            "bnfold_model_ready",
            "1 while a model version serves, with the execution provider in use.",
            [*model, "provider"],
            registry=r,
            multiprocess_mode="liveall",  # one series per live worker (pid label)
        )
        # Moved by the batchers on every change (LoadObserver); summed over workers.
        self.queue_depth = Gauge(
            "bnfold_queue_depth",
            "Requests waiting in the batcher's queue for a batch.",
            model,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "bnfold_requests_in_flight",
            "Requests in the batcher and not yet answered: queued, computing or running inline.",
            model,
            registry=r,
            multiprocess_mode="livesum",
        )
        # Shadow parity (--shadow-parity, service/shadow.py): sampled requests
        # run through the version's reference too, off the request's path.
        self.shadow_samples = Counter(
            "bnfold_shadow_samples",
            "Sampled requests run through the version's reference and compared (shadow parity).",
            model,
            registry=r,
        )
        self.shadow_dropped = Counter(
            "bnfold_shadow_dropped",
            "Sampled requests not compared, by reason: queue_full (the comparison queue was "
            "full), no_reference (it could not be opened), failed.",
            [*model, "reason"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "bnfold_shadow_rows", "Rows of the compared requests.", model, registry=r
        )
        self.shadow_agreed_rows = Counter(
            "bnfold_shadow_top1_agreed_rows",
            "Compared rows whose top-1 class the reference agrees with (classifier outputs).",
            model,
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "bnfold_shadow_top1_agreement",
            "Share of compared rows whose top-1 class the reference agrees with, since load.",
            model,
            registry=r,
            multiprocess_mode="liveall",
        )
        self.shadow_max_abs_error = Gauge(
            "bnfold_shadow_max_abs_error",
            "Largest max |served - reference| of the compared requests, since load.",
            model,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.shadow_max_rel_error = Gauge(
            "bnfold_shadow_max_rel_error",
            "Largest max |served - reference| / max |reference| of the compared requests, "
            "since load.",
            model,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.shadow_rel_error = Histogram(
            "bnfold_shadow_rel_error",
            "Relative error (max |served - reference| / max |reference|) of each compared request.",
            model,
            buckets=ERROR_BUCKETS,
            registry=r,
        )
        self.shadow_below_gate = Gauge(
            "bnfold_shadow_below_gate",
            "1 while the version's live parity is under its gate (flagged, still serving).",
            model,
            registry=r,
            multiprocess_mode="liveall",
        )
        self.cancelled = Counter(
            "bnfold_requests_cancelled",
            "Requests whose client went away (HTTP disconnect, gRPC cancel) by protocol and "
            "stage: queued (never ran) or computing (ran, result dropped).",
            [*model, "protocol", "stage"],
            registry=r,
        )
        self.multiprocess_dir = multiprocess_dir()
        self._models: dict[tuple[str, int], ModelMetrics] = {}

    def for_model(self, name: str, version: int) -> ModelMetrics:
        """Counters of ``name``/``version``; kept across reloads of the version."""
        key = (name, version)
        if key not in self._models:
            self._models[key] = ModelMetrics(self, name, version)
        return self._models[key]

    def models(self) -> list[ModelMetrics]:
        """Every version's counters, loaded now or before."""
        return list(self._models.values())

    def model_stats(self, name: str, version: int) -> dict[str, Any]:
        return self.for_model(name, version).triton_stats()

    def count_failure(self, model: str, version: str, reason: str) -> None:
        """One request answered with an error (every route, refused or failed)."""
        self.infer_failures.labels(model=model, version=version, reason=reason).inc()

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        """``GET /metrics``: bnfold's families, then Triton's."""
        if self.multiprocess_dir is None:
            text = generate_latest(self.registry)
        else:
            # Every worker's files, summed (counters, histograms) or per pid (gauges).
            merged = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)
            text = generate_latest(merged)
        return text + self.render_triton()

    def render_triton(self) -> bytes:
        """Triton's families alone (its metrics port); nothing when they are off."""
        if self.triton is None:
            return b""
        return self.triton.render(self.models())

    def process_exited(self) -> None:
        """Drop this worker's live gauges (its counters keep counting in the sums)."""
        if self.triton is not None:
            self.triton.write_snapshot(self.models(), exiting=True)
        if self.multiprocess_dir is not None:
            prom_multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)
