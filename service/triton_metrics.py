"""Triton's Prometheus families (``nv_*``), as Triton serves them.

What a CPU ONNX server has of Triton's metrics (docs/user_guide/metrics.md,
core's ``metric_model_reporter.cc``), with Triton's names, labels
(``model``, ``version``) and meanings:

- per model version, from the counters ``ModelMetrics`` already keeps for
  Triton's statistics extension (read at scrape time, so the default
  families cost the serving path nothing): ``nv_inference_request_success``,
  ``nv_inference_request_failure{reason=REJECTED|CANCELED|BACKEND|OTHER}``,
  ``nv_inference_count``, ``nv_inference_exec_count``,
  ``nv_inference_pending_request_count`` and, unless ``--metrics-config
  counter_latencies=false``, the cumulative ``nv_inference_*_duration_us``;
- ``--metrics-config summary_latencies=true``: the ``nv_inference_*_summary_us``
  summaries (quantiles over a sliding 60 s window, ``summary_quantiles``);
- ``--metrics-config histogram_latencies=true``:
  ``nv_inference_first_response_histogram_ms`` (a response is the first and
  only one: no decoupled models here);
- ``nv_cpu_utilization``, ``nv_cpu_memory_total_bytes``,
  ``nv_cpu_memory_used_bytes`` from /proc, every ``--metrics-interval-ms``.

No GPU, response-cache or pinned-memory family: bnfold has none of those
things, and Triton too leaves out what it lacks.

They are served on a port of their own (``--metrics-port``, 8002 as Triton;
``MetricsServer``) and appended to ``GET /metrics`` of the main port.

With ``--workers N`` each worker writes its counts to a file of its own in
the multiprocess folder every interval (and before it answers a scrape);
whichever worker answers sums them (dead workers' counts included, their
pending requests not). So another worker's counts there are at most one
interval old, and the summaries' quantiles are the answering worker's.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batching import QueueFull, QueueTimeout
from .errors import InferenceFailed

if TYPE_CHECKING:
    from .metrics import ModelMetrics

log = logging.getLogger("bnfold.service")

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
# Triton's default summary quantiles (quantile, allowed error).
DEFAULT_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.5, 0.05),
    (0.9, 0.01),
    (0.95, 0.001),
    (0.99, 0.001),
    (0.999, 0.0001),
)
FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)  # Triton's defaults
SUMMARY_MAX_AGE_S = 60.0  # prometheus-cpp's Summary defaults: 60 s in 5 age buckets
SUMMARY_AGE_BUCKETS = 5
SUMMARY_SAMPLES_PER_BUCKET = 4096  # beyond it, a uniform sample (reservoir) of the bucket
SNAPSHOT_GLOB = "triton_*.json"  # the per-worker count files in the multiprocess folder
CONFIG_FORMAT = "--metrics-config option format is <setting>=<value>. Got {}"


# ----------------------------------------------------------------- --metrics-config


@dataclass(frozen=True)
class MetricsConfig:
    counter_latencies: bool = True
    histogram_latencies: bool = False
    summary_latencies: bool = False
    quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _stod(text: str) -> float:
    """C++'s ``std::stod``: the longest number at the start, the rest ignored."""
    match = _NUMBER.match(text)
    if match is None:
        raise ValueError(text)
    return float(match.group(0))


def parse_quantiles(text: str) -> tuple[tuple[float, float], ...]:
    """``summary_quantiles`` as Triton reads it: ``q:err,...``; a pair it cannot
    read is skipped (logged), as Triton does."""
    pairs: list[tuple[float, float]] = []
    for pair in text.split(","):
        quantile, colon, error = pair.partition(":")
        if not colon:
            log.error(
                "Invalid option: [%s]. No ':' delimiter found. Expected format is "
                "<quantile>:<error>",
                pair,
            )
            continue
        try:
            pairs.append((_stod(quantile), _stod(error)))
        except ValueError as e:
            log.error("Invalid option: [%s]. Error: %s", pair, e)
    return tuple(pairs)


def check_setting(option: str) -> tuple[str, str]:
    """One ``--metrics-config`` value, refused in Triton's words when it is not
    ``<setting>=<value>`` (no model-specific settings, as in Triton)."""
    name, equals, value = option.partition("=")
    if not equals or "," in name or not name or not value:
        raise ValueError(CONFIG_FORMAT.format(option))
    return name, value


def parse_metrics_config(options: Iterable[str]) -> MetricsConfig:
    """Triton's ``--metrics-config`` settings; as in Triton, counters are off
    only for ``false``, histograms and summaries on only for ``true``, and a
    setting it does not know is ignored."""
    counters, histograms, summaries = True, False, False
    quantiles = DEFAULT_QUANTILES
    for option in options:
        name, value = check_setting(option)
        if name == "counter_latencies" and value == "false":
            counters = False
        elif name == "histogram_latencies" and value == "true":
            histograms = True
        elif name == "summary_latencies" and value == "true":
            summaries = True
        elif name == "summary_quantiles":
            quantiles = parse_quantiles(value) or quantiles
    return MetricsConfig(counters, histograms, summaries, quantiles)


# ----------------------------------------------------------------- failure reasons


def failure_reason(error: BaseException) -> str:
    """Triton's ``reason`` of a failed request: REJECTED (queue full, or its
    queue timeout expired in the scheduler), CANCELED (its caller went away),
    BACKEND (ONNX Runtime failed), OTHER."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELED"
    if isinstance(error, InferenceFailed):
        return "BACKEND"
    cause = error.__context__ if error.__context__ is not None else error
    if isinstance(cause, (QueueFull, QueueTimeout)) or isinstance(error, (QueueFull, QueueTimeout)):
        return "REJECTED"
    return "OTHER"


# ----------------------------------------------------------------- latency observers


class _Window:
    """Observations of the last ``SUMMARY_MAX_AGE_S`` seconds in rotating age
    buckets (prometheus-cpp's sliding window), each a bounded uniform sample."""

    def __init__(self) -> None:
        self._buckets: list[list[float]] = [[] for _ in range(SUMMARY_AGE_BUCKETS)]
        self._seen = [0] * SUMMARY_AGE_BUCKETS
        self._width = SUMMARY_MAX_AGE_S / SUMMARY_AGE_BUCKETS
        self._current = 0
        self._rotated = time.monotonic()
        self.count = 0
        self.sum = 0.0

    def _rotate(self, now: float) -> None:
        while now - self._rotated >= self._width:
            self._rotated += self._width
            self._current = (self._current + 1) % SUMMARY_AGE_BUCKETS
            self._buckets[self._current] = []
            self._seen[self._current] = 0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self._rotate(time.monotonic())
        bucket = self._buckets[self._current]
        self._seen[self._current] += 1
        if len(bucket) < SUMMARY_SAMPLES_PER_BUCKET:
            bucket.append(value)
        else:
            slot = random.randrange(self._seen[self._current])
            if slot < SUMMARY_SAMPLES_PER_BUCKET:
                bucket[slot] = value

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        self._rotate(time.monotonic())
        values = sorted(v for bucket in self._buckets for v in bucket)
        if not values:
            return [float("nan") for _ in qs]
        last = len(values) - 1
        return [values[min(last, max(0, int(q * len(values) + 0.5) - 1))] for q in qs]


SUMMARY_FAMILIES = (
    ("request", "nv_inference_request_summary_us", "inference request duration", True),
    ("queue", "nv_inference_queue_summary_us", "inference queuing duration", True),
    ("input", "nv_inference_compute_input_summary_us", "compute input duration", False),
    ("infer", "nv_inference_compute_infer_summary_us", "compute inference duration", False),
    ("output", "nv_inference_compute_output_summary_us", "compute output duration", False),
)


class LatencyObserver:
    """The per-observation families (summaries, the first-response
    histogram) of one model version: only when ``--metrics-config`` asks."""

    def __init__(self, config: MetricsConfig) -> None:
        self._lock = threading.Lock()
        self.windows = (
            {key: _Window() for key, *_ in SUMMARY_FAMILIES} if config.summary_latencies else None
        )
        self.histogram = (
            [0] * (len(FIRST_RESPONSE_BUCKETS_MS) + 1) if config.histogram_latencies else None
        )
        self.histogram_sum = 0.0

    def request(self, seconds: float) -> None:
        with self._lock:
            if self.windows is not None:
                self.windows["request"].observe(seconds * 1e6)
            if self.histogram is not None:
                ms = seconds * 1e3
                self.histogram[bisect.bisect_left(FIRST_RESPONSE_BUCKETS_MS, ms)] += 1
                self.histogram_sum += ms

    def batch(
        self, queue_s: Iterable[float], input_s: float, infer_s: float, output_s: float
    ) -> None:
        if self.windows is None:
            return
        with self._lock:
            w = self.windows
            for q in queue_s:
                w["queue"].observe(q * 1e6)
                w["input"].observe(input_s * 1e6)
                w["infer"].observe(infer_s * 1e6)
                w["output"].observe(output_s * 1e6)


# ----------------------------------------------------------------- CPU metrics


@dataclass
class CpuSample:
    utilization: float = 0.0
    total_bytes: int = 0
    used_bytes: int = 0


@dataclass
class CpuSampler:
    """nv_cpu_* from /proc/stat and /proc/meminfo, as Triton reads them:
    utilization is the busy share of all cores' time since the last sample;
    used memory is MemTotal less MemAvailable."""

    proc: Path = Path("/proc")
    sample: CpuSample | None = None
    _last: tuple[int, int] | None = None

    def read(self) -> CpuSample | None:
        try:
            fields = [
                int(v) for v in (self.proc / "stat").read_text().split("\n", 1)[0].split()[1:]
            ]
            meminfo = (self.proc / "meminfo").read_text()
        except (OSError, ValueError):
            return self.sample
        # user nice system idle iowait irq softirq steal (guest time is in user)
        fields += [0] * (8 - len(fields))
        idle = fields[3] + fields[4]
        total = sum(fields[:8])
        utilization = 0.0
        if self._last is not None and total > self._last[1]:
            busy = (total - idle) - (self._last[1] - self._last[0])
            utilization = min(1.0, max(0.0, busy / (total - self._last[1])))
        self._last = (idle, total)
        mem = {}
        for line in meminfo.splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                mem[key] = int(rest.split()[0]) * 1024
        total_bytes = mem.get("MemTotal", 0)
        used = total_bytes - mem.get("MemAvailable", total_bytes)
        self.sample = CpuSample(utilization, total_bytes, used)
        return self.sample


# ----------------------------------------------------------------- snapshots and text


def snapshot(m: ModelMetrics) -> dict[str, Any]:
    """The counts of one version, as summed over workers and rendered."""
    with m._lock:
        snap: dict[str, Any] = {
            "model": m.name,
            "version": str(m.version),
            "success": m.success.count,
            "failure": dict(m.failures),
            "inference_count": m.inference_count,
            "exec_count": m.execution_count,
            "request_us": m.success.ns // 1000,
            "queue_us": m.queue.ns // 1000,
            "input_us": m.compute_input.ns // 1000,
            "infer_us": m.compute_infer.ns // 1000,
            "output_us": m.compute_output.ns // 1000,
            "pending": m.pending,
        }
    latency = m.latency
    if latency is not None and latency.histogram is not None:
        with latency._lock:
            snap["histogram"] = list(latency.histogram)
            snap["histogram_sum"] = latency.histogram_sum
    return snap


SUMMED = (
    *("success", "inference_count", "exec_count", "request_us", "queue_us"),
    *("input_us", "infer_us", "output_us", "pending", "histogram_sum"),
)


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for snap in snapshots:
        key = (snap["model"], snap["version"])
        into = merged.get(key)
        if into is None:
            merged[key] = {
                **snap,
                "failure": dict(snap["failure"]),
                "histogram": list(snap.get("histogram", [])) or None,
            }
            continue
        for name in SUMMED:
            into[name] = into.get(name, 0) + snap.get(name, 0)
        for reason, n in snap["failure"].items():
            into["failure"][reason] = into["failure"].get(reason, 0) + n
        if snap.get("histogram"):
            if into["histogram"] is None:
                into["histogram"] = list(snap["histogram"])
            else:
                into["histogram"] = [
                    a + b for a, b in zip(into["histogram"], snap["histogram"], strict=True)
                ]
    return merged


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if float(value).is_integer():
        return str(int(value))
    text = repr(float(value))
    return text if "e" not in text else f"{value:.12f}".rstrip("0")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


COUNTERS = (
    (
        "nv_inference_request_success",
        "success",
        "Number of successful inference requests, all batch sizes",
    ),
    (
        "nv_inference_count",
        "inference_count",
        "Number of inferences performed (does not include cached requests)",
    ),
    (
        "nv_inference_exec_count",
        "exec_count",
        "Number of model executions performed (does not include cached requests)",
    ),
)
LATENCY_COUNTERS = (
    (
        "nv_inference_request_duration_us",
        "request_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
    ),
    (
        "nv_inference_queue_duration_us",
        "queue_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
    ),
    (
        "nv_inference_compute_input_duration_us",
        "input_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "infer_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "output_us",
        "Cumulative inference compute output duration in microseconds "
        "(does not include cached requests)",
    ),
)


@dataclass
class TritonMetrics:
    """Triton's families of one app: its configuration, the CPU sampler, and
    the text of a scrape."""

    config: MetricsConfig
    cpu_metrics: bool = True
    multiprocess_dir: str | None = None
    interval_s: float = 2.0
    cpu: CpuSampler = field(default_factory=CpuSampler)

    def observer(self) -> LatencyObserver | None:
        """A version's per-observation families, when the configuration has any."""
        if self.config.summary_latencies or self.config.histogram_latencies:
            return LatencyObserver(self.config)
        return None

    # --- multiprocess: a count file per worker
    def _snapshot_path(self, pid: int) -> Path:
        assert self.multiprocess_dir is not None
        return Path(self.multiprocess_dir) / f"triton_{pid}.json"

    def write_snapshot(self, models: Iterable[ModelMetrics], *, exiting: bool = False) -> None:
        if self.multiprocess_dir is None:
            return
        snaps = [snapshot(m) for m in models]
        if exiting:
            for snap in snaps:
                snap["pending"] = 0
        self._write(snaps)

    def _write(self, snaps: list[dict[str, Any]]) -> None:
        """This worker's count file, replaced whole."""
        path = self._snapshot_path(os.getpid())
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(snaps))
        partial.replace(path)

    def _other_workers(self) -> list[dict[str, Any]]:
        assert self.multiprocess_dir is not None
        snaps: list[dict[str, Any]] = []
        me = os.getpid()
        for path in Path(self.multiprocess_dir).glob(SNAPSHOT_GLOB):
            try:
                pid = int(path.stem.removeprefix("triton_"))
                if pid == me:
                    continue
                theirs = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not _alive(pid):
                for snap in theirs:
                    snap["pending"] = 0
            snaps += theirs
        return snaps

    # --- the text of a scrape
    def render(self, models: Iterable[ModelMetrics]) -> bytes:
        models = list(models)
        snaps = [snapshot(m) for m in models]
        if self.multiprocess_dir is not None:
            self._write(snaps)  # this worker's counts, for the others' scrapes
            snaps += self._other_workers()
        merged = merge(snaps)
        keys = sorted(merged)
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

        def labels(key: tuple[str, str], **extra: str) -> str:
            return _labels({"model": key[0], "version": key[1], **extra})

        if keys:  # a family with no series is left out, as Triton does
            self._render_models(out, merged, keys, models, family, labels)
        if self.cpu_metrics and self.cpu.sample is not None:
            s = self.cpu.sample
            family("nv_cpu_utilization", "gauge", "CPU utilization rate [0.0 - 1.0]")
            out.append(f"nv_cpu_utilization {_number(s.utilization)}\n")
            family("nv_cpu_memory_total_bytes", "gauge", "CPU total memory (RAM), in bytes")
            out.append(f"nv_cpu_memory_total_bytes {s.total_bytes}\n")
            family("nv_cpu_memory_used_bytes", "gauge", "CPU used memory (RAM), in bytes")
            out.append(f"nv_cpu_memory_used_bytes {s.used_bytes}\n")
        return "".join(out).encode()

    def _render_models(
        self,
        out: list[str],
        merged: dict[tuple[str, str], dict[str, Any]],
        keys: list[tuple[str, str]],
        models: list[ModelMetrics],
        family: Callable[[str, str, str], None],
        labels: Callable[..., str],
    ) -> None:

        def one_a_version(name: str, kind: str, help_text: str, key_name: str) -> None:
            family(name, kind, help_text)
            out.extend(f"{name}{labels(k)} {merged[k][key_name]}\n" for k in keys)

        name, key_name, help_text = COUNTERS[0]
        one_a_version(name, "counter", help_text, key_name)
        family(
            "nv_inference_request_failure",
            "counter",
            "Number of failed inference requests, all batch sizes",
        )
        for k in keys:
            for reason in FAILURE_REASONS:
                n = merged[k]["failure"].get(reason, 0)
                out.append(f"nv_inference_request_failure{labels(k, reason=reason)} {n}\n")
        for name, key_name, help_text in COUNTERS[1:]:
            one_a_version(name, "counter", help_text, key_name)
        one_a_version(
            "nv_inference_pending_request_count",
            "gauge",
            "Instantaneous number of pending requests awaiting execution per-model.",
            "pending",
        )
        if self.config.counter_latencies:
            for name, key_name, help_text in LATENCY_COUNTERS:
                one_a_version(name, "counter", help_text, key_name)
        if self.config.histogram_latencies:
            self._render_histogram(out, merged, keys, family, labels)
        if self.config.summary_latencies:
            self._render_summaries(out, models, family)

    @staticmethod
    def _render_histogram(
        out: list[str],
        merged: dict[tuple[str, str], dict[str, Any]],
        keys: list[tuple[str, str]],
        family: Callable[[str, str, str], None],
        labels: Callable[..., str],
    ) -> None:
        name = "nv_inference_first_response_histogram_ms"
        family(name, "histogram", "Duration from request to first response in milliseconds")
        for k in keys:
            counts = merged[k].get("histogram") or [0] * (len(FIRST_RESPONSE_BUCKETS_MS) + 1)
            total = sum(counts)
            out.append(f"{name}_count{labels(k)} {total}\n")
            out.append(f"{name}_sum{labels(k)} {_number(merged[k].get('histogram_sum', 0.0))}\n")
            running = 0
            bounds = [_number(b) for b in FIRST_RESPONSE_BUCKETS_MS] + ["+Inf"]
            for le, n in zip(bounds, counts, strict=True):
                running += n
                out.append(f"{name}_bucket{labels(k, le=le)} {running}\n")

    def _render_summaries(
        self, out: list[str], models: list[ModelMetrics], family: Callable[[str, str, str], None]
    ) -> None:
        qs = [q for q, _ in self.config.quantiles]
        for key, name, what, cached in SUMMARY_FAMILIES:
            note = "includes" if cached else "does not include"
            family(name, "summary", f"Summary of {what} in microseconds ({note} cached requests)")
            for m in models:
                latency = m.latency
                if latency is None or latency.windows is None:
                    continue
                with latency._lock:
                    window = latency.windows[key]
                    values = window.quantiles(qs)
                    count, total = window.count, window.sum
                base = {"model": m.name, "version": str(m.version)}
                out.append(f"{name}_count{_labels(base)} {count}\n")
                out.append(f"{name}_sum{_labels(base)} {_number(total)}\n")
                for q, v in zip(qs, values, strict=True):
                    out.append(f"{name}{_labels({**base, 'quantile': _number(q)})} {_number(v)}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------- the metrics port


CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
JSON = b"application/json"
NOT_ALLOWED = b'{"error":"Method Not Allowed"}'
NOT_FOUND = b'{"error":"Not Found: Triton\'s metrics are at GET /metrics"}'
HEAD_LIMIT = 16 * 1024
READ_TIMEOUT_S = 10.0
# Connections open at once; one past it is closed unanswered, so clients that
# open connections and send nothing cannot take the process's descriptors
# (shared with the serving ports) for more than READ_TIMEOUT_S each.
MAX_CONNECTIONS = 32


class MetricsServer:
    """Triton's metrics endpoint on a port of its own: ``GET /metrics``; another
    method is 405 (Triton's answer), another path 404; one request per
    connection, its head read within ``read_timeout_s``, at most
    ``max_connections`` open at once."""

    def __init__(
        self,
        render: Callable[[], bytes],
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self._render = render
        self._server: asyncio.Server | None = None
        self._max_connections = max_connections
        self._read_timeout_s = read_timeout_s
        self._open = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self._open

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=HEAD_LIMIT, reuse_port=reuse_port or None
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max_connections:
            writer.close()
            return
        self._open += 1
        try:
            async with asyncio.timeout(self._read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
            words = head.split(b"\r\n", 1)[0].split()
            method = words[0] if words else b""
            path = words[1].split(b"?", 1)[0] if len(words) > 1 else b""
            if method != b"GET":  # Triton's answer, in its words
                status, body, ctype = b"405 Method Not Allowed", NOT_ALLOWED, JSON
            elif path != b"/metrics":  # Triton answers 200 with no body
                status, body, ctype = b"404 Not Found", NOT_FOUND, JSON
            else:
                status, body, ctype = b"200 OK", self._render(), CONTENT_TYPE
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            self._open -= 1
            writer.close()
