"""Model metadata, readiness, Triton model configuration and statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ..deps import MetricsDep, RepositoryDep
from ..protocol import ModelMetadata
from .responses import MODEL, VERSION, errors

router = APIRouter(tags=["models"])

ERRORS = errors(MODEL)
VERSION_ERRORS = errors(VERSION | MODEL)


@router.get(
    "/v2/models/stats",
    summary="Statistics of every served model",
    responses=errors({503: "The server is starting."}),
)
async def all_stats(repo: RepositoryDep, metrics: MetricsDep) -> dict[str, Any]:
    """Triton's statistics extension for every served model version."""
    return {"model_stats": [metrics.model_stats(m.name, m.version) for m in repo.served()]}


@router.get(
    "/v2/models/{name}",
    response_model=ModelMetadata,
    summary="Model metadata",
    responses=ERRORS,
)
async def model_metadata(name: str, repo: RepositoryDep) -> dict[str, Any]:
    """Inputs and outputs (batch dimension included as -1), the served
    version, and the execution provider actually in use."""
    return repo.get(name).metadata()


@router.get(
    "/v2/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model version metadata",
    responses=VERSION_ERRORS,
)
async def model_version_metadata(name: str, version: str, repo: RepositoryDep) -> dict[str, Any]:
    return repo.get(name, version).metadata()


def _ready(repo: RepositoryDep, name: str, version: str | None) -> Response:
    repo.get(name, version)  # raises 404 or 503
    return Response(status_code=200)


@router.get("/v2/models/{name}/ready", summary="Model readiness", responses=ERRORS)
async def model_ready(name: str, repo: RepositoryDep) -> Response:
    """200 when the model serves; 503 when it is known but unloaded or
    broken; 404 when unknown."""
    return _ready(repo, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    summary="Model version readiness",
    responses=VERSION_ERRORS,
)
async def model_version_ready(name: str, version: str, repo: RepositoryDep) -> Response:
    return _ready(repo, name, version)


@router.get("/v2/models/{name}/config", summary="Triton model configuration", responses=ERRORS)
async def model_config(name: str, repo: RepositoryDep) -> dict[str, Any]:
    """Triton's model configuration extension (what perf_analyzer reads):
    ``max_batch_size``, ``input``/``output`` dims without the batch axis,
    ``dynamic_batching``, ``instance_group``."""
    return repo.get(name).triton_config()


@router.get(
    "/v2/models/{name}/versions/{version}/config",
    summary="Triton model configuration of a version",
    responses=VERSION_ERRORS,
)
async def model_version_config(name: str, version: str, repo: RepositoryDep) -> dict[str, Any]:
    return repo.get(name, version).triton_config()


@router.get("/v2/models/{name}/stats", summary="Model statistics", responses=ERRORS)
async def model_stats(name: str, repo: RepositoryDep, metrics: MetricsDep) -> dict[str, Any]:
    """Triton's statistics extension: success/fail/queue/compute counts and
    nanoseconds, and per-batch-size execution statistics."""
    served = repo.get(name)
    return {"model_stats": [metrics.model_stats(served.name, served.version)]}


@router.get(
    "/v2/models/{name}/versions/{version}/stats",
    summary="Model version statistics",
    responses=VERSION_ERRORS,
)
async def model_version_stats(
    name: str, version: str, repo: RepositoryDep, metrics: MetricsDep
) -> dict[str, Any]:
    served = repo.get(name, version)
    return {"model_stats": [metrics.model_stats(served.name, served.version)]}
