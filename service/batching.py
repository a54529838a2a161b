"""Dynamic batching: submit one request's tensors, await its own outputs.

Knows nothing of HTTP or models: it merges the feeds of queued requests on
axis 0 (the batch axis), calls ``run`` once in a worker thread, and splits
every output back by each request's row count.

- Eager batching (with ``arrivals``, the server's default): a batch never
  waits. An idle runner takes the request at once; while the runner is
  busy, requests queue, and the moment a run slot frees, everything queued
  (up to ``max_rows`` rows) leaves as one batch. The busier the server, the
  larger its batches, and a lone request is never delayed. Measured on two
  cores: any wait for requests "on their way" (the former policy: hold the
  batch while ``Arrivals.pending`` > 0, up to ``max_delay_s``) lost to no
  batching at all in most cells, because the loop that would read those
  requests is the one the wait occupies.
- Without ``arrivals`` (``dynamic_batching.eager: false``, Triton's rule,
  as its dynamic batcher forms a batch): once a run slot is free, the queue
  is read from its head, request by request, while they have the head's
  per-row shape and fit in ``max_rows``. The batch leaves at once at the
  largest ``preferred`` size it can reach (``preferred`` defaults to
  ``max_rows``); else at once if the next request cannot join it (another
  shape, or past ``max_rows``) or it holds the largest preferred size or
  more; else when the head has waited ``max_delay_s`` (0: at once), with
  all it holds. A request that arrives meanwhile is weighed at once.
- ``hold_until`` (a test hook, Triton's ``TRITONSERVER_DELAY_SCHEDULER``):
  no batch is formed until that many requests are queued, once; then the
  batcher works as above.
- ``preserve_ordering``: with several batches in flight, a batch's answers
  leave only after those of every batch taken before it.
- ``inline_below_s``: on an idle batcher (nothing queued or running, nobody
  arriving), a lone request whose compute is known to take less than this
  runs at once on the event loop's thread, skipping the two thread
  switches of the runner pool; anything else goes through the queue.
- Requests merge only with neighbours of the same per-row shape and dtype;
  order is kept (first in, first out).
- The queue is bounded: ``submit`` raises :class:`QueueFull` at once rather
  than letting latency grow without limit.
- ``submit(timeout=...)`` raises :class:`DeadlineExceeded` when no result
  arrives in time; a request that times out while queued is never run.
- A caller that goes away (its task cancelled: an HTTP client that
  disconnected, a cancelled gRPC call) takes its request out of the queue
  at once, and it never runs; one already computing finishes with its
  batch and its result is dropped. An observer that is also a
  :class:`CancelObserver` hears which of the two it was.
- ``on_queue``: a caller that sets it is called when its request enters
  the queue (what waits there is what a caller going away can save).
- ``timestamps``: a caller that sets it to an empty list gets its request's
  (enqueued, started, inputs merged, run done, finished) ``perf_counter``
  times appended when the result arrives (what a trace's queue and compute
  spans are made of).
- When ``run`` raises, every request of that batch gets the exception.
- Load: ``queued`` counts requests waiting in the queue (from ``submit`` until
  their batch leaves, or until they give up), ``in_flight`` requests inside
  ``submit`` (queued, computing, or running inline, until it returns or
  raises). An observer that is also a :class:`LoadObserver` hears every
  change of both, as increments (so several batchers of one model version,
  the one serving and one draining, add up): what an autoscaler scales on.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol, runtime_checkable

import numpy as np

Feeds = dict[str, np.ndarray]


class QueueFull(Exception):
    """The queue holds ``max_queue_size`` requests already."""


class QueueTimeout(Exception):
    """Still queued past its queue timeout (Triton's queue policy, REJECT)."""


class DeadlineExceeded(Exception):
    """No result within the request's timeout."""


class BatcherClosed(Exception):
    """The batcher was closed before the request could run."""


class BatchObserver(Protocol):
    def batch_done(
        self,
        rows: int,
        queue_s: Sequence[float],
        input_s: float,
        infer_s: float,
        output_s: float,
    ) -> None: ...

    def batch_failed(self, requests: int, error: BaseException) -> None: ...


@runtime_checkable
class LoadObserver(Protocol):
    def load_changed(self, queued: int, in_flight: int) -> None:
        """Requests that joined (positive) or left (negative) the queue and
        the batcher since the last call."""
        ...


@runtime_checkable
class CancelObserver(Protocol):
    def request_cancelled(self, stage: str) -> None:
        """A request whose caller went away: ``"queued"`` (it never runs) or
        ``"computing"`` (its batch finishes, its result is dropped)."""
        ...


# Called when the caller's request enters the queue (never for one run inline):
# the HTTP front end starts watching its client's connection only then.
on_queue: contextvars.ContextVar[Callable[[], object] | None] = contextvars.ContextVar(
    "bnfold_on_queue", default=None
)
# Set by a caller that wants its request's (enqueued, started, finished) times.
timestamps: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "bnfold_timestamps", default=None
)

_arrival: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "bnfold_arrival", default=None
)


class Arrivals:
    """Requests begun (``enter``, by the HTTP layer) and not yet queued, and
    how many client connections sent requests lately.

    ``enter`` marks the current context (one request); ``queued`` (called by
    ``Batcher.submit``) and ``leave`` (when the request ends, whatever
    happened) take it off the count, once.

    ``pending`` cannot see requests still in socket buffers or parsed but not
    yet started, so it alone cannot tell a lone client from a crowd whose
    next requests are queued up in the kernel. ``one_client`` can: it is true
    while a single connection (``scope["client"]``) has sent requests in the
    last ``CLIENT_WINDOW_S``. The inline path needs both.
    """

    CLIENT_WINDOW_S = 1.0
    _PRUNE_EVERY_S = 0.1

    def __init__(self) -> None:
        self.pending = 0
        self._clients: dict[object, float] = {}
        self._pruned = 0.0

    def enter(self, client: object = None) -> contextvars.Token[list[bool] | None]:
        self.pending += 1
        if client is not None:
            now = time.monotonic()
            self._clients[client] = now
            if len(self._clients) > 1 and now - self._pruned > self._PRUNE_EVERY_S:
                self._pruned = now
                cutoff = now - self.CLIENT_WINDOW_S
                self._clients = {c: t for c, t in self._clients.items() if t >= cutoff}
        return _arrival.set([False])

    @property
    def one_client(self) -> bool:
        return len(self._clients) <= 1

    def queued(self) -> None:
        flag = _arrival.get()
        if flag is not None and not flag[0]:
            flag[0] = True
            self.pending -= 1

    def leave(self, token: contextvars.Token[list[bool] | None]) -> None:
        self.queued()
        _arrival.reset(token)


class _Item:
    __slots__ = (
        "compute",
        "enqueued",
        "expires",
        "feeds",
        "future",
        "key",
        "queued",
        "rows",
    )

    def __init__(self, feeds: Feeds, rows: int, key: Any, future: asyncio.Future[Feeds]) -> None:
        self.feeds = feeds
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued = time.perf_counter()
        self.expires = math.inf  # refused if still queued then (submit's queue_timeout)
        # its batch's compute (started, inputs merged, run done, finished), once done
        self.compute: tuple[float, ...] = ()
        self.queued = True  # counted in Batcher.queued until taken or given up


def _durations(times: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """The merge's, the run's and the split's seconds, from ``_execute``'s times."""
    t0, t1, t2, t3 = times
    return t1 - t0, t2 - t1, t3 - t2


class _Ordered:
    """A batch taken under preserve_ordering, and its answers once computed."""

    __slots__ = ("answers", "batch")

    def __init__(self, batch: list[_Item]) -> None:
        self.batch = batch
        self.answers: list[Feeds] | BaseException | None = None


class Batcher:
    def __init__(
        self,
        run: Callable[[Feeds], Feeds],
        *,
        executor: Executor,
        max_rows: int,
        max_delay_s: float,
        max_queue_size: int,
        merge: bool = True,
        max_in_flight: int = 1,
        observer: BatchObserver | None = None,
        arrivals: Arrivals | None = None,
        inline_below_s: float = 0.0,
        preferred: Sequence[int] = (),
        preserve_ordering: bool = False,
        hold_until: int = 0,
    ) -> None:
        """``merge=False`` runs each request alone (models without a batch
        axis, or batching disabled) but keeps the bounded queue. Without
        ``arrivals`` a batch is formed by Triton's rule (``preferred`` sizes,
        ``max_delay_s``)."""
        self._arrivals = arrivals
        self._hold = hold_until
        self._inline_below = 0.0 if hold_until else inline_below_s
        self._preferred = frozenset(p for p in preferred if 0 < p <= max_rows) or frozenset(
            {max(1, max_rows)}
        )
        self._max_preferred = max(self._preferred)
        # preserve_ordering: batches taken and not yet answered, oldest first
        self._order: deque[_Ordered] | None = deque() if preserve_ordering else None
        self._solo_s = math.inf  # unknown until a lone request has run
        self._run = run
        self._executor = executor
        self._max_rows = max(1, max_rows)
        self._max_delay = max_delay_s
        self._max_queue = max_queue_size
        self._merge = merge and max_rows > 1
        self._observer = observer
        self._load = observer if isinstance(observer, LoadObserver) else None
        self._cancel = observer if isinstance(observer, CancelObserver) else None
        self._queued = 0  # requests waiting (the queue less those that gave up)
        self._requests = 0  # requests inside submit
        self._queue: deque[_Item] = deque()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight = 0
        self._nonempty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Requests queued and not yet dispatched."""
        return len(self._queue)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (those that gave up not counted)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered."""
        return self._requests

    def _count(self, queued: int, in_flight: int) -> None:
        self._queued += queued
        self._requests += in_flight
        if self._load is not None and (queued or in_flight):
            self._load.load_changed(queued, in_flight)

    @staticmethod
    def _unqueue(item: _Item) -> int:
        """1 the first time ``item`` stops waiting (taken, or given up), else 0."""
        if item.queued:
            item.queued = False
            return 1
        return 0

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(
        self, feeds: Feeds, rows: int, *, timeout: float, queue_timeout: float | None = None
    ) -> Feeds:
        """Queue ``feeds`` (``rows`` on axis 0) and return this request's outputs;
        past ``queue_timeout`` s still queued it is refused (QueueTimeout)."""
        if self._closed:
            raise BatcherClosed("the model is being unloaded")
        if self._can_run_inline():
            self._count(0, 1)
            try:
                return self._run_inline(feeds, rows)
            finally:
                self._count(0, -1)
        if len(self._queue) >= self._max_queue:
            # Triton's words (its scheduler's PolicyQueue::Enqueue), then how many
            raise QueueFull(f"Exceeds maximum queue size ({len(self._queue)} requests queued)")
        key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items()) if self._merge else 0
        item = _Item(feeds, rows, key, asyncio.get_running_loop().create_future())
        if queue_timeout:
            item.expires = item.enqueued + queue_timeout
        self._queue.append(item)
        self._count(1, 1)
        self._idle.clear()
        self._nonempty.set()
        if self._arrivals is not None:
            self._arrivals.queued()
        hook = on_queue.get()
        if hook is not None:
            hook()
        try:
            async with asyncio.timeout(timeout):
                result = await item.future
        except TimeoutError:
            raise DeadlineExceeded(f"no result within {timeout:g} s") from None
        except asyncio.CancelledError:
            # The caller went away: out of the queue now (it never runs), or
            # computing (the batch finishes without it).
            stage = "queued" if item.queued else "computing"
            if item.queued:
                self._drop(item)
            if self._cancel is not None:
                self._cancel.request_cancelled(stage)
            raise
        else:
            marks = timestamps.get()
            if marks is not None:
                marks += (item.enqueued, *item.compute)
            return result
        finally:
            # Answered, timed out or cancelled: no longer waiting, no longer in flight.
            self._count(-self._unqueue(item), -1)

    def _drop(self, item: _Item) -> None:
        """Take a request that is still queued out of the queue."""
        try:
            self._queue.remove(item)
        except ValueError:
            return
        self._check_idle()

    def _can_run_inline(self) -> bool:
        """An idle model, a request that nobody else is coming to join, and a
        compute known to be short: running it right here, on the event loop,
        saves two thread switches and the batch loop's turns (most of a lone
        request's overhead). A longer one would hold the loop, so it goes to
        the runner threads like any batch."""
        return (
            self._inline_below > 0
            and self._arrivals is not None
            and self._in_flight == 0
            and not self._queue
            and self._solo_s < self._inline_below
            and self._arrivals.pending <= 1  # this request is the one pending
            # Under load the loop, busy running requests inline, would see no
            # one arriving (they wait in the kernel) and serve everybody
            # inline, one by one: measured, batches of 1 and stalls of a
            # second. One client connection lately rules that out.
            and self._arrivals.one_client
        )

    def _run_inline(self, feeds: Feeds, rows: int) -> Feeds:
        assert self._arrivals is not None
        self._arrivals.queued()
        started = time.perf_counter()
        try:
            results, times = self._execute([feeds])
        except Exception as e:
            if self._observer is not None:
                self._observer.batch_failed(1, e)
            raise
        self._note_solo(times[3] - times[0])
        marks = timestamps.get()
        if marks is not None:
            marks += (started, started, times[1], times[2], time.perf_counter())
        if self._observer is not None:
            self._observer.batch_done(rows, [0.0], *_durations(times))  # never queued
        return results[0]

    def _note_solo(self, seconds: float) -> None:
        # The latest lone-request compute time, smoothed: one slow outlier
        # does not switch the inline path off for good, a slow model does.
        self._solo_s = seconds if self._solo_s == math.inf else 0.8 * self._solo_s + 0.2 * seconds

    async def _loop(self) -> None:
        while True:
            if not self._queue or len(self._queue) < self._hold:
                self._nonempty.clear()
                await self._nonempty.wait()
                continue
            self._hold = 0  # the test hook holds the first batch only
            await self._slots.acquire()
            limit = await self._wait_for_batch()
            batch = self._take(limit)
            if not batch:
                self._slots.release()
                self._check_idle()
                continue
            self._in_flight += 1
            if self._order is not None:
                self._order.append(_Ordered(batch))
            task = asyncio.get_running_loop().create_task(self._dispatch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_for_batch(self) -> int | None:
        """How many live requests the next batch takes from the head of the
        queue (None: as many as fit), once it may leave. Eager (with
        ``arrivals``), or without merging: at once. Else Triton's rule
        (:meth:`_plan`), weighed again at each arrival and when the head's
        delay runs out."""
        if not self._merge or self._arrivals is not None:
            return None
        while True:
            count, wait = self._plan()
            if wait is None or not self._queue:
                return count
            self._nonempty.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._nonempty.wait()
            except TimeoutError:
                pass

    def _plan(self) -> tuple[int, float | None]:
        """Triton's dynamic batch: (requests to take now, None), or (0,
        seconds to wait for more). Requests that gave up or ran out of queue
        time are passed over here; :meth:`_take` answers and drops them."""
        now = time.perf_counter()
        head: _Item | None = None
        rows = count = best = 0
        send_now = False
        for item in self._queue:
            if item.future.done() or item.expires < now:
                continue
            if head is None:
                head = item
            else:
                grown = rows + item.rows
                if grown > self._max_preferred and not best:
                    best = count  # the batch as it is, the largest it gets under them
                if grown > self._max_rows or item.key != head.key:
                    send_now = True
                    break
            rows += item.rows
            count += 1
            if rows in self._preferred:
                best = count
        if head is None:
            return 0, None  # only requests that gave up: _take drops them
        waited = now - head.enqueued
        exceeded = 0 < self._max_delay <= waited
        if best and not exceeded:
            return best, None
        if send_now or rows >= self._max_preferred or exceeded or self._max_delay <= 0:
            return count, None
        return 0, self._max_delay - waited

    def _take(self, limit: int | None = None) -> list[_Item]:
        """The next batch: live requests from the head (at most ``limit``),
        answering and dropping those that gave up or timed out on the way."""
        batch: list[_Item] = []
        rows = 0
        left = 0  # requests that stop waiting: taken, or found given up
        now = time.perf_counter()
        while self._queue:
            item = self._queue[0]
            if item.future.done() or item.expires < now:  # gave up, or its queue timeout
                self._queue.popleft()
                left += self._unqueue(item)
                if not item.future.done():  # Triton's words for a rejected request
                    item.future.set_exception(QueueTimeout("Request timeout expired"))
                continue
            if batch and (
                not self._merge or item.key != batch[0].key or rows + item.rows > self._max_rows
            ):
                break
            if limit is not None and len(batch) >= limit:
                break
            self._queue.popleft()
            left += self._unqueue(item)
            batch.append(item)
            rows += item.rows
        self._count(-left, 0)
        return batch

    async def _dispatch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        queue_s = [started - item.enqueued for item in batch]
        try:
            loop = asyncio.get_running_loop()
            parts = [item.feeds for item in batch]
            results, times = await loop.run_in_executor(self._executor, self._execute, parts)
            compute = (started, times[1], times[2], time.perf_counter())
            for item in batch:
                item.compute = compute
        except BaseException as e:
            self._answer(batch, e)
            if self._observer is not None:
                self._observer.batch_failed(len(batch), e)
            if not isinstance(e, Exception):
                raise
        else:
            self._answer(batch, results)
            if len(batch) == 1:
                self._note_solo(times[3] - times[0])
            if self._observer is not None:
                rows = sum(i.rows for i in batch)
                self._observer.batch_done(rows, queue_s, *_durations(times))
        finally:
            self._in_flight -= 1
            self._slots.release()
            self._check_idle()

    def _answer(self, batch: list[_Item], answers: list[Feeds] | BaseException) -> None:
        """Hand a batch its results (or its error); under preserve_ordering
        only once every batch taken before it has had its own."""
        order = self._order
        if order is None:
            self._hand(batch, answers)
            return
        for entry in order:
            if entry.batch is batch:
                entry.answers = answers
                break
        while order and order[0].answers is not None:
            entry = order.popleft()
            self._hand(entry.batch, entry.answers)

    @staticmethod
    def _hand(batch: list[_Item], answers: list[Feeds] | BaseException | None) -> None:
        if isinstance(answers, BaseException):
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(answers)
            return
        assert answers is not None
        for item, result in zip(batch, answers, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _execute(self, parts: list[Feeds]) -> tuple[list[Feeds], tuple[float, float, float, float]]:
        """Worker thread: merge, run, split. Returns the outputs and the
        ``perf_counter`` times of the merge's start, the run's start and end,
        and the split's end."""
        t0 = time.perf_counter()
        if len(parts) == 1:
            feeds = parts[0]
        else:
            # (N, ...) from each request's (n_i, ...)
            feeds = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        t1 = time.perf_counter()
        outputs = self._run(feeds)
        t2 = time.perf_counter()
        if len(parts) == 1:
            results = [outputs]
        else:
            sizes = [len(next(iter(p.values()))) for p in parts]
            total = sum(sizes)
            for name, out in outputs.items():
                if out.ndim == 0 or out.shape[0] != total:
                    raise RuntimeError(
                        f"output {name!r} has shape {list(out.shape)}; cannot split {total} rows"
                    )
            bounds = np.cumsum([0, *sizes]).tolist()
            results = [
                {name: out[a:b] for name, out in outputs.items()}
                for a, b in itertools.pairwise(bounds)
            ]
        return results, (t0, t1, t2, time.perf_counter())

    def _check_idle(self) -> None:
        if not self._queue and self._in_flight == 0:
            self._idle.set()

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, let queued and running ones finish (up to
        ``timeout`` seconds), then fail whatever is left with BatcherClosed."""
        self._closed = True
        if timeout is None or timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            except TimeoutError:
                pass
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        left = 0
        while self._queue:
            item = self._queue.popleft()
            left += self._unqueue(item)
            if not item.future.done():
                item.future.set_exception(BatcherClosed("the model was unloaded"))
        self._count(-left, 0)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._idle.set()
