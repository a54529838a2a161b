"""Server metadata, health, and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from ..deps import MetricsDep, StateDep
from ..errors import Unavailable
from ..protocol import SERVER_NAME, SERVER_VERSION, ServerMetadata
from ..runtime import CPU, CUDA, RuntimeOptions, cuda_usable
from .responses import errors

router = APIRouter(tags=["server"])

NOT_READY = errors(
    {
        503: "Not ready: starting, loading models, draining, or (strict readiness) a model "
        "not serving."
    }
)


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata(state: StateDep) -> ServerMetadata:
    """Name, version, protocol extensions, and the execution provider in use."""
    served = state.repository.served() if state.repository else []
    providers = sorted({m.provider for m in served})
    if not providers:
        s = state.settings
        providers = [CUDA if cuda_usable(RuntimeOptions(s.device, s.device_id)) else CPU]
    return ServerMetadata(
        name=SERVER_NAME,
        version=SERVER_VERSION,
        extensions=state.extensions,
        parameters={"provider": ",".join(providers), "models_ready": len(served)},
    )


@router.get("/v2/health/live", summary="Liveness", status_code=200)
async def live() -> Response:
    """200 with an empty body while the process can answer at all."""
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Readiness", responses=NOT_READY)
async def ready(state: StateDep) -> Response:
    """200 once every model that should serve is loaded and warmed; 503
    while starting or loading models (the port opens before they load),
    after SIGTERM (draining), and, with strict readiness
    (the default; ``--no-strict-readiness`` turns it off), while the
    repository is empty or any model failed to load or is not loaded yet."""
    retry = state.settings.retry_after_s
    if not state.ready:
        why = "draining" if state.draining else "starting"
        if not state.draining and state.repository is not None and state.repository.loading:
            why = "loading models"
        raise Unavailable(f"server is not ready: {why}", retry_after=retry)
    if state.settings.strict_readiness and state.repository is not None:
        ready, why = state.repository.readiness()
        if not ready:
            raise Unavailable(f"server is not ready: {why}", retry_after=retry)
    return Response(status_code=200)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(m: MetricsDep) -> Response:
    """Requests and failures by reason, latency, queue time and batch size
    histograms per model and version, HTTP requests by route."""
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
