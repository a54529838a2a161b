"""Model metadata, readiness, Triton model configuration and statistics.

Each handler answers both ``/v2/models/{name}/...`` (the served version)
and ``/v2/models/{name}/versions/{version}/...`` (exactly that one).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ..deps import MetricsDep, RepositoryDep, VersionDep
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
    "/v2/models/{name}/versions/{version}",
    name="model_version_metadata",
    response_model=ModelMetadata,
    summary="Model version metadata",
    responses=VERSION_ERRORS,
)
@router.get(
    "/v2/models/{name}", response_model=ModelMetadata, summary="Model metadata", responses=ERRORS
)
async def model_metadata(name: str, version: VersionDep, repo: RepositoryDep) -> dict[str, Any]:
    """Inputs and outputs (batch dimension included as -1), the served
    versions (without a version: every one ready, as Triton lists them), and
    the execution provider actually in use."""
    metadata = repo.get(name, version).metadata()
    if version is None:
        metadata["versions"] = repo.served_versions(name)
    return metadata


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    name="model_version_ready",
    summary="Model version readiness",
    responses=VERSION_ERRORS,
)
@router.get("/v2/models/{name}/ready", summary="Model readiness", responses=ERRORS)
async def model_ready(name: str, version: VersionDep, repo: RepositoryDep) -> Response:
    """200 when the model serves; 503 when it is known but unloaded or
    broken; 404 when unknown."""
    repo.get(name, version)  # raises 404 or 503
    return Response(status_code=200)


@router.get(
    "/v2/models/{name}/versions/{version}/config",
    name="model_version_config",
    summary="Triton model configuration of a version",
    responses=VERSION_ERRORS,
)
@router.get("/v2/models/{name}/config", summary="Triton model configuration", responses=ERRORS)
async def model_config(name: str, version: VersionDep, repo: RepositoryDep) -> dict[str, Any]:
    """Triton's model configuration extension (what perf_analyzer reads):
    ``max_batch_size``, ``input``/``output`` dims without the batch axis,
    ``dynamic_batching``, ``instance_group``."""
    return repo.get(name, version).triton_config()


@router.get(
    "/v2/models/{name}/versions/{version}/stats",
    name="model_version_stats",
    summary="Model version statistics",
    responses=VERSION_ERRORS,
)
@router.get("/v2/models/{name}/stats", summary="Model statistics", responses=ERRORS)
async def model_stats(
    name: str, version: VersionDep, repo: RepositoryDep, metrics: MetricsDep
) -> dict[str, Any]:
    """Triton's statistics extension: success/fail/queue/compute counts and
    nanoseconds, and per-batch-size execution statistics."""
    served = repo.get(name, version)
    return {"model_stats": [metrics.model_stats(served.name, served.version)]}
