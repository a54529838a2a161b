"""The app factory: ``create_app(settings)``, importable as
``service.app:create_app`` (uvicorn ``factory=True``, one app per worker).

Models are loaded in the lifespan, never at import, and never before the
port opens: startup begins loading and warming every model in the
background (each within ``load_timeout_s``; broken ones are listed with
their reason) and starts the gRPC server in the same event loop
(service/grpc_server.py); the server answers at once, and reports ready
when that first load is done. (With ``--workers N`` a worker takes
connections from the port its parent holds once its first load is done.)
Shutdown reports not-ready, answers with ``Connection: close`` while it
drains (service/connections.py), lets in-flight HTTP and gRPC requests
finish, unmaps the shared-memory regions and releases every session.
With an OTLP endpoint, the lifespan also starts the span exporter
(service/otel.py, imported only then) and flushes it at shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from .connections import CONNECTIONS_STATE
from .deps import ServerState
from .grpc_server import GrpcServer, address
from .http_errors import install_error_handlers
from .logs import configure_format
from .metrics import Metrics, multiprocess_dir
from .middleware import RequestContext, configure_logging
from .openapi import install_openapi
from .protocol import SERVER_VERSION
from .repository import Repository, watch_interval
from .restricted import Restrictions
from .routes import ROUTERS
from .settings import Settings
from .shm import SharedMemory
from .shutdown import drain_on_sigterm
from .trace_file import TraceFile
from .tracing import TRITON, TraceSettings, parse_trace_config
from .triton_metrics import MetricsServer, TritonMetrics, parse_metrics_config

if TYPE_CHECKING:
    from .otel import Spans

log = logging.getLogger("bnfold.service")

DESCRIPTION = """\
Serves a bnfold model repository (folded BatchNorm networks) with ONNX
Runtime over the Open Inference Protocol (KServe V2) and Triton's binary
tensor data extension. Errors are always `{"error": "..."}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, ServerState]]:
    state: ServerState = app.state.bnfold
    settings = state.settings
    if state.trace_file is None:  # trace mode opentelemetry: spans over OTLP when configured
        state.spans = _spans(settings.otlp_endpoint)
    else:
        state.trace_file.open()
        log.info("tracing in Triton's trace mode to %s", state.trace_file.path)
    state.executor = ThreadPoolExecutor(settings.runner_threads, thread_name_prefix="bnfold-run")
    state.repository = Repository(settings, state.executor, state.metrics, state.arrivals)
    _prompt_gil_handoff(settings.gil_switch_ms)
    # system shared memory (HTTP and gRPC); without --allow-client-shm, nothing registers
    shm = app.state.shm = state.shm = SharedMemory(allowed=settings.allow_client_shm)
    repository = state.repository

    def loaded() -> None:
        served = repository.served()
        providers = sorted({m.provider for m in served}) or ["(no model loaded)"]
        log.info("ready: %d model(s) on %s", len(served), ", ".join(providers))
        _quiet_gc()
        state.started = True

    log.info("loading models from %s", settings.repo.resolve())
    repository.start(on_done=loaded)
    grpc_server = None
    try:
        if settings.workers > 1:
            # The parent process holds the port and every worker takes
            # connections from it: a worker still loading would answer 503
            # beside one that serves, so each takes connections (and opens
            # its gRPC port) once its first load is done, which
            # load_timeout_s bounds.
            await repository.wait_loaded()
        grpc_server = await _start_grpc(app, state, shm)
        metrics_server = await _start_metrics(app, state)
    except BaseException:
        if grpc_server is not None:  # the metrics port could not be opened
            await grpc_server.stop(0)
        await repository.close()
        state.executor.shutdown(wait=True)
        if state.spans is not None:
            state.spans.shutdown()
        raise
    watch = None
    if (every_s := watch_interval(settings)) > 0:
        watch = asyncio.get_running_loop().create_task(repository.watch(every_s))
        log.info("watching %s every %g s", settings.repo.resolve(), every_s)
    sampling = None
    if state.metrics.triton is not None:
        sampling = asyncio.get_running_loop().create_task(_sample_metrics(state))
    grpc_stopping: list[asyncio.Task[None]] = []

    def stop_grpc() -> None:
        """New calls refused, those in flight finish: from when HTTP stops
        accepting (the drain's end), not once its requests are done."""
        if grpc_server is not None and not grpc_stopping:
            stopping = grpc_server.stop(settings.shutdown_timeout_s)
            grpc_stopping.append(asyncio.get_running_loop().create_task(stopping))

    try:
        with drain_on_sigterm(state, settings.drain_s, on_close=stop_grpc):
            yield {CONNECTIONS_STATE: state}
    finally:
        state.draining = True
        for task in (watch, sampling):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if metrics_server is not None:
            await metrics_server.close()
        stop_grpc()
        await asyncio.gather(*grpc_stopping)
        shm.close()  # every region closed
        await state.repository.close()
        state.executor.shutdown(wait=True)
        state.metrics.process_exited()
        if state.trace_file is not None:  # the traces still gathered, the file's closing ]
            state.trace_file.close()
        if state.spans is not None:  # the spans not yet sent
            await asyncio.to_thread(state.spans.shutdown)
        log.info("models released")


def _spans(endpoint: str | None) -> Spans | None:
    """The OTLP span exporter when an endpoint is configured; OpenTelemetry
    is imported here, and only then."""
    if endpoint is None:
        return None
    try:
        from .otel import Spans, traces_url
    except ImportError as e:
        raise RuntimeError(
            f"an OTLP endpoint is set but OpenTelemetry is not installed ({e}); "
            "pip install 'bnfold[otel]'"
        ) from None
    log.info("tracing to %s", traces_url(endpoint))
    return Spans(endpoint)


async def _start_grpc(app: FastAPI, state: ServerState, shm: SharedMemory) -> GrpcServer | None:
    """The gRPC server on ``--grpc-port`` (none for 0), in this event loop.
    ``app.state.grpc_bind`` (``host:port``; port 0 for a free one) overrides
    the address, for tests; the server is ``app.state.grpc_server``."""
    settings = state.settings
    bind: str | None = getattr(app.state, "grpc_bind", None)
    if bind is None:
        if settings.grpc_port == 0:
            return None
        bind = address(settings.host, settings.grpc_port)
    server = await GrpcServer.start(state, bind, reuse_port=settings.workers > 1, shm=shm)
    app.state.grpc_server = server
    return server


async def _start_metrics(app: FastAPI, state: ServerState) -> MetricsServer | None:
    """Triton's metrics endpoint on ``--metrics-port`` (none for 0, or with
    ``--allow-metrics false``), at ``--metrics-address`` (default ``--host``);
    with ``--workers N`` every worker listens on it (``SO_REUSEPORT``) and
    any of them answers with every worker's counts. ``app.state.metrics_bind``
    (``(host, port)``; port 0 for a free one) overrides the address, for tests;
    the server is ``app.state.metrics_server``."""
    settings = state.settings
    if state.metrics.triton is None:
        return None
    bind: tuple[str, int] | None = getattr(app.state, "metrics_bind", None)
    if bind is None:
        if settings.metrics_port == 0:
            return None
        bind = (settings.metrics_address or settings.host, settings.metrics_port)
    server = MetricsServer(state.metrics.render_triton)
    await server.start(*bind, reuse_port=settings.workers > 1)
    app.state.metrics_server = server
    return server


async def _sample_metrics(state: ServerState) -> None:
    """Every ``--metrics-interval-ms``: the CPU families, and with several
    workers this worker's counts to its file (service/triton_metrics.py)."""
    triton = state.metrics.triton
    assert triton is not None
    while True:
        if triton.cpu_metrics:
            triton.cpu.read()
        if triton.multiprocess_dir is not None:
            triton.write_snapshot(state.metrics.models())
        await asyncio.sleep(triton.interval_s)


def _quiet_gc() -> None:
    """Keep the cyclic collector off the request path. What startup built
    (sessions, graphs, routes) lives as long as the process: frozen, a full
    collection no longer walks it (measured: p99 at concurrency 32 from
    ~55 ms to ~15 ms on 2 cores). Requests allocate many short-lived objects;
    a larger first generation collects them in fewer, equally short passes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def _prompt_gil_handoff(switch_ms: float) -> None:
    """A runner thread back from ONNX Runtime (which ran without the GIL)
    needs the GIL again to hand its batch over; with CPython's default 5 ms
    switch interval it waits up to that long while the event loop runs
    Python, and the model sits idle. A shorter interval hands the GIL over
    sooner (measured: a lone CIFAR CNN batch "took" 5 ms under load instead
    of 0.5 ms). Process-wide; 0 keeps CPython's default."""
    if switch_ms > 0:
        sys.setswitchinterval(switch_ms / 1000)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    configure_logging(settings.log_level, settings.log_file)
    configure_format(settings.log_format, settings.log_escape)
    config = parse_trace_config(settings.trace_config)
    tracing = TraceSettings(
        exporting=settings.otlp_endpoint is not None, rate=settings.trace_rate, config=config
    )
    triton = None
    if settings.allow_metrics:
        triton = TritonMetrics(
            parse_metrics_config(settings.metrics_config),
            cpu_metrics=settings.allow_cpu_metrics,
            multiprocess_dir=multiprocess_dir(),
            interval_s=settings.metrics_interval_ms / 1000,
        )
    state = ServerState(settings, metrics=Metrics(triton), tracing=tracing)
    if config.mode == TRITON and config.file is not None:
        state.trace_file = TraceFile(config.file)
    app = FastAPI(
        title="bnfold",
        version=SERVER_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc with local assets: routes/web.py
        redoc_url=None,
    )
    app.state.bnfold = state
    install_error_handlers(app)
    install_openapi(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(
        RequestContext,
        max_body_bytes=settings.max_body_bytes,
        metrics=state.metrics,
        access_log=settings.access_log,
        arrivals=state.arrivals,
        restrictions=Restrictions.http(settings.http_restricted_api),
    )
    return app
