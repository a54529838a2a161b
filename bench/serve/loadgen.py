"""A bounded closed-loop HTTP/1.1 load generator on asyncio streams.

``concurrency`` keep-alive connections each send one prepared request, wait
for its answer, and send the next, until ``requests`` answers have come back
or ``duration_s`` has passed, whichever is given first. Every answer is
counted by status; latencies are kept per request (seconds). Nothing is
retried: a connection that breaks is counted as a transport error and
replaced. Requests go to 127.0.0.1 only in the tests.

Used by the soak test (tests/robustness), the fault tests, and ``bench.serve``
when ``wrk`` is not installed. One process, one event loop: it needs a core
of its own to drive a fast server at high concurrency (wrk needs less).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

OnResponse = Callable[[int, dict[str, str], bytes], None]


@dataclass
class Request:
    """One prepared request: sent as it is, again and again."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"

    def encode(self, host: str, port: int) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    statuses: Counter[int]
    transport_errors: int
    latencies: np.ndarray  # seconds, one per answered request
    samples: list[tuple[int, dict[str, str], bytes]]  # the first non-200 answers

    @property
    def answered(self) -> int:
        return int(sum(self.statuses.values()))

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not len(self.latencies):
            return float("nan")
        return float(np.percentile(self.latencies, q) * 1e3)

    def summary(self) -> dict[str, float | int]:
        return {
            "requests": self.answered,
            "ok": self.ok,
            "failed": self.answered - self.ok + self.transport_errors,
            "throughput": round(self.throughput, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "mean_ms": round(float(self.latencies.mean() * 1e3), 3)
            if len(self.latencies)
            else float("nan"),
        }


class _Budget:
    """Hands out request slots until the count or the deadline runs out, or
    ``stop()`` says so (a client that stops sending, as a load balancer does
    once the server reports not-ready)."""

    def __init__(
        self, requests: int | None, deadline: float | None, stop: Callable[[], bool] | None
    ) -> None:
        self.left = requests
        self.deadline = deadline
        self.stop = stop

    def take(self) -> bool:
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.stop is not None and self.stop():
            return False
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(data[:-2])
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _connection(
    host: str,
    port: int,
    wire: bytes,
    budget: _Budget,
    statuses: Counter[int],
    latencies: list[float],
    samples: list[tuple[int, dict[str, str], bytes]],
    errors: list[int],
    on_response: OnResponse | None,
    timeout_s: float,
) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while budget.take():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                t0 = time.perf_counter()
                writer.write(wire)
                status, headers, body = await asyncio.wait_for(_read_response(reader), timeout_s)
                latencies.append(time.perf_counter() - t0)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                errors[0] += 1
                if writer is not None:
                    writer.close()
                writer = reader = None
                await asyncio.sleep(0.01)  # a refused connection does not spin
                continue
            statuses[status] += 1
            if status != 200 and len(samples) < 50:
                samples.append((status, headers, body))
            if on_response is not None:
                on_response(status, headers, body)
            if headers.get("connection", "").lower() == "close":
                assert writer is not None
                writer.close()
                writer = reader = None
    finally:
        if writer is not None:
            writer.close()


async def run_load(
    host: str,
    port: int,
    request: Request,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    timeout_s: float = 60.0,
    on_response: OnResponse | None = None,
    stop: Callable[[], bool] | None = None,
) -> LoadResult:
    """Drive ``concurrency`` connections until ``requests`` are answered or
    ``duration_s`` has passed (at least one bound must be given), or until
    ``stop()`` is true."""
    if requests is None and duration_s is None:
        raise ValueError("give requests or duration_s: the load must be bounded")
    wire = request.encode(host, port)
    started = time.perf_counter()
    budget = _Budget(requests, None if duration_s is None else started + duration_s, stop)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    samples: list[tuple[int, dict[str, str], bytes]] = []
    errors = [0]
    await asyncio.gather(
        *(
            _connection(
                host,
                port,
                wire,
                budget,
                statuses,
                latencies,
                samples,
                errors,
                on_response,
                timeout_s,
            )
            for _ in range(concurrency)
        )
    )
    return LoadResult(
        concurrency,
        time.perf_counter() - started,
        statuses,
        errors[0],
        np.asarray(latencies),
        samples,
    )


def load(host: str, port: int, request: Request, **kwargs: object) -> LoadResult:
    """``run_load`` in a fresh event loop (uvloop when installed)."""
    try:
        import uvloop

        runner: Callable[..., LoadResult] = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(run_load(host, port, request, **kwargs))  # type: ignore[arg-type]
