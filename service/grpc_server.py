"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``,
Triton's service definition (``proto/grpc_service.proto``), so that
``tritonclient.grpc`` (sync and aio) and Triton's example clients work
unchanged.

One ``grpc.aio`` server runs in the app's event loop beside uvicorn,
started by the lifespan once the models are loaded and stopped before they
are released; it shares everything with HTTP: the repository (acquire and
release around each request, so swaps and unloads never cut one short), the
batcher (gRPC and HTTP requests batch together), validation, the error
messages, the bearer token (``authorization: Bearer ...`` metadata on the
repository and shared-memory RPCs), the metrics and the shutdown.

Errors are gRPC statuses with the HTTP message as details: each error
class names its ``grpc_code`` beside its HTTP status (service/errors.py
draws the table); a 503's ``retry-after`` goes in the trailing metadata. A
request that is not a valid protobuf message is INVALID_ARGUMENT, not grpc's
generic INTERNAL. Inference itself is the data plane's (service/dataplane.py):
this module only turns messages into its requests and its results into
messages (service/grpc_codec.py).

``ModelStreamInfer`` answers each request on the stream in the order sent;
up to ``STREAM_WINDOW`` of them are in the batcher at once, so a client
that pipelines requests on one stream gets them batched.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Histogram

from . import config_override, dataplane, logs
from .connections import grpc_max_rpcs, grpc_options
from .errors import (
    BadRequest,
    NotFound,
    ServiceError,
    Unavailable,
    Unimplemented,
    as_service_error,
)
from .grpc_codec import encode_result, parameter_value, parse_request
from .metrics import LATENCY_BUCKETS, protocol
from .proto import grpc_service_pb2 as pb
from .proto import model_config_pb2 as mc
from .protocol import SERVER_NAME, SERVER_VERSION
from .repository import Repository
from .restricted import GRPC_CATEGORIES, Restrictions
from .shm import DISABLED, SharedMemory
from .state import RequestIds, ServerState, request_id
from .trace_file import Front
from .tracing import unknown_model as unknown_trace_model

log = logging.getLogger("bnfold.service")
access = logging.getLogger("bnfold.access")

SERVICE = "inference.GRPCInferenceService"
STREAM_WINDOW = 64  # requests of one stream in the batcher at once
# The repository, shared-memory and trace-setting RPCs need the bearer token, when one is set.
PROTECTED = frozenset(
    {
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
        "TraceSetting",
        "LogSettings",
    }
)
UNSUPPORTED = {
    # Status and unregister answer (nothing is registered): clients call them to clean up.
    "CudaSharedMemoryRegister": "CUDA shared memory is not supported; use system shared memory",
}
# Where each RPC names a model and version (failure metrics' labels).
MODEL_FIELDS: dict[str, tuple[str, str | None]] = {
    "ModelInfer": ("model_name", "model_version"),
    "ModelStreamInfer": ("model_name", "model_version"),
    "ModelReady": ("name", "version"),
    "ModelMetadata": ("name", "version"),
    "ModelConfig": ("name", "version"),
    "ModelStatistics": ("name", "version"),
    "RepositoryModelLoad": ("model_name", None),
    "RepositoryModelUnload": ("model_name", None),
}
_IDS = RequestIds("g")
# The call's W3C ``traceparent`` metadata, for the inference it makes.
_traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bnfold_traceparent", default=None
)


def status_code(error: ServiceError) -> grpc.StatusCode:
    """The gRPC status of a service error: its class's ``grpc_code``."""
    return grpc.StatusCode[error.grpc_code]


class _Malformed:
    """What the deserializer hands over for bytes that are no valid message."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _deserializer(cls: type[Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as e:
            return _Malformed(f"the request is not a valid {cls.DESCRIPTOR.name}: {e}")

    return parse


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "bnfold_grpc_requests",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "bnfold_grpc_request_duration_seconds",
            "Time from a gRPC call's start to its answer, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics(registry: CollectorRegistry) -> _Metrics:
    """One set of series per registry (an app restarted in a test keeps it)."""
    if registry not in _METRICS:
        _METRICS[registry] = _Metrics(registry)
    return _METRICS[registry]


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


# Triton's trace file: the gRPC front end's stamps (docs/service.md says what
# each is here; the end of the send happens in gRPC, after the handler).
WAITREAD_START, WAITREAD_END, SEND_START = (
    "GRPC_WAITREAD_START",
    "GRPC_WAITREAD_END",
    "GRPC_SEND_START",
)


class InferenceServicer:
    """The RPCs; each takes the request message and returns the response
    message, raising a ``ServiceError`` on failure."""

    def __init__(self, state: ServerState, shm: SharedMemory | None = None) -> None:
        self.state = state
        self.settings = state.settings
        if shm is not None and state.shm is None:
            state.shm = shm
        # Which process answered (which of --workers N): HTTP's X-Bnfold-Worker.
        self.worker = ("x-bnfold-worker", str(os.getpid()))
        self.restrictions = Restrictions.grpc(state.settings.grpc_restricted_protocol)

    # --- plumbing
    def repository(self) -> Repository:
        return self.state.serving_repository()

    def count_failure(self, method: str, request: Any, reason: str) -> None:
        """One failed call, labelled with the model (and version) it named."""
        fields = MODEL_FIELDS.get(method)
        name = version = None
        if fields is not None:
            name = getattr(request, fields[0], None)
            version = getattr(request, fields[1], None) if fields[1] else None
        self.state.count_failure(name, version, reason)

    # --- health and metadata
    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        ready = self.state.ready
        if ready and self.settings.strict_readiness and self.state.repository is not None:
            ready, _ = self.state.repository.readiness()
        return pb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        try:
            self.repository().get(request.name, request.version or None)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=self.state.extensions
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        meta = self.repository().get(request.name, request.version or None).metadata()
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        served = self.repository().get(request.name, request.version or None)
        config = json_format.ParseDict(served.triton_config(), mc.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest
    ) -> pb.ModelStatisticsResponse:
        repo, metrics = self.repository(), self.state.metrics
        if request.name:
            models = [repo.get(request.name, request.version or None)]
        elif request.version:
            raise BadRequest("a version needs a model name")
        else:
            models = repo.served()
        stats = [
            json_format.ParseDict(metrics.model_stats(m.name, m.version), pb.ModelStatistics())
            for m in models
        ]
        return pb.ModelStatisticsResponse(model_stats=stats)

    # --- Triton's trace extension (service/tracing.py)
    async def TraceSetting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        model = request.model_name or None
        # Triton asks whether the model is ready
        if model is not None and not self.repository().served_versions(model):
            raise unknown_trace_model(model)
        tracing = self.state.tracing
        if request.settings:
            values = {k: list(v.value) or None for k, v in request.settings.items()}
            settings = tracing.update(values, model)
        else:
            settings = tracing.get(model)
        value = pb.TraceSettingResponse.SettingValue
        return pb.TraceSettingResponse(
            settings={
                k: value(value=v if isinstance(v, list) else [v]) for k, v in settings.items()
            }
        )

    # --- Triton's logging extension (service/logs.py)
    async def LogSettings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        values: dict[str, object] = {}
        for key, setting in request.settings.items():
            field = setting.WhichOneof("parameter_choice")
            value = getattr(setting, field) if field else None
            values[key] = logs.grpc_setting(key, field, value)
        settings = logs.update_log_settings(values) if values else logs.log_settings()
        response = pb.LogSettingsResponse()
        for key, v in settings.items():
            setattr(response.settings[key], logs.GRPC_FIELDS[logs.KINDS[key]][0], v)
        return response

    # --- the repository
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest
    ) -> pb.RepositoryIndexResponse:
        entries = self.repository().index(ready_only=request.ready)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(
                    name=e["name"],
                    version=e.get("version") or "",
                    state=e["state"],
                    reason=e.get("reason", ""),
                )
                for e in entries
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest
    ) -> pb.RepositoryModelLoadResponse:
        params = {k: parameter_value(v) for k, v in request.parameters.items()}
        await config_override.load(self.repository(), request.model_name, params)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        repository = self.repository()
        repository.check_control()  # refused in model control modes none and poll
        await repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- system shared memory (service/shm.py)
    def shared_memory(self) -> SharedMemory:
        if self.state.shm is None:
            raise Unimplemented("shared memory is not enabled")
        return self.state.shm

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        regions = self.shared_memory().status(request.name or None)
        return pb.SystemSharedMemoryStatusResponse(
            regions={r["name"]: status(**r) for r in regions}
        )

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.shared_memory().register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.shared_memory().unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            raise NotFound(f"no CUDA shared memory region {request.name!r} is registered")
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        if not self.shared_memory().allowed:  # client shared memory off: Triton's words
            raise Unimplemented(DISABLED)
        if request.name:
            raise NotFound(f"no CUDA shared memory region {request.name!r} is registered")
        return pb.CudaSharedMemoryUnregisterResponse()

    # --- inference
    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        arrival = self.state.arrivals.enter(object())  # a key per call: see batching.Arrivals
        file = self.state.trace_file
        front = None
        if file is not None:  # Triton's trace mode: gRPC has read the request (docs/service.md)
            read = time.perf_counter()
            front = Front(file, (WAITREAD_START, read), (WAITREAD_END, read))
        try:
            result = await dataplane.infer(
                self.state,
                request.model_name,
                request.model_version or None,
                lambda _signature: parse_request(request),
                _traceparent.get(),
                front,
            )
        finally:
            self.state.arrivals.leave(arrival)
        if front is None or front.trace is None:
            return encode_result(result)
        try:
            response = encode_result(result)
        except BaseException:
            front.done()  # not sent: no send stamp
            raise
        front.done((SEND_START, time.perf_counter()))  # handed to gRPC to send
        return response

    async def stream_one(self, request: pb.ModelInferRequest | _Malformed) -> Any:
        """One request of a stream: its response, or its error as ``error_message``."""
        if isinstance(request, _Malformed):
            return pb.ModelStreamInferResponse(error_message=request.error)
        try:
            response = await self.ModelInfer(request)
        except Exception as e:
            error = as_service_error(e)
            if error.reason == "internal":
                log.exception("gRPC stream request to %s failed", request.model_name)
            self.count_failure("ModelStreamInfer", request, error.reason)
            return pb.ModelStreamInferResponse(
                error_message=error.message,
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )
        return pb.ModelStreamInferResponse(infer_response=response)

    async def ModelStreamInfer(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Each request answered in the order sent, up to ``STREAM_WINDOW`` in flight."""
        window = asyncio.Semaphore(STREAM_WINDOW)
        answers: asyncio.Queue[asyncio.Task[Any] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    answers.put_nowait(loop.create_task(self.stream_one(request)))
            finally:
                answers.put_nowait(None)

        reader = loop.create_task(read())
        try:
            while (task := await answers.get()) is not None:
                answer = await task
                window.release()
                yield answer
            await reader  # the client's half ended: re-raise what ended it, if anything
        finally:
            reader.cancel()
            while not answers.empty():
                task = answers.get_nowait()
                if task is not None:
                    task.cancel()


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class _Handlers(grpc.GenericRpcHandler):
    def __init__(self, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self._methods = methods

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = getattr(handler_call_details, "method", "")
        return self._methods.get(method)


def _fail(exc: Exception) -> tuple[grpc.StatusCode, str, str, tuple[tuple[str, str], ...]]:
    """Status, message, failure reason and trailing metadata of a failed call."""
    error = as_service_error(exc)
    trailers: tuple[tuple[str, str], ...] = ()
    if error.retry_after is not None:
        trailers = (("retry-after", str(max(0, round(error.retry_after)))),)
    return status_code(error), error.message, error.reason, trailers


def build_handlers(servicer: InferenceServicer, registry: CollectorRegistry) -> _Handlers:
    """Every method of the service, wrapped with the bearer-token check, error
    mapping, request id, metrics and access log."""
    metrics = _metrics(registry)
    settings = servicer.settings
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods: dict[str, grpc.RpcMethodHandler] = {}

    def begin(context: grpc.aio.ServicerContext, name: str) -> tuple[Any, float]:
        metadata = _metadata(context)
        rid = _IDS.pick(metadata.get("x-request-id", ""))
        token = request_id.set(rid)
        # Each call runs in a task of its own: these stay with it.
        protocol.set("grpc")
        _traceparent.set(metadata.get("traceparent"))
        context.set_trailing_metadata((("x-request-id", rid), servicer.worker))
        servicer.restrictions.check(GRPC_CATEGORIES.get(name), metadata.get)  # Triton's first
        if name in PROTECTED:
            servicer.state.authorize(metadata.get("authorization", ""))
        if name in UNSUPPORTED:
            raise Unimplemented(UNSUPPORTED[name])
        return token, time.perf_counter()

    def end(name: str, code: grpc.StatusCode, started: float) -> None:
        seconds = time.perf_counter() - started
        metrics.calls.labels(name, code.name).inc()
        metrics.latency.labels(name).observe(seconds)
        if settings.access_log:
            access.info("gRPC %s %s %.2fms", name, code.name, seconds * 1e3)

    async def abort(
        context: grpc.aio.ServicerContext,
        name: str,
        request: Any,
        error: Exception,
        started: float,
    ) -> None:
        code, message, reason, trailers = _fail(error)
        if code == grpc.StatusCode.INTERNAL:
            log.error("gRPC %s failed: %s", name, message, exc_info=error)
        else:
            log.debug("gRPC %s: %s %s", name, code.name, message)
        servicer.count_failure(name, request, reason)
        end(name, code, started)
        context.set_trailing_metadata(
            (("x-request-id", request_id.get()), servicer.worker, *trailers)
        )
        await context.abort(code, message)

    def unary(name: str) -> Behavior:
        behavior = getattr(servicer, name, None)

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            token = None
            try:
                token, started = begin(context, name)
                if isinstance(request, _Malformed):
                    raise BadRequest(request.error)
                if behavior is None:
                    raise Unimplemented(f"{name} is not implemented")
                response = await behavior(request)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as e:
                await abort(context, name, request, e, started)
                raise AssertionError("unreachable: abort raises") from None
            else:
                end(name, grpc.StatusCode.OK, started)  # its access line has the request's id
            finally:
                if token is not None:
                    request_id.reset(token)
            return response

        return handle

    def streaming(name: str) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def handle(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            token = None
            try:
                token, started = begin(context, name)
                async for answer in servicer.ModelStreamInfer(requests):
                    yield answer
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as e:
                await abort(context, name, None, e, started)
            else:
                end(name, grpc.StatusCode.OK, started)
            finally:
                if token is not None:
                    request_id.reset(token)

        return handle

    for method in service.methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        path = f"/{SERVICE}/{method.name}"
        deserialize = _deserializer(request_cls)
        serialize = response_cls.SerializeToString
        if method.client_streaming and method.server_streaming:
            methods[path] = grpc.stream_stream_rpc_method_handler(
                streaming(method.name),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        else:
            methods[path] = grpc.unary_unary_rpc_method_handler(
                unary(method.name),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
    return _Handlers(methods)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """The running ``grpc.aio`` server and the port it is bound to."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self.server = server
        self.port = port

    @classmethod
    async def start(
        cls, state: ServerState, bind: str, *, reuse_port: bool, shm: SharedMemory | None = None
    ) -> GrpcServer:
        """Serve on ``bind`` (``host:port``; port 0 picks a free one).
        ``reuse_port`` lets the workers of ``--workers N`` share the port
        (SO_REUSEPORT); off, a port in use is an error, as for HTTP."""
        limit = state.settings.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                *grpc_options(state.settings),  # connection bounds (service/connections.py)
            ],
            maximum_concurrent_rpcs=grpc_max_rpcs(state.settings),
        )
        servicer = InferenceServicer(state, shm)
        server.add_generic_rpc_handlers((build_handlers(servicer, state.metrics.registry),))
        try:
            port = server.add_insecure_port(bind)
        except RuntimeError as e:
            raise RuntimeError(f"gRPC cannot listen on {bind}: {e}") from None
        if port == 0:
            raise RuntimeError(f"gRPC cannot listen on {bind} (in use?)")
        await server.start()
        log.info("gRPC listening on %s", bind.rsplit(":", 1)[0] + f":{port}")
        return cls(server, port)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let those in flight finish for up to ``grace`` s."""
        await self.server.stop(grace)
