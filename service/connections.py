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
  sending on one the shutdown is about to close;
- takes a request with both ``Transfer-Encoding: chunked`` and
  ``Content-Length`` as Triton does (``requests`` sends both when told to
  chunk a body it has whole; llhttp refuses them by default): the body is
  read chunked, ``Content-Length`` is dropped from the request, and the
  connection closes after the answer (RFC 9112, 6.3);
- counts a chunked body's chunks: past ``MAX_CHUNKS`` non-empty chunks
  (Triton's limit) it stops reading, marks the request (``TOO_MANY_CHUNKS``
  in its scope: the request's body reader refuses it with a 400 in
  Triton's words) and closes the connection after the answer.

The server state reaches the protocol through the lifespan's state (the
key ``CONNECTIONS_STATE``); without it (another app) the protocol is
uvicorn's own.

gRPC connections are grpc core's, bounded by its channel arguments
(:func:`grpc_options`) and the server's ``maximum_concurrent_rpcs``:

- ``grpc_max_concurrent_rpcs`` calls in flight per process, a stream
  counting as one for as long as it is open; past it a new call is
  answered ``RESOURCE_EXHAUSTED`` at once (it holds nothing);
- ``grpc_max_streams_per_connection`` (HTTP/2's
  ``SETTINGS_MAX_CONCURRENT_STREAMS``): one connection cannot take every
  slot; a client's calls past it wait in the client;
- ``grpc_handshake_timeout_s``: a connection that does not complete its
  HTTP/2 handshake (a slow or silent client) is closed;
- ``grpc_max_connection_idle_s``: a connection with no call for that long
  is closed with GOAWAY (clients reconnect on their next call);
- keep-alive: the server pings a connection with calls in flight every
  ``grpc_keepalive_s`` and closes it when a ping goes unanswered for
  ``KEEPALIVE_TIMEOUT_S`` (a dead client holding streams); a client that
  pings more often than ``grpc_min_ping_interval_s`` without calls gets
  GOAWAY (``too_many_pings``) after ``MAX_PING_STRIKES`` (Triton's
  defaults).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import weakref
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import MAX_CHUNKS

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("bnfold.service")

KEEPALIVE_TIMEOUT_S = 20.0  # an unanswered keep-alive ping closes the connection (Triton's)
MAX_PING_STRIKES = 2  # pings too often before GOAWAY (grpc's and Triton's default)

CONNECTIONS_STATE = "bnfold"
# A request's scope key: its chunked body has more than MAX_CHUNKS non-empty chunks.
TOO_MANY_CHUNKS = "bnfold.too_many_chunks"
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
    _chunks = 0  # chunk headers of the request being read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's own leniency, and Transfer-Encoding over Content-Length
        self.parser.set_dangerous_leniencies(
            lenient_data_after_close=True, lenient_chunked_length=True
        )
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

    def on_headers_complete(self) -> None:
        framed_twice = any(name == b"transfer-encoding" for name, _ in self.headers) and any(
            name == b"content-length" for name, _ in self.headers
        )
        if framed_twice:  # the chunks are the body; the scope shares this list
            self.headers[:] = [(k, v) for k, v in self.headers if k != b"content-length"]
        self._chunks = 0
        super().on_headers_complete()
        if framed_twice and self.cycle is not None:
            self.cycle.keep_alive = False  # closed after the answer (RFC 9112, 6.3)

    def on_chunk_header(self) -> None:
        """Only the last chunk is empty (its size 0 ends the body), so a
        header past MAX_CHUNKS + 1 means more than MAX_CHUNKS non-empty
        chunks: the request is refused where its body is read, and no more
        of it is read (as Triton refuses it)."""
        self._chunks += 1
        if self._chunks != MAX_CHUNKS + 2 or self.cycle is None:
            return
        self.scope[TOO_MANY_CHUNKS] = True  # type: ignore[literal-required]
        self.cycle.keep_alive = False
        self.flow.pause_reading()
        self.cycle.message_event.set()  # a reader waiting for the body sees it now

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


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc core's channel arguments that bound gRPC connections (with the
    server's ``maximum_concurrent_rpcs``: :func:`grpc_max_rpcs`)."""

    def ms(seconds: float) -> int:
        return max(int(seconds * 1000), 1)

    options = [
        ("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection),
        ("grpc.server_handshake_timeout_ms", ms(settings.grpc_handshake_timeout_s)),
        ("grpc.keepalive_time_ms", ms(settings.grpc_keepalive_s)),
        ("grpc.keepalive_timeout_ms", ms(KEEPALIVE_TIMEOUT_S)),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            ms(settings.grpc_min_ping_interval_s),
        ),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
    ]
    if settings.grpc_max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", ms(settings.grpc_max_connection_idle_s)))
    return options


def grpc_max_rpcs(settings: Settings) -> int | None:
    """``maximum_concurrent_rpcs`` of the gRPC server (None: no limit)."""
    return settings.grpc_max_concurrent_rpcs or None
