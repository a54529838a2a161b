"""HTTP connections with bounds: uvicorn's protocol with three additions.

uvicorn times out an idle keep-alive connection, but not a client that
sends its request head (or body) slowly, or nothing at all: a slowloris
holds one descriptor per connection for ever, and at the common limit of
1,024 descriptors a thousand of them stop the server from accepting
anyone. So each connection here

- has ``header_timeout_s`` from when it opens (or its last response ends)
  to when its request is read in full, head and body; past it the
  connection is closed;
- counts against ``max_connections`` (default: the process's descriptor
  limit less 128, for models, logs and gRPC): a connection over the limit
  closes the oldest one that is still sending its request or idle between
  requests (a request being computed is never cut), or itself when there
  is none;
- answers with ``Connection: close`` once the server drains (SIGTERM), so
  that a keep-alive client opens its next connection elsewhere instead of
  sending on one the shutdown is about to close.

The server state reaches the protocol through the lifespan's state (the
key ``CONNECTIONS_STATE``); without it (another app) the protocol is
uvicorn's own.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import weakref
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("bnfold.service")

CONNECTIONS_STATE = "bnfold"
RESERVED_FDS = 128  # descriptors kept for everything but client connections

# Per uvicorn server (its ``server_state``): the connections waiting for a
# request, oldest first (a dict keeps insertion order).
_waiting: weakref.WeakKeyDictionary[Any, dict[BoundedHttp, None]] = weakref.WeakKeyDictionary()


def connection_limit(configured: int) -> int:
    """``max_connections``, or (0) the descriptor limit less RESERVED_FDS."""
    if configured > 0:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(16, soft - RESERVED_FDS)


class BoundedHttp(HttpToolsProtocol):
    _timer: asyncio.TimerHandle | None = None
    _read_cycle: Any = None
    _bounds: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        state = self.app_state.get(CONNECTIONS_STATE)
        if state is None:
            return
        self._bounds = state
        settings: Settings = state.settings
        waiting = _waiting.setdefault(self.server_state, {})
        if len(self.connections) > connection_limit(settings.max_connections):
            victim = next((c for c in waiting if c is not self), None)
            if victim is None:  # every other connection has a request in progress
                self.transport.close()
                return
            victim._expire("over the connection limit")
        self._wait_for_request()

    def _wait_for_request(self) -> None:
        self._read_cycle = self.cycle
        _waiting.setdefault(self.server_state, {})[self] = None
        self._timer = self.loop.call_later(
            self._bounds.settings.header_timeout_s, self._expire, "request not read in time"
        )

    def _request_read(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        _waiting.get(self.server_state, {}).pop(self, None)

    def _expire(self, why: str) -> None:
        self._request_read()
        if not self.transport.is_closing():
            log.debug("closing a connection from %s: %s", self.client, why)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._bounds is None:
            return
        cycle = self.cycle
        if cycle is not None and cycle is not self._read_cycle:
            if self._bounds.draining:
                cycle.keep_alive = False  # the response says Connection: close
            if self._timer is not None and not cycle.more_body:
                self._request_read()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._bounds is None or self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # idle: no request pipelined
            self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._bounds is not None:
            self._request_read()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn ``Config`` arguments that bound connections."""
    return {
        "http": BoundedHttp,
        "timeout_keep_alive": settings.keep_alive_s,
        "h11_max_incomplete_event_size": 64 * 1024,  # a request head, when h11 is used
    }
