"""What both front ends (HTTP and gRPC) share about a running server, and
neither owns: the state ``create_app`` builds and its lifespan fills, the
request id of the request being answered, the bearer token check, the
"server is starting" refusal and the one place failures are counted.

Nothing here knows a wire format: HTTP hands over its ``Authorization``
header, gRPC its ``authorization`` metadata, and both get the same answer.
"""

from __future__ import annotations

import contextvars
import hmac
import itertools
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .batching import Arrivals
from .errors import Unauthorized, Unavailable
from .metrics import Metrics
from .protocol import EXTENSIONS
from .settings import Settings
from .tracing import TraceSettings

if TYPE_CHECKING:
    from .otel import Spans
    from .repository import Repository
    from .shm import SharedMemory
    from .trace_file import TraceFile

# The id of the request being answered, on every log line it writes.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Its trace id (32 hex digits) when it is traced, and the model and version
# that serve it once known: on its log lines too (service/logs.py).
trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="")
serving_model: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "serving_model", default=None
)

_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestIds:
    """A client's ``X-Request-ID`` when it is sane, else a generated one: a
    random per-process prefix and a counter, unique without a system call
    per request."""

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix + uuid.uuid4().hex[: 20 - len(prefix)]
        self._counter = itertools.count(1)

    def pick(self, given: str) -> str:
        if _SANE_ID.match(given):
            return given
        return f"{self._prefix}{next(self._counter):012x}"


@dataclass
class ServerState:
    """Everything one app holds; built by ``create_app``, filled by its lifespan."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    arrivals: Arrivals = field(default_factory=Arrivals)
    repository: Repository | None = None
    executor: ThreadPoolExecutor | None = None
    shm: SharedMemory | None = None  # system shared memory regions (HTTP and gRPC)
    spans: Spans | None = None  # OpenTelemetry, only when an OTLP endpoint is set
    tracing: TraceSettings = field(default_factory=TraceSettings)  # Triton's trace settings
    trace_file: TraceFile | None = None  # trace mode triton: the operator's trace file
    started: bool = False
    draining: bool = False

    @property
    def extensions(self) -> list[str]:
        """The protocol extensions served metadata lists (system shared
        memory only while clients may use it)."""
        if self.settings.allow_client_shm:
            return list(EXTENSIONS)
        return [e for e in EXTENSIONS if e != "system_shared_memory"]

    @property
    def ready(self) -> bool:
        return self.started and not self.draining

    def serving_repository(self) -> Repository:
        """The repository, or 503 while the lifespan has not built it yet."""
        if self.repository is None:
            raise Unavailable("the server is starting", retry_after=self.settings.retry_after_s)
        return self.repository

    def authorize(self, authorization: str) -> None:
        """The bearer token check (an ``Authorization`` header's value, or
        gRPC's ``authorization`` metadata), when a token is configured."""
        token = self.settings.api_token
        if token is None:
            return
        scheme, _, given = authorization.partition(" ")
        expected = token.get_secret_value()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("a valid bearer token is required for repository operations")

    def count_failure(self, name: object, version: object, reason: str) -> None:
        """One failed request in ``bnfold_inference_failures_total``, labelled
        with the model and version it named when the repository knows them."""
        labels = ("", "")
        if self.repository is not None and isinstance(name, str) and name:
            labels = self.repository.metric_labels(
                name, version if isinstance(version, str) and version else None
            )
        self.metrics.count_failure(*labels, reason)
