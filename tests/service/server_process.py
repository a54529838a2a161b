"""``python -m bnfold.service`` in a process of its own, started without
waiting for readiness (the port opens before the models load): for what a
thread cannot show (a warm-up that never ends, descriptors, signals)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from service_harness import TOKEN, WAIT_S

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def spawn(repo: Path, workdir: Path, *args: str, **env: str) -> Iterator[Spawned]:
    """Start the server; yield once ``/v2/health/live`` answers (``WAIT_S``
    at most); kill it at the end unless the test stopped it."""
    with launch(repo, workdir, args, {"BNFOLD_LOG_LEVEL": "info", **env}) as running:
        yield running


@contextmanager
def launch(
    repo: Path,
    workdir: Path,
    args: tuple[str, ...],
    env: dict[str, str],
    *,
    wait_for: str = "/v2/health/live",
    port: int = 0,
) -> Iterator[Spawned]:
    """``python -m bnfold.service`` on ``port`` (0: a free one) with a clean environment
    (the token set, HTTP only) plus ``env``, in a process group of its own;
    yield once ``wait_for`` answers 200 (``WAIT_S`` at most); kill the group
    at the end unless the test stopped it."""
    port = port or free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BNFOLD_", "PROMETHEUS_"))}
    clean |= {
        "PYTHONPATH": str(ROOT),
        "BNFOLD_API_TOKEN": TOKEN,
        "BNFOLD_GRPC_PORT": "0",  # HTTP only: no shared port 8001 between test servers
        "BNFOLD_METRICS_PORT": "0",  # nor 8002 (Triton's metrics port)
        **env,
    }
    log = workdir / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bnfold.service",
                "--repo",
                str(repo),
                "--port",
                str(port),
                *args,
            ],
            cwd=workdir,
            env=clean,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers too can be stopped as one group
        )
    running = Spawned(proc, port, log)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if httpx.get(f"{running.url}{wait_for}", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{running.output()}")
            time.sleep(0.05)
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
