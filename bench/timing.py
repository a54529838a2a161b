"""What the benchmarks share: how they time, and how they describe the machine.

Latency is measured in interleaved rounds: every round times a block of runs
of each model (the block sized to ~20 ms on the baseline), the models in a
random order, so that a machine that slows down or speeds up during the run
does so for all of them alike; the results are medians over the rounds, and
ratios are taken per round against the baseline before their median.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

BLOCK_S = 0.02  # the time one block of runs takes on the baseline
MIN_ROUNDS = 5


def cpu_session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    """ONNX Runtime on the CPU as the service runs it (ORT_ENABLE_ALL), no spinning."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Rounds:
    """Seconds per run of each model, one entry per round."""

    times: dict[str, list[float]]
    rounds: int
    block: int  # runs per block

    def ms(self, key: str) -> float:
        """The median milliseconds per run of ``key``."""
        return 1e3 * float(np.median(self.times[key]))

    def versus(self, key: str, base: str) -> tuple[float, list[float]]:
        """The median of the per-round ratios of ``key`` to ``base``, and their
        interquartile range."""
        ratios = np.array(self.times[key]) / np.array(self.times[base])
        return float(np.median(ratios)), [float(x) for x in np.percentile(ratios, [25, 75])]


def interleaved(
    runners: dict[str, Callable[[], Any]],
    baseline: str,
    seconds: float,
    *,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
) -> Rounds:
    """Each runner ``warmup`` times, then interleaved rounds for ``seconds``
    (at least :data:`MIN_ROUNDS`). ``sync`` waits for a device to finish
    before a clock is read."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    sync()
    t0 = time.perf_counter()
    runners[baseline]()
    sync()
    block = max(1, int(BLOCK_S / max(time.perf_counter() - t0, 1e-5)))
    times: dict[str, list[float]] = {k: [] for k in runners}
    order, rounds = list(runners), 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or rounds < MIN_ROUNDS:
        random.shuffle(order)
        for k in order:
            sync()
            t = time.perf_counter()
            for _ in range(block):
                runners[k]()
            sync()
            times[k].append((time.perf_counter() - t) / block)
        rounds += 1
    return Rounds(times, rounds, block)


def environment(dists: Iterable[str], **extra: Any) -> dict[str, Any]:
    """Date, machine, CPU and the versions of ``dists`` (those installed);
    ``extra`` stands before the Python version."""
    import importlib.metadata as md

    versions = {}
    for dist in dists:
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        **extra,
        "python": platform.python_version(),
        "versions": versions,
    }


def describe(env: dict[str, Any]) -> str:
    """One line for a report: date, machine, CPUs and versions."""
    return (
        f"{env['date']}, {env['machine']}, {env['nproc']} CPUs ({env['cpu'] or 'unknown CPU'}), "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    )
