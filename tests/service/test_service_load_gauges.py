"""Queue depth and requests in flight: counted by the batcher, exported per
model and version as Prometheus gauges (what an autoscaler scales on).

The batcher is driven directly with a gated ``run`` for exact counts in
every state (computing, queued behind it, timed out, cancelled, closed);
then a real server answers while requests wait in a model's batch window,
and ``/metrics`` shows them, then 0 again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_text import metric
from served_models import ModelInfo, write_mlp
from service_harness import base_settings, rows, run_server, wait_until

from bnfold.service.batching import Batcher, BatcherClosed, DeadlineExceeded, LoadObserver

TIMEOUT = 60.0  # a guard against a hang, never a measure


class Load:
    """A batch observer that sums the batcher's load increments."""

    def __init__(self) -> None:
        self.queued = 0
        self.in_flight = 0
        self.calls = 0
        self.lowest = 0  # neither count may ever go below 0

    def load_changed(self, queued: int, in_flight: int) -> None:
        self.queued += queued
        self.in_flight += in_flight
        self.calls += 1
        self.lowest = min(self.lowest, self.queued, self.in_flight)

    def batch_done(self, rows: int, queue_s: Sequence[float], *timings: float) -> None:
        pass

    def batch_failed(self, requests: int, error: BaseException) -> None:
        pass

    def counts(self) -> tuple[int, int]:
        return self.queued, self.in_flight


def x(n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.ones((n, 3), dtype=np.float32)}


async def until(condition: object, what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.001)


def gated(gate: threading.Event, started: threading.Event) -> object:
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        assert gate.wait(TIMEOUT), "the test never opened the gate"
        return {"y": feeds["x"] * 2}

    return run


def with_batcher(body: object, **options: object) -> None:
    """``body(batcher, load, gate, started)`` on a batcher whose run waits
    for ``gate``; one batch computes at a time."""

    async def main() -> None:
        load = Load()
        gate, started = threading.Event(), threading.Event()
        settings = {"max_rows": 8, "max_delay_s": 0.0, "max_queue_size": 100, **options}
        with ThreadPoolExecutor(2) as pool:
            b = Batcher(gated(gate, started), executor=pool, observer=load, **settings)  # type: ignore[arg-type]
            b.start()
            try:
                async with asyncio.timeout(TIMEOUT):
                    await body(b, load, gate, started)  # type: ignore[operator]
            finally:
                gate.set()
                await b.close(timeout=TIMEOUT)
            assert load.lowest == 0
            assert load.counts() == (0, 0) == (b.queued, b.in_flight)

    asyncio.run(main())


def test_the_metrics_observer_is_a_load_observer() -> None:
    from bnfold.service.metrics import Metrics

    assert isinstance(Metrics().for_model("m", 1), LoadObserver)
    assert isinstance(Load(), LoadObserver)


def test_counts_while_computing_and_queued_behind_it() -> None:
    async def body(b: Batcher, load: Load, gate: threading.Event, started: threading.Event) -> None:
        first = asyncio.ensure_future(b.submit(x(), 1, timeout=TIMEOUT))
        await until(started.is_set, "the first request computes")
        assert load.counts() == (0, 1)  # taken: computing, not queued
        behind = [asyncio.ensure_future(b.submit(x(2), 2, timeout=TIMEOUT)) for _ in range(3)]
        await until(lambda: b.pending == 3, "three requests queued behind it")
        assert load.counts() == (3, 4) == (b.queued, b.in_flight)
        gate.set()
        results = await asyncio.gather(first, *behind)
        assert [len(r["y"]) for r in results] == [1, 2, 2, 2]
        assert load.counts() == (0, 0)

    with_batcher(body)


def test_a_request_that_gives_up_while_queued_leaves_both_counts() -> None:
    async def body(b: Batcher, load: Load, gate: threading.Event, started: threading.Event) -> None:
        first = asyncio.ensure_future(b.submit(x(), 1, timeout=TIMEOUT))
        await until(started.is_set, "the first request computes")
        with pytest.raises(DeadlineExceeded):
            await b.submit(x(), 1, timeout=0.05)  # expires in the queue
        # still in the deque (the loop drops it when it next takes a batch),
        # no longer counted
        assert b.pending == 1 and load.counts() == (0, 1)
        cancelled = asyncio.ensure_future(b.submit(x(), 1, timeout=TIMEOUT))
        await until(lambda: load.counts() == (1, 2), "a request queued")
        cancelled.cancel()  # its caller went away
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert load.counts() == (0, 1)
        gate.set()
        await first
        await until(lambda: b.pending == 0, "the loop dropped both")
        assert load.counts() == (0, 0)

    with_batcher(body)


def test_closing_fails_the_queued_requests_and_clears_the_counts() -> None:
    async def body(b: Batcher, load: Load, gate: threading.Event, started: threading.Event) -> None:
        first = asyncio.ensure_future(b.submit(x(), 1, timeout=TIMEOUT))
        await until(started.is_set, "the first request computes")
        queued = [asyncio.ensure_future(b.submit(x(), 1, timeout=TIMEOUT)) for _ in range(2)]
        await until(lambda: load.counts() == (2, 3), "two requests queued")
        closing = asyncio.ensure_future(b.close(timeout=0))
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert all(isinstance(r, BatcherClosed) for r in results)
        assert load.counts() == (0, 1)  # the computing one is still running
        gate.set()
        await first
        await closing
        assert load.counts() == (0, 0)

    with_batcher(body)


def test_inline_requests_count_while_they_run() -> None:
    """An idle eager model runs a lone short request on the event loop: in
    flight during the run, never queued."""
    from bnfold.service.batching import Arrivals

    seen: list[tuple[int, int]] = []

    async def main() -> None:
        load = Load()
        arrivals = Arrivals()

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            seen.append(load.counts())
            return {"y": feeds["x"]}

        with ThreadPoolExecutor(1) as pool:
            b = Batcher(
                run,
                executor=pool,
                max_rows=8,
                max_delay_s=0.0,
                max_queue_size=10,
                observer=load,
                arrivals=arrivals,
                inline_below_s=60.0,
            )
            b.start()
            for _ in range(3):  # the first learns the compute time, then inline
                token = arrivals.enter()
                try:
                    await b.submit(x(), 1, timeout=TIMEOUT)
                finally:
                    arrivals.leave(token)
            await b.close(timeout=TIMEOUT)
        assert load.counts() == (0, 0)

    asyncio.run(main())
    assert seen[0] == (0, 1)  # through the queue: taken, computing
    assert seen[1:] == [(0, 1), (0, 1)]  # inline: in flight, never queued


# ------------------------------------------------------------ a real server
def v2(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }


WINDOW = "window"  # holds every request for its batch window until 4 rows wait


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("load-gauges")
    # not eager, a 60 s window and 4 rows a batch: requests wait in the queue
    # until the fourth arrives, whatever the machine's speed
    write_mlp(repo, WINDOW, max_batch_size=4, delay_ms=60_000.0, queue=16, eager=False)
    write_mlp(repo, "idle", seed=1)
    return repo


def test_gauges_on_metrics_while_requests_wait(windowed: Path) -> None:
    info = ModelInfo(WINDOW, "input", (64,))
    settings = base_settings(windowed, request_timeout_s=TIMEOUT * 2)
    labels = {"model": WINDOW, "version": "1"}
    with run_server(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:

        def gauges() -> tuple[float, float]:
            text = http.get("/metrics").text
            return (
                metric(text, "bnfold_queue_depth", **labels),
                metric(text, "bnfold_requests_in_flight", **labels),
            )

        text = http.get("/metrics").text
        for model in (WINDOW, "idle"):  # every served model has both series, at 0
            for name in ("bnfold_queue_depth", "bnfold_requests_in_flight"):
                assert metric(text, name, model=model, version="1") == 0
        answers: list[httpx.Response] = []

        def send(seed: int) -> None:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT * 2) as c:
                answers.append(c.post(f"/v2/models/{WINDOW}/infer", json=v2(rows(info, 1, seed))))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: gauges() == (3, 3), "three requests waiting, seen on /metrics")
        assert answers == []
        # the other model is untouched
        text = http.get("/metrics").text
        assert metric(text, "bnfold_requests_in_flight", model="idle", version="1") == 0
        # the fourth fills the batch: all four are answered, the gauges fall to 0
        send(3)
        for t in threads:
            t.join(TIMEOUT)
        assert sorted(a.status_code for a in answers) == [200] * 4
        assert gauges() == (0, 0)
        # a request refused at the door (too wide) never enters the batcher
        wide = v2(np.zeros((1, 65), dtype=np.float32))
        assert http.post(f"/v2/models/{WINDOW}/infer", json=wide).status_code == 400
        assert gauges() == (0, 0)
