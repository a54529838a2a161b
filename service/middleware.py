"""Per-request plumbing as one pure ASGI middleware (no BaseHTTPMiddleware,
which costs a task and a body copy per request):

- request id: ``X-Request-ID`` taken from the client (if sane) or generated,
  echoed in the response and attached to every log line of the request;
- ``X-Bnfold-Worker``: the id of the process that answered (which of the
  ``--workers N`` served a request);
- restricted APIs (``--http-restricted-api``, service/restricted.py): a
  request of a restricted category without its header is answered 403
  before anything else, as Triton answers it;
- body limit: ``Content-Length`` over the limit is refused before reading
  (and counted as a failure here), and a chunked body is counted as it
  streams; both are 400 in Triton's words (``body_too_large``), as is a
  chunked body of too many chunks (service/connections.py);
- HTTP metrics by route template, and one access-log line per request;
- ``Arrivals``: the request counts as on its way to a batcher until it is
  queued or ends (the batcher does not wait for requests that are not coming);
- V2 inference (``POST .../infer``) handed straight to its ASGI endpoint
  (routes/infer.py ``direct``), past FastAPI's routing and dependencies.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import Arrivals
from .connections import TOO_MANY_CHUNKS
from .errors import MAX_INPUT_HINT, Forbidden, InputTooLarge, TooManyChunks
from .http_errors import render
from .logs import RequestIdFilter, configure_logging
from .metrics import Metrics
from .restricted import Restrictions, http_category
from .routes.infer import GONE, direct, direct_target
from .state import RequestIds, request_id

__all__ = ["RequestContext", "RequestIdFilter", "configure_logging", "request_id"]
_IDS = RequestIds()
access = logging.getLogger("bnfold.access")


def body_too_large(scope: Scope, size: int, limit: int, *, so_far: bool = False) -> InputTooLarge:
    """A body of ``size`` bytes (``so_far``: at least) over ``limit``, refused
    as Triton refuses it (400): on an inference route, a raw binary request
    (``Inference-Header-Content-Length: 0``) is its input's byte size and a
    JSON header longer than the limit is the JSON's; any other body Triton
    reads is JSON. A compressed body, a multipart upload or the binary part
    after a JSON header within the limit (which Triton does not bound) is
    named as the request."""
    headers = dict(scope["headers"])
    amount = f"at least {size}" if so_far else str(size)
    header = headers.get(b"inference-header-content-length", b"").strip()
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    kind = headers.get(b"content-type", b"").lower()
    plain = encoding == b"identity" and not kind.startswith((b"multipart/", b"application/octet"))
    if direct_target(scope) is not None and header:
        if header == b"0" and encoding == b"identity":
            return InputTooLarge(
                f"Raw input has a byte_size ({amount} bytes) that exceeds the maximum allowed "
                f"value of {limit} bytes. {MAX_INPUT_HINT}"
            )
        if header.isdigit() and int(header) > limit:
            amount, plain = header.decode(), True
        else:
            plain = False
    what = "request JSON size" if plain else "request size"
    return InputTooLarge(
        f"{what} of {amount} bytes exceeds the maximum allowed input size of {limit} bytes. "
        f"{MAX_INPUT_HINT}"
    )


class RequestContext:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        access_log: bool,
        arrivals: Arrivals | None = None,
        restrictions: Restrictions | None = None,
    ):
        self.app = app
        self.restrictions = restrictions if restrictions else None
        self.arrivals = arrivals if arrivals is not None else Arrivals()
        self.max_body = max_body_bytes
        self.metrics = metrics
        self.access_log = access_log
        self.worker_header = (b"x-bnfold-worker", str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = ""
        length = -1
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")
            elif key == b"content-length" and value.isdigit():
                length = int(value)
        rid = _IDS.pick(rid)
        token = request_id.set(rid)
        arrival = self.arrivals.enter(scope.get("client"))
        rid_header = (b"x-request-id", rid.encode())
        worker = self.worker_header
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header, worker]
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise body_too_large(scope, received, self.max_body, so_far=True)
                if TOO_MANY_CHUNKS in scope:
                    raise TooManyChunks()
            return message

        try:
            if self.restrictions is not None and (refused := self._refused(scope)) is not None:
                state = scope["app"].state.bnfold
                await render(state, scope["method"], scope["path"], {}, refused)(
                    scope, receive, send_with_id
                )
            elif length > self.max_body:  # refused before routing: no model named
                error = body_too_large(scope, length, self.max_body)
                state = scope["app"].state.bnfold  # Starlette's app, set before middleware
                await render(state, scope["method"], scope["path"], {}, error)(
                    scope, receive, send_with_id
                )
            elif (target := direct_target(scope)) is not None:  # the hot path, past FastAPI
                await direct(scope, receive_limited, send_with_id, target, started)
            else:
                await self.app(scope, receive_limited, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if scope.get(GONE):
                status = 499  # the client closed the connection before its answer
            route: Any = scope.get("route")
            template = getattr(route, "path", "<unmatched>")
            self.metrics.http_request(scope["method"], template, status, seconds)
            if self.access_log:
                access.info(
                    "%s %s %d %.2fms", scope["method"], scope["path"], status, seconds * 1e3
                )
            self.arrivals.leave(arrival)
            request_id.reset(token)

    def _refused(self, scope: Scope) -> Forbidden | None:
        """The 403 of a restricted category asked without its header."""
        assert self.restrictions is not None
        category = http_category(scope["method"], scope["path"])
        if category is None:
            return None
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:  # ASGI names them in lower case
            headers.setdefault(key.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        try:
            self.restrictions.check(category, headers.get)
        except Forbidden as refused:
            return refused
        return None
