"""Inference: Open Inference Protocol V2 (JSON and binary) and KServe V1.

The hot path reads the body once, decodes straight to numpy (no pydantic
per tensor), and hands the request to the data plane (service/dataplane.py),
which holds the model version (``Repository.serving``) until the outputs are
encoded, so a swap or unload never cuts a request short.

``POST /v2/models/{m}[/versions/{v}]/infer`` is answered by ``direct``, a
plain ASGI endpoint that ``middleware.RequestContext`` calls before
FastAPI's exception middleware, routing and dependency solving (measured:
most of a request's event-loop time went there); the FastAPI routes below
stay registered for the OpenAPI description, and answer the same way.

A client that disconnects while its request waits in a batcher's queue
cancels it: ``direct`` (and every FastAPI route that runs a model:
``unless_gone``) watches for ``http.disconnect`` once the request is
queued, and the request then leaves the queue without running
(service/batching.py); nothing is sent, and the HTTP metrics count it with
status 499 (``GONE``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .. import dataplane
from ..batching import on_queue
from ..binary import HEADER_LENGTH
from ..codec import decode_v1, decompress, encode_result, encode_v1, parse_infer
from ..deps import RepositoryDep, StateDep, VersionDep
from ..http_errors import render
from ..protocol import (
    InferenceRequest,
    InferenceResponse,
    PredictRequestV1,
    PredictResponseV1,
    inline_schema,
)
from ..signature import Signature
from ..state import ServerState
from ..trace_file import Front
from .responses import MODEL, Responses, errors

router = APIRouter(tags=["inference"])
T = TypeVar("T")

ERRORS = errors(
    {
        400: "Bad input: JSON, name, shape, datatype, NaN (or version); body over the size limit.",
        404: MODEL[404],
        500: "ONNX Runtime failed on input that passed every check.",
        503: "Not ready, overloaded or timed out (Retry-After).",
    }
)
OUTPUTS: Responses = {
    200: {"model": InferenceResponse, "description": "Outputs (JSON, or binary framing)."}
}
V1_OUTPUTS: Responses = {200: {"model": PredictResponseV1}}
V2_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferenceRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header (Inference-Header-Content-Length bytes), "
                "then each binary input's bytes in input order.",
            },
        },
    }
}
V1_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_schema(PredictRequestV1)}},
    }
}


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    name="infer_version",
    summary="Inference on a version (V2)",
    responses=OUTPUTS | ERRORS,
    openapi_extra=V2_BODY,
    response_class=Response,
)
@router.post(
    "/v2/models/{name}/infer",
    summary="Inference (V2)",
    responses=OUTPUTS | ERRORS,
    openapi_extra=V2_BODY,
    response_class=Response,
)
async def infer(name: str, request: Request, state: StateDep, version: VersionDep) -> Response:
    """Open Inference Protocol inference with Triton's binary tensor data
    extension. A body without Content-Type is read as JSON. ``outputs``
    selects outputs; ``parameters.binary_data_output`` or per-output
    ``parameters.binary_data`` returns them in binary. A header length of 0
    is Triton's raw binary request: the body is the single input's bytes."""
    body = await request.body()
    answered = await unless_gone(request, answer(state, name, version, request.headers, body))
    if answered is None:
        return Response(status_code=GONE_STATUS)  # never sent: the client is gone
    content, headers = answered
    return Response(content, headers=headers)


async def answer(
    state: ServerState,
    name: str,
    version: str | None,
    headers: Mapping[str, str],
    body: bytes,
    front: Front | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers of one V2 inference request (``front``:
    its HTTP stamps, in Triton's trace mode)."""
    limit = state.settings.max_body_bytes
    wire: list[dataplane.WireRequest] = []

    def parse(signature: Signature) -> dataplane.WireRequest:
        raw = decompress(body, headers.get("content-encoding"), limit)
        wire.append(parse_infer(raw, headers.get(_LENGTH), signature, name))
        return wire[0]

    result = await dataplane.infer(state, name, version, parse, headers.get("traceparent"), front)
    return encode_result(result, wire[0].parameters.get("binary_data_output") is True)


class _Template:
    """What ``scope["route"]`` says of a direct answer: the route's path
    template, for the HTTP metrics (as a FastAPI route would)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


PLAIN = _Template("/v2/models/{name}/infer")
VERSIONED = _Template("/v2/models/{name}/versions/{version}/infer")
_LENGTH = HEADER_LENGTH.lower()  # header names as ASGI gives them (Headers ignores case)
_WANTED = (b"content-encoding", _LENGTH.encode(), b"traceparent")
# Triton's trace file: the HTTP front end's stamps (docs/service.md says what
# each is here).
RECV_START, RECV_END = "HTTP_RECV_START", "HTTP_RECV_END"
SEND_START, SEND_END = "HTTP_SEND_START", "HTTP_SEND_END"
GONE = "bnfold.client_gone"  # set in the scope of a request whose client went away
GONE_STATUS = 499  # what the HTTP metrics count for it


def direct_target(scope: Scope) -> tuple[str, str | None] | None:
    """The model and version of a ``POST .../infer`` that ``direct`` answers;
    None for every other request (FastAPI routes it)."""
    if scope["method"] != "POST":
        return None
    parts = scope["path"].split("/")
    if parts[-1] != "infer" or parts[:3] != ["", "v2", "models"] or not all(parts[3:-1]):
        return None
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    return None


async def direct(
    scope: Scope,
    receive: Receive,
    send: Send,
    target: tuple[str, str | None],
    started: float = 0.0,
) -> None:
    """``infer`` as a plain ASGI endpoint: the same answer, errors rendered
    (and counted) by service/http_errors.py as FastAPI's handler would.
    ``started``: when the request was handed to bnfold (``perf_counter``),
    its ``HTTP_RECV_START`` in Triton's trace mode."""
    name, version = target
    scope["route"] = PLAIN if version is None else VERSIONED
    state: ServerState = scope["app"].state.bnfold
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        if key in _WANTED:
            headers[key.decode("latin-1")] = value.decode("latin-1")
    front = None if state.trace_file is None else Front(state.trace_file, (RECV_START, started))
    try:
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if front is not None:
            front.stamps.append((RECV_END, time.perf_counter()))
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        answered = await _unless_gone(answer(state, name, version, headers, body, front), receive)
        if answered is None:
            scope[GONE] = True
            if front is not None:
                front.done()  # nothing to send
            return
        content, out_headers = answered
    except Exception as e:
        if front is not None:
            front.done()  # its error is not an answer it traced
        params: dict[str, Any] = {"name": name, "version": version}
        await render(state, "POST", scope["path"], params, e)(scope, receive, send)
        return
    raw = [(b"content-length", str(len(content)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out_headers.items()]
    if front is None or front.trace is None:  # the usual path: no trace to finish
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})
        return
    sending = time.perf_counter()
    try:
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})
    finally:
        front.done((SEND_START, sending), (SEND_END, time.perf_counter()))


async def _disconnected(receive: Receive) -> bool:
    """Whether the client went away (the body was read: uvicorn's next
    message is ``http.disconnect``, when it comes)."""
    return (await receive())["type"] == "http.disconnect"


async def unless_gone(request: Request, answering: Awaitable[T]) -> T | None:
    """``answering``'s result in a FastAPI route whose body was read, or
    None when its client went away meanwhile (the scope then says so)."""
    answered = await _unless_gone(answering, request.receive)
    if answered is None:
        request.scope[GONE] = True
    return answered


async def _unless_gone(answering: Awaitable[T], receive: Receive) -> T | None:
    """``answering``'s result, or None when the client disconnects first.
    Once the request enters a batcher's queue (``batching.on_queue``) a task
    watches ``receive``; a disconnect then cancels this task where it waits,
    and the request leaves the queue. A request that never queues (run
    inline on an idle model) costs no task."""
    task = asyncio.current_task()
    assert task is not None
    state = {"answering": True, "gone": False}
    watches: list[asyncio.Task[bool]] = []

    def on_watch(done: asyncio.Task[bool]) -> None:
        gone = not done.cancelled() and done.exception() is None and done.result()
        if gone and state["answering"]:
            state["gone"] = True
            task.cancel()

    def watch() -> None:
        if not watches:
            watches.append(asyncio.get_running_loop().create_task(_disconnected(receive)))
            watches[0].add_done_callback(on_watch)

    hook = on_queue.set(watch)
    try:
        return await answering
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        task.uncancel()
        return None
    finally:
        on_queue.reset(hook)
        state["answering"] = False
        for watching in watches:
            watching.cancel()


@router.post(
    "/v1/models/{name}:predict",
    summary="Prediction (KServe V1)",
    responses=V1_OUTPUTS | ERRORS,
    openapi_extra=V1_BODY,
    response_class=Response,
)
async def predict_v1(name: str, request: Request, repo: RepositoryDep, state: StateDep) -> Response:
    """``{"instances": [row, ...]}`` to ``{"predictions": [row, ...]}``; one row
    per instance, for curl users. With several inputs an instance is an
    object keyed by input name."""
    settings = state.settings
    body = await request.body()

    async def predict() -> bytes:
        async with repo.serving(name) as served:
            signature = served.signature
            feeds, rows = decode_v1(body, signature, allow_nonfinite=settings.allow_nonfinite)
            outputs = await dataplane.run(served, feeds, rows, settings.request_timeout_s)
            return encode_v1(outputs, signature.output_names())

    content = await unless_gone(request, predict())
    if content is None:
        return Response(status_code=GONE_STATUS)  # never sent: the client is gone
    return Response(content, media_type="application/json")
