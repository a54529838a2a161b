"""A blocking load (session, warm-up) in a thread of its own, awaited
within the load timeout."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class LoadTimedOut(Exception):
    pass


async def in_thread(work: Callable[[], T], budget_s: float, on_timeout: Callable[[], None]) -> T:
    """``work()`` in a daemon thread of its own, awaited for ``budget_s``.

    Past the budget ``on_timeout`` runs (it asks the work to stop) and
    ``LoadTimedOut`` is raised at once (when cancelled, ``on_timeout`` runs
    too): ONNX Runtime cannot be interrupted
    from Python, so a thread that does not stop is left behind (a daemon:
    it does not hold the process at exit) and whatever it returns later is
    dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():  # abandoned: free what it built
            close = getattr(getattr(result, "runtime", None), "close", None)
            if close is not None:
                close()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = work(), None
        except BaseException as e:  # handed to the awaiting task
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=run, name="bnfold-load", daemon=True).start()
    try:
        async with asyncio.timeout(budget_s):
            return await asyncio.shield(future)
    except TimeoutError:
        on_timeout()
        future.cancel()
        raise LoadTimedOut from None
    except asyncio.CancelledError:  # shutdown while loading: stop the work too
        on_timeout()
        future.cancel()
        raise
