"""One error hierarchy for the service, and one table from internal errors to it.

    ServiceError (500 INTERNAL)
    ├── BadRequest (400 INVALID_ARGUMENT)    malformed JSON, wrong name/shape/dtype, NaN
    │   ├── InputTooLarge (400)              a body over --max-body-bytes (Triton's 400)
    │   ├── TooManyChunks (400)              a chunked body of too many chunks (Triton's 400)
    │   ├── ShmUnopenable (400 INTERNAL)     a shared-memory key that names no object
    │   └── LoadFailed (400)                 a model version that cannot be served
    │       └── FilesRefused (400 INTERNAL)  ``file:`` overrides on a load request
    ├── Unauthorized (401 UNAUTHENTICATED)   missing or wrong bearer token
    ├── Forbidden (403 UNAVAILABLE)          a restricted API without its header (Triton's)
    ├── NotFound (404 NOT_FOUND)             unknown model, version or route
    ├── MethodNotAllowed (405 UNIMPLEMENTED) a route asked with the wrong method
    ├── Unimplemented (501 UNIMPLEMENTED)    an RPC or feature bnfold does not serve
    ├── PayloadTooLarge (413 RESOURCE_EXHAUSTED)  an image over a limit
    ├── Unavailable (503 UNAVAILABLE)        model unloaded or broken, server not ready
    │   ├── Overloaded (503)                 the model's queue is full
    │   └── RequestTimeout (503 DEADLINE_EXCEEDED)  no result within the request timeout
    └── InferenceFailed (500 INTERNAL)       ONNX Runtime raised on valid input

Each class carries what any front end needs to answer: ``status`` (HTTP),
``grpc_code`` (the name of a ``grpc.StatusCode``) and ``reason`` (the label
of ``bnfold_inference_failures_total``); the 503s take a ``Retry-After``.

``ERROR_MAP`` says which service error an internal exception (the batcher's,
the contract's) is to a client, as httpx maps httpcore's exceptions:
``as_service_error`` is the one place that answers "what is this exception
to a client", for every front end (``map_errors`` raises it inside a block);
whatever no table names is ``internal_error()``, a 500 INTERNAL that names
only the exception's class. HTTP rendering: service/http_errors.py; gRPC:
service/grpc_server.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from bnfold.contract import ContractError

from .batching import BatcherClosed, DeadlineExceeded, QueueFull, QueueTimeout


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False  # a 503: the answer carries Retry-After
    # How an internal error mapped to this class reads (``map_errors``):
    # ``{error}`` is the first line of its message.
    template: ClassVar[str] = "{error}"
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after
        self._headers = dict(headers) if headers else {}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return dict(self._headers)
        return {**self._headers, "Retry-After": str(max(0, round(self.retry_after)))}


class BadRequest(ServiceError):
    status = 400
    grpc_code = "INVALID_ARGUMENT"
    reason = "bad_request"


# Triton's advice in each of its size refusals; ``bnfold serve`` takes
# Triton's flag as another name of --max-body-bytes (service/cli.py).
MAX_INPUT_HINT = "Use --http-max-input-size to increase the limit."


class InputTooLarge(BadRequest):
    """A request body (or what it decompresses to) over ``--max-body-bytes``,
    Triton's ``--http-max-input-size``: Triton answers it 400 with its own
    words (service/middleware.py ``body_too_large``), and so does bnfold."""

    reason = "too_large"


# Triton's kMaxChunkedChunks: the non-empty chunks a chunked body may have.
MAX_CHUNKS = 1 << 16


class TooManyChunks(BadRequest):
    """A chunked request body of more non-empty chunks than Triton takes
    (``MAX_CHUNKS``, its ``kMaxChunkedChunks``): each chunk costs the server
    bookkeeping whatever its size, so a body sent a byte a chunk is refused
    once past the limit (service/connections.py), in Triton's words, and its
    connection closed."""

    reason = "too_large"

    def __init__(self) -> None:
        super().__init__(
            f"Chunked request body exceeds maximum of {MAX_CHUNKS} non-empty chunks. "
            "Send fewer or larger HTTP chunks."
        )


class ShmUnopenable(BadRequest):
    """A system shared-memory key that cannot be opened (no such object, or
    not one a region may be). Triton answers it with INTERNAL over gRPC, and
    its clients check for that status; over HTTP it stays a 400."""

    grpc_code = "INTERNAL"

    def __init__(self, key: str) -> None:
        super().__init__(f"Unable to open shared memory region: '{key}'")


class LoadFailed(BadRequest):
    """A model version failed to load; the message carries the reason."""


class FilesRefused(LoadFailed):
    """``file:`` overrides (a model directory sent with the request). Triton
    answers a load whose files it cannot poll with INTERNAL, and its clients
    check for that status; over HTTP it stays a 400."""

    grpc_code = "INTERNAL"


class Unauthorized(ServiceError):
    status = 401
    grpc_code = "UNAUTHENTICATED"
    reason = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A restricted API category asked without its header (service/restricted.py);
    Triton answers 403 over HTTP and UNAVAILABLE over gRPC."""

    status = 403
    grpc_code = "UNAVAILABLE"
    reason = "restricted"


class NotFound(ServiceError):
    status = 404
    grpc_code = "NOT_FOUND"
    reason = "not_found"


class MethodNotAllowed(ServiceError):
    status = 405
    grpc_code = "UNIMPLEMENTED"
    reason = "method_not_allowed"


class Unimplemented(ServiceError):
    status = 501
    grpc_code = "UNIMPLEMENTED"
    reason = "unimplemented"


class PayloadTooLarge(ServiceError):
    """An uploaded image over ``--max-image-pixels`` or ``--max-image-bytes``
    (bnfold's own routes; a body over the size limit is ``InputTooLarge``)."""

    status = 413
    grpc_code = "RESOURCE_EXHAUSTED"
    reason = "too_large"


class Unavailable(ServiceError):
    status = 503
    grpc_code = "UNAVAILABLE"
    reason = "unavailable"
    retryable = True
    template = "model {model!r} is unavailable: {error}"


class Overloaded(Unavailable):
    reason = "overloaded"
    template = "model {model!r} is overloaded: {error}"


class RequestTimeout(Unavailable):
    grpc_code = "DEADLINE_EXCEEDED"
    reason = "timeout"
    template = "model {model!r}: {error}"


class InferenceFailed(ServiceError):
    reason = "inference_failed"
    template = "model {model!r} version {version} failed: {error}"


# Internal exceptions -> what they are to a client. Looked up along the
# exception's MRO, so the most specific entry wins.
ERROR_MAP: dict[type[Exception], type[ServiceError]] = {
    QueueFull: Overloaded,
    QueueTimeout: Unavailable,  # Triton's queue policy: UNAVAILABLE, "Request timeout expired"
    DeadlineExceeded: RequestTimeout,
    BatcherClosed: Unavailable,
    ContractError: BadRequest,  # a name or version that breaks the contract
}


def error_class(exc: BaseException) -> type[ServiceError] | None:
    """The service error ``exc`` is to a client: its own class for a service
    error, the ``ERROR_MAP`` entry for an internal one, None when unmapped."""
    if isinstance(exc, ServiceError):
        return type(exc)
    for cls in type(exc).__mro__:
        mapped = ERROR_MAP.get(cls)
        if mapped is not None:
            return mapped
    return None


def service_error(
    exc: Exception,
    fallback: type[ServiceError] | None = None,
    *,
    model: str = "",
    version: object = "",
    retry_after: float | None = None,
) -> ServiceError | None:
    """``exc`` as the service error a client gets (itself if it is one), with
    the message its class's ``template`` gives; ``fallback`` for an unmapped
    exception, None without one."""
    if isinstance(exc, ServiceError):
        return exc
    cls = error_class(exc) or fallback
    if cls is None:
        return None
    message = cls.template.format(error=first_line(exc), model=model, version=version)
    return cls(message, retry_after=retry_after if cls.retryable else None)


def internal_error(exc: BaseException) -> ServiceError:
    """What a client learns of a bug: a 500 naming only the exception's
    class (the traceback goes to the log, never to the client)."""
    return ServiceError(f"internal error: {type(exc).__name__}")


def as_service_error(exc: Exception) -> ServiceError:
    """``exc`` as a client is answered: a service error as it is, an internal
    exception through ``ERROR_MAP``, anything else ``internal_error``."""
    error = service_error(exc)
    return error if error is not None else internal_error(exc)


@contextmanager
def map_errors(
    fallback: type[ServiceError] | None = None,
    *,
    model: str = "",
    version: object = "",
    retry_after: float | None = None,
) -> Iterator[None]:
    """Re-raise an internal exception of the block as its service error
    (``service_error``); service errors and unmapped exceptions pass."""
    try:
        yield
    except ServiceError:
        raise
    except Exception as exc:
        error = service_error(exc, fallback, model=model, version=version, retry_after=retry_after)
        if error is None:
            raise
        raise error from None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def describe_validation(errors: Any) -> str:
    """pydantic's (or FastAPI's) validation errors as one message."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "invalid request: " + "; ".join(parts)
