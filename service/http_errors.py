"""Every error as HTTP: ``{"error": "<message>"}`` with its class's status,
counted in ``bnfold_inference_failures_total`` with its reason.

One handler renders whatever reaches the app's exception handling: a
service error as it is, FastAPI's request validation (its 422) as 400,
Starlette's HTTP exceptions (404 route, 405 method) by status, internal
exceptions through ``errors.ERROR_MAP``, anything else as 500; so no
framework-shaped body ever leaks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from . import errors
from .errors import (
    ERROR_MAP,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    describe_validation,
)

if TYPE_CHECKING:
    from .state import ServerState

log = logging.getLogger("bnfold.service")

# The statuses Starlette and FastAPI raise HTTPException with, as service errors.
HTTP_STATUS: dict[int, type[ServiceError]] = {
    400: BadRequest,  # a multipart body that does not parse
    401: Unauthorized,
    404: NotFound,  # no such route
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    503: Unavailable,
}


def error_response(error: ServiceError) -> Response:
    body = json.dumps({"error": error.message}).encode()
    return Response(
        body, status_code=error.status, headers=error.headers(), media_type="application/json"
    )


def _from_validation(exc: RequestValidationError) -> ServiceError:
    return BadRequest(describe_validation(exc.errors()))


def _from_http(exc: StarletteHTTPException) -> ServiceError:
    cls = HTTP_STATUS.get(exc.status_code)
    if cls is None:  # not raised by the framework today; keep its family
        cls = BadRequest if exc.status_code < 500 else ServiceError
    return cls(str(exc.detail), headers=exc.headers)


# The framework's own exceptions, by class.
FRAMEWORK: dict[type[Exception], Callable[[Any], ServiceError]] = {
    RequestValidationError: _from_validation,
    StarletteHTTPException: _from_http,
}


def as_service_error(exc: Exception) -> ServiceError:
    """What ``exc`` is to a client: the framework's error as ours, else
    ``errors.as_service_error`` (itself, ``ERROR_MAP``, or an internal error)."""
    for cls in type(exc).__mro__:
        convert = FRAMEWORK.get(cls)
        if convert is not None:
            return convert(exc)
    return errors.as_service_error(exc)


def render(
    state: ServerState, method: str, path: str, params: dict[str, Any], exc: Exception
) -> Response:
    """The answer to a failed request, logged and counted."""
    error = as_service_error(exc)
    if error.reason == "internal" and not isinstance(exc, ServiceError):  # a bug
        log.error("%s %s failed", method, path, exc_info=exc)
    elif error.status >= 500 and not error.retryable:
        log.error("%s %s: %s", method, path, error.message)
    else:  # a client's mistake: a verbose line (Triton logs it at --log-verbose)
        log.debug("%s %s: %d %s", method, path, error.status, error.message)
    state.count_failure(params.get("name"), params.get("version"), error.reason)
    return error_response(error)


async def _render(request: Request, exc: Exception) -> Response:
    state: ServerState = request.app.state.bnfold
    return render(state, request.method, request.url.path, request.path_params, exc)


def install_error_handlers(app: FastAPI) -> None:
    # Exception itself goes to Starlette's outermost middleware, which logs
    # and re-raises after the answer: only what nothing else catches.
    handled: tuple[type[Exception], ...] = (ServiceError, *ERROR_MAP, *FRAMEWORK, Exception)
    for cls in handled:
        app.add_exception_handler(cls, _render)
