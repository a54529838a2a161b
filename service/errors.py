"""One error hierarchy for the service; one handler renders all of it.

    ServiceError (500)
    ├── BadRequest (400)            malformed JSON, wrong name/shape/dtype, NaN
    │   └── LoadFailed (400)        a model version that cannot be served
    ├── Unauthorized (401)          missing or wrong bearer token
    ├── NotFound (404)              unknown model, version or route
    ├── PayloadTooLarge (413)       body, image or tensor over a configured limit
    ├── Unavailable (503)           model unloaded or broken, server not ready
    │   ├── Overloaded (503)        the model's queue is full (Retry-After)
    │   └── RequestTimeout (503)    no result within the request timeout (Retry-After)
    └── InferenceFailed (500)       ONNX Runtime raised on valid input

Every response body is ``{"error": "<message>"}``. FastAPI's own 422 for
request validation and Starlette's HTTP exceptions (404 route, 405 method)
are rendered the same way, so no framework-shaped body ever leaks.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("bnfold.service")


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal"  # label of bnfold_inference_failures_total
    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(0, round(self.retry_after)))}


class BadRequest(ServiceError):
    status = 400
    reason = "bad_request"


class LoadFailed(BadRequest):
    """A model version failed to load; the message carries the reason."""


class Unauthorized(ServiceError):
    status = 401
    reason = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    status = 404
    reason = "not_found"


class PayloadTooLarge(ServiceError):
    status = 413
    reason = "too_large"


class Unavailable(ServiceError):
    status = 503
    reason = "unavailable"


class Overloaded(Unavailable):
    reason = "overloaded"


class RequestTimeout(Unavailable):
    reason = "timeout"


class InferenceFailed(ServiceError):
    status = 500
    reason = "inference_failed"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message}).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500 and not isinstance(exc, Unavailable):
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(exc.status, exc.message, exc.headers())


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, describe_validation(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, str(exc.detail), headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}")


def describe_validation(errors: Any) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
