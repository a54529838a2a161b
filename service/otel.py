"""OpenTelemetry spans of each traced inference, exported over OTLP/HTTP.

Imported only when an OTLP endpoint is configured (``--otlp-endpoint`` or
OpenTelemetry's ``OTEL_EXPORTER_OTLP_ENDPOINT``): without one, the serving
path loads nothing of OpenTelemetry (``pip install 'bnfold[otel]'`` brings
it). Three spans per traced request, all with its trace id:

    request   (SERVER; the client's ``traceparent`` is its parent when sent)
    ├── queue     from entering the batcher's queue to its batch starting
    └── compute   its batch: merge, ONNX Runtime, split

The queue and compute spans are written once the request has its answer,
from the batcher's timestamps (service/batching.py ``timestamps``), so the
batcher itself knows nothing of tracing. Spans leave in batches (the SDK's
``BatchSpanProcessor``, a thread of its own, ``OTEL_BSP_*`` variables) and
the rest are flushed at shutdown.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .protocol import SERVER_NAME, SERVER_VERSION

TRACES_PATH = "/v1/traces"

Span = trace.Span


def traces_url(endpoint: str) -> str:
    """The collector's traces URL: ``endpoint`` as OpenTelemetry's variable
    gives it (a base URL), with ``/v1/traces`` added unless it is there."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


class Spans:
    """The tracer of one server and its exporter."""

    def __init__(self, endpoint: str) -> None:
        resource = Resource.create({"service.name": SERVER_NAME, "service.version": SERVER_VERSION})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(traces_url(endpoint))))
        self.tracer = self.provider.get_tracer("bnfold.service", SERVER_VERSION)
        self._propagator = TraceContextTextMapPropagator()

    def request(self, traceparent: str | None, attributes: Mapping[str, str]) -> Span:
        """The request's span, a child of the client's when its W3C
        ``traceparent`` is valid (a new trace otherwise)."""
        parent = None
        if traceparent:
            parent = self._propagator.extract({"traceparent": traceparent})
        return self.tracer.start_span(
            "request", context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
        )

    def finish(self, span: Span, stamps: Sequence[float], error: BaseException | None) -> None:
        """The queue and compute spans from the batcher's ``perf_counter``
        (enqueued, started, inputs merged, run done, finished), then the
        request's end."""
        if len(stamps) == 5:
            offset = time.time_ns() - time.perf_counter_ns()
            enqueued, started, finished = (int(stamps[i] * 1e9) + offset for i in (0, 1, 4))
            inside = trace.set_span_in_context(span)
            for name, begin, end in (("queue", enqueued, started), ("compute", started, finished)):
                child = self.tracer.start_span(name, context=inside, start_time=begin)
                child.end(end_time=end)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()

    @staticmethod
    def trace_id(span: Span) -> str:
        return format(span.get_span_context().trace_id, "032x")

    def shutdown(self) -> None:
        """Send what is left (blocking: call it in a thread)."""
        self.provider.shutdown()
