"""Graceful shutdown: on SIGTERM report not-ready, keep serving for
``drain_s`` (load balancers notice the failing readiness probe), then hand
the signal to uvicorn, which stops accepting connections and waits for the
requests in flight before the lifespan releases the models. At that same
moment ``on_close`` runs (the app stops the gRPC server accepting calls),
so that neither front takes new work while the other finishes its own.

Installed from the lifespan, after uvicorn's own handlers, so it works the
same in a single process and in each worker of ``--workers N``. Outside
the main thread (a server run in a test thread) signals cannot be caught,
and this does nothing. A second SIGTERM skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .deps import ServerState

log = logging.getLogger("bnfold.service")


def _forward(previous: Any, sig: int, frame: FrameType | None) -> None:
    if callable(previous):
        previous(sig, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)


@contextmanager
def drain_on_sigterm(
    state: ServerState, drain_s: float, on_close: Callable[[], None] | None = None
) -> Iterator[None]:
    """``on_close`` runs in the event loop when the drain ends, just before
    uvicorn gets the signal (it may run twice: a second SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def close(sig: int, frame: FrameType | None) -> None:
        if on_close is not None:
            on_close()
        _forward(previous, sig, frame)

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if state.draining:
            loop.call_soon_threadsafe(close, sig, frame)
            return
        state.draining = True
        log.info("SIGTERM: not ready; closing in %.1f s after in-flight requests", drain_s)
        loop.call_soon_threadsafe(loop.call_later, drain_s, close, sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)
