"""The batcher alone, no server: size flush, timeout flush, splitting,
bounded queue, deadlines, and errors reaching every waiter.

Nothing here depends on how fast the machine is: a test that shows a batch
did *not* wait for ``max_delay_s`` sets that delay to an hour (finishing at
all is the proof), states are waited for (``until``), and a computing batch
is held by a gate rather than by a sleep. The only clock readings left are
lower bounds (a batch waited at least its delay), which load cannot break.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from bnfold.service.batching import (
    Arrivals,
    Batcher,
    BatcherClosed,
    DeadlineExceeded,
    Feeds,
    QueueFull,
)

# A guard against a hang, never a measure: every submit is answered in
# milliseconds, and a batch that must not wait for its delay has an hour's.
TIMEOUT = 60.0
HOUR = 3600.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the event loop until ``condition`` holds (TIMEOUT at most)."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.001)
    assert condition(), what


class Recorder:
    """A ``run`` that doubles ``x`` and records every batch it saw; with
    ``gate``, each batch computes until ``gate`` is set."""

    def __init__(
        self, fail: BaseException | None = None, gate: threading.Event | None = None
    ) -> None:
        self.batches: list[int] = []
        self.fail = fail
        self.gate = gate
        self.lock = threading.Lock()
        self.done: list[tuple[int, int]] = []  # (rows, requests) per batch_done
        self.failed: list[int] = []

    def run(self, feeds: Feeds) -> Feeds:
        with self.lock:
            self.batches.append(len(feeds["x"]))
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT), "the test never opened the gate"
        if self.fail is not None:
            raise self.fail
        return {"y": feeds["x"] * 2}

    def batch_done(self, rows: int, queue_s: Sequence[float], *timings: float) -> None:
        self.done.append((rows, len(queue_s)))

    def batch_failed(self, requests: int, error: BaseException) -> None:
        self.failed.append(requests)


def run_with(
    recorder: Recorder,
    body: Callable[[Batcher], Coroutine[Any, Any, Any]],
    **kwargs: Any,
) -> Any:
    options: dict[str, Any] = {"max_rows": 8, "max_delay_s": 0.01, "max_queue_size": 100}
    options.update(kwargs)

    async def main() -> Any:
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(recorder.run, executor=pool, observer=recorder, **options)
            batcher.start()
            try:
                async with asyncio.timeout(TIMEOUT):  # a hang fails, it does not block the suite
                    return await body(batcher)
            finally:
                if recorder.gate is not None:
                    recorder.gate.set()
                await batcher.close(timeout=TIMEOUT)

    return asyncio.run(main())


def x(rows: int, start: float = 0.0, width: int = 3) -> Feeds:
    return {"x": np.arange(rows * width, dtype=np.float32).reshape(rows, width) + start}


def test_size_flush_runs_one_batch_without_waiting_for_the_delay() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> list[Feeds]:
        return await asyncio.gather(
            *(b.submit(x(1, 100 * i), 1, timeout=TIMEOUT) for i in range(4))
        )

    # flushed by size, not by the delay: an hour's delay, answered at all
    outs = run_with(rec, body, max_rows=4, max_delay_s=HOUR)
    assert rec.batches == [4]
    assert rec.done == [(4, 4)]
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], x(1, 100 * i)["x"] * 2)


def test_timeout_flush_sends_a_partial_batch_after_the_delay() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit(x(1), 1, timeout=TIMEOUT) for _ in range(3)))
        return time.perf_counter() - t0

    # sent without more rows coming (answered at all, within TIMEOUT), and
    # not before the delay (a lower bound: a busy machine only adds to it)
    seconds = run_with(rec, body, max_rows=64, max_delay_s=0.1)
    assert rec.batches == [3]
    assert seconds >= 0.09


def test_split_gives_each_request_its_own_rows() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> list[Feeds]:
        sizes = [1, 2, 3]
        return await asyncio.gather(*(b.submit(x(n, 10 * n), n, timeout=TIMEOUT) for n in sizes))

    outs = run_with(rec, body, max_rows=6, max_delay_s=1.0)
    assert rec.batches == [6]
    for n, out in zip([1, 2, 3], outs, strict=True):
        assert out["y"].shape == (n, 3)
        np.testing.assert_array_equal(out["y"], x(n, 10 * n)["x"] * 2)


def test_batches_never_exceed_max_rows() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(b.submit(x(2), 2, timeout=TIMEOUT) for _ in range(5)))

    run_with(rec, body, max_rows=4, max_delay_s=0.05)
    assert sum(rec.batches) == 10
    assert max(rec.batches) <= 4


def test_requests_of_different_row_shapes_are_not_merged() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> list[Feeds]:
        return await asyncio.gather(
            b.submit(x(1, width=3), 1, timeout=TIMEOUT),
            b.submit(x(1, width=4), 1, timeout=TIMEOUT),
        )

    outs = run_with(rec, body, max_rows=8, max_delay_s=0.05)
    assert sorted(rec.batches) == [1, 1]
    assert [o["y"].shape for o in outs] == [(1, 3), (1, 4)]


def test_merge_off_runs_each_request_alone() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(b.submit(x(1), 1, timeout=TIMEOUT) for _ in range(3)))

    run_with(rec, body, merge=False)
    assert rec.batches == [1, 1, 1]


def test_an_error_reaches_every_waiter_of_the_batch() -> None:
    rec = Recorder(fail=ValueError("graph exploded"))

    async def body(b: Batcher) -> list[Any]:
        return await asyncio.gather(
            *(b.submit(x(1), 1, timeout=TIMEOUT) for _ in range(3)), return_exceptions=True
        )

    results = run_with(rec, body, max_rows=3, max_delay_s=1.0)
    assert rec.batches == [3]
    assert [type(r) for r in results] == [ValueError] * 3
    assert all(str(r) == "graph exploded" for r in results)
    assert rec.failed == [3]


def test_an_output_without_the_batch_axis_fails_every_waiter() -> None:
    rec = Recorder()
    rec.run = lambda feeds: {"y": np.zeros(5, np.float32)}  # type: ignore[method-assign]

    async def body(b: Batcher) -> list[Any]:
        return await asyncio.gather(
            *(b.submit(x(1), 1, timeout=TIMEOUT) for _ in range(2)), return_exceptions=True
        )

    results = run_with(rec, body, max_rows=2, max_delay_s=1.0)
    assert all(isinstance(r, RuntimeError) and "cannot split 2 rows" in str(r) for r in results)


def test_a_full_queue_refuses_at_once() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> type[BaseException]:
        waiting = [asyncio.ensure_future(b.submit(x(1), 1, timeout=TIMEOUT)) for _ in range(2)]
        await until(lambda: b.pending == 2, "both requests queued")
        refused = b.submit(x(1), 1, timeout=TIMEOUT)
        with pytest.raises(QueueFull) as caught:
            # at once: raised by the first step of submit, which never waits
            refused.send(None)
        assert b.pending == 2
        await asyncio.gather(*waiting)
        return caught.type

    kind = run_with(rec, body, max_rows=64, max_delay_s=0.3, max_queue_size=2)
    assert kind is QueueFull
    assert rec.batches == [2]


def test_a_request_past_its_deadline_is_never_run() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> None:
        with pytest.raises(DeadlineExceeded):
            await b.submit(x(1), 1, timeout=0.05)
        # past the queue delay the batcher looks, drops it, and runs nothing
        await until(lambda: b.pending == 0, "the batcher dropped the expired request")

    run_with(rec, body, max_rows=64, max_delay_s=0.2)
    assert rec.batches == []


def test_close_fails_what_is_still_queued() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> None:
        pending = asyncio.ensure_future(b.submit(x(1), 1, timeout=TIMEOUT))
        await until(lambda: b.pending == 1, "the request queued")
        await b.close(timeout=0)
        with pytest.raises(BatcherClosed):
            await pending
        with pytest.raises(BatcherClosed):
            await b.submit(x(1), 1, timeout=TIMEOUT)

    run_with(rec, body, max_rows=64, max_delay_s=HOUR)
    assert rec.batches == []


def test_queue_keeps_filling_while_a_batch_computes() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(x(1), 1, timeout=TIMEOUT))
        await until(lambda: rec.batches == [1], "the first batch computing")
        rest = [asyncio.ensure_future(b.submit(x(1), 1, timeout=TIMEOUT)) for _ in range(5)]
        await until(lambda: b.pending == 5, "five requests queued behind it")
        gate.set()
        await asyncio.gather(first, *rest)

    run_with(rec, body, max_rows=64, max_delay_s=0.0)
    assert rec.batches == [1, 5]


def test_the_delay_restarts_when_the_oldest_request_gives_up() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> float:
        with pytest.raises(DeadlineExceeded):
            await b.submit(x(1), 1, timeout=0.2)
        t0 = time.perf_counter()
        await b.submit(x(1), 1, timeout=TIMEOUT)  # waits its own full delay
        return time.perf_counter() - t0

    seconds = run_with(rec, body, max_rows=64, max_delay_s=0.4)
    assert seconds >= 0.35  # a lower bound: a busy machine only adds to it
    assert rec.batches == [1]


def test_an_idle_eager_runner_never_waits() -> None:
    """Eager (with ``Arrivals``): an idle runner takes a request at once, even
    with another request on its way (entered, not queued) and an hour's
    ``max_delay_s``; the one on its way runs as its own batch when it comes."""
    rec = Recorder()
    arrivals = Arrivals()

    async def body(b: Batcher) -> list[Feeds]:
        coming = arrivals.enter()  # begun by the server, body still being read
        first = arrivals.enter()
        alone = await b.submit(x(1), 1, timeout=TIMEOUT)  # answered at all: not held
        arrivals.leave(first)
        assert rec.batches == [1] and arrivals.pending == 1  # the other still on its way
        late = await b.submit(x(2, 10), 2, timeout=TIMEOUT)
        arrivals.leave(coming)
        return [alone, late]

    alone, late = run_with(rec, body, arrivals=arrivals, max_delay_s=HOUR)
    assert rec.batches == [1, 2]
    assert [requests for _, requests in rec.done] == [1, 1]
    np.testing.assert_array_equal(alone["y"], x(1)["x"] * 2)
    np.testing.assert_array_equal(late["y"], x(2, 10)["x"] * 2)
    assert arrivals.pending == 0


def test_a_busy_eager_runner_merges_what_is_queued() -> None:
    """While the runner computes, requests queue; when it frees, everything
    queued leaves as one batch (up to ``max_rows``), nothing waits for more,
    and each request gets its own rows back."""
    gate = threading.Event()
    rec = Recorder(gate=gate)
    arrivals = Arrivals()

    async def body(b: Batcher) -> list[Feeds]:
        first = asyncio.ensure_future(b.submit(x(1), 1, timeout=TIMEOUT))
        await until(lambda: rec.batches == [1], "the first batch computing")
        sizes = [1, 2, 3, 4]  # 10 rows queued behind it; max_rows 8
        rest = [asyncio.ensure_future(b.submit(x(n, 100 * n), n, timeout=TIMEOUT)) for n in sizes]
        await until(lambda: b.pending == 4, "four requests queued behind it")
        assert rec.batches == [1]  # queued, not run, while the runner is busy
        gate.set()
        return list(await asyncio.gather(first, *rest))

    results = run_with(rec, body, arrivals=arrivals, max_rows=8, max_delay_s=HOUR)
    assert rec.batches == [1, 6, 4]  # 1+2+3 fit in 8 rows; the 4 leaves next, at once
    assert [requests for _, requests in rec.done] == [1, 3, 1]
    for n, result in zip([1, 1, 2, 3, 4], results, strict=True):
        start = 0 if result is results[0] else 100 * n
        np.testing.assert_array_equal(result["y"], x(n, start)["x"] * 2)


def test_a_lone_short_request_on_an_idle_model_runs_inline() -> None:
    """Eager batching with ``inline_below_s``: once a lone request is known
    to compute fast, the next lone one runs on the event loop's thread (no
    thread switch); a burst still goes through the runner threads, batched."""
    threads: list[str] = []
    rec = Recorder()
    arrivals = Arrivals()

    def run(feeds: Feeds) -> Feeds:
        threads.append(threading.current_thread().name)
        return rec.run(feeds)

    async def main() -> list[Feeds]:
        with ThreadPoolExecutor(1, thread_name_prefix="runner") as pool:
            b = Batcher(
                run,
                executor=pool,
                max_rows=8,
                max_delay_s=HOUR,
                max_queue_size=100,
                arrivals=arrivals,
                inline_below_s=HOUR,  # any compute time, once known, is short enough
                observer=rec,
            )
            b.start()
            try:
                out = []
                for i in range(3):  # one after the other: each alone
                    token = arrivals.enter()
                    out.append(await b.submit(x(1, i), 1, timeout=TIMEOUT))
                    arrivals.leave(token)

                async def burst(i: int) -> Feeds:
                    token = arrivals.enter()
                    await asyncio.sleep(0)
                    try:
                        return await b.submit(x(1, 10 + i), 1, timeout=TIMEOUT)
                    finally:
                        arrivals.leave(token)

                out += await asyncio.gather(*(burst(i) for i in range(4)))
                return out
            finally:
                await b.close(timeout=TIMEOUT)

    out = asyncio.run(main())
    main_thread = threading.main_thread().name
    assert threads[0].startswith("runner")  # compute time not known yet
    assert threads[1:3] == [main_thread, main_thread]
    assert threads[3].startswith("runner") and rec.batches[3:] == [4]  # the burst: one batch
    for i, result in enumerate(out):
        start = i if i < 3 else 10 + i - 3
        np.testing.assert_array_equal(result["y"], x(1, start)["x"] * 2)
    assert [rows for rows, _ in rec.done] == [1, 1, 1, 4]
