"""Triton's model repository extension: index, load, unload.

Protected by a bearer token when ``BNFOLD_API_TOKEN`` is set.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from .. import config_override
from ..deps import AuthDep, RepositoryDep, body_schema, json_body
from ..protocol import LoadRequest, RepositoryIndexRequest, RepositoryModel
from .responses import errors

router = APIRouter(tags=["repository"])
IndexBody = Annotated[RepositoryIndexRequest | None, Depends(json_body(RepositoryIndexRequest))]
LoadBody = Annotated[LoadRequest | None, Depends(json_body(LoadRequest))]

COMMON = {
    401: "Missing or wrong bearer token.",
    403: "A restricted API category without its header (--http-restricted-api).",
    503: "The server is starting, or model control mode none or poll refuses the request.",
}
NOT_THE_BODY = "A body that is not the request, or over the size limit."
INDEX_ERRORS = errors({400: NOT_THE_BODY, **COMMON})
LOAD_ERRORS = errors(
    {
        400: "The version failed to load (reason given), a bad body or one too large.",
        404: "No such model folder.",
        **COMMON,
    }
)
UNLOAD_ERRORS = errors({400: NOT_THE_BODY, 404: "No such model.", **COMMON})


@router.post(
    "/v2/repository/index",
    response_model=list[RepositoryModel],
    response_model_exclude_none=True,
    summary="Repository index",
    responses=INDEX_ERRORS,
    openapi_extra=body_schema(RepositoryIndexRequest),
)
async def index(repo: RepositoryDep, _: AuthDep, body: IndexBody) -> list[dict[str, Any]]:
    """Every model and version folder with its state (READY, LOADING,
    UNAVAILABLE) and, when not ready, the reason: a sha256 mismatch, bytes
    ONNX Runtime rejects, a config.json that disagrees with the graph."""
    return repo.index(ready_only=body is not None and body.ready)


@router.post(
    "/v2/repository/models/{name}/load",
    summary="Load or reload a model",
    responses=LOAD_ERRORS,
    openapi_extra=body_schema(LoadRequest),
)
async def load(name: str, repo: RepositoryDep, _: AuthDep, body: LoadBody) -> dict[str, Any]:
    """Load the versions of ``name`` its version_policy selects and swap them
    in atomically: requests in flight finish on the old version. On failure
    the old version (if any) keeps serving and the index shows the reason.
    ``parameters.config`` (Triton's model configuration as a JSON string)
    overrides the folder's configuration; fields it leaves out keep their
    current values."""
    served = await config_override.load(repo, name, body.parameters if body else {})
    return {
        "name": served.name,
        "version": served.version_str,
        "state": "READY",
        "provider": served.provider,
    }


@router.post(
    "/v2/repository/models/{name}/unload",
    summary="Unload a model",
    responses=UNLOAD_ERRORS,
    openapi_extra=body_schema(LoadRequest),
)
async def unload(name: str, repo: RepositoryDep, _: AuthDep, body: LoadBody) -> dict[str, Any]:
    """Stop serving ``name``; answers once the requests already holding it
    have finished. Refused (503) in model control modes none and poll."""
    repo.check_control()
    await repo.unload(name)
    return {"name": name, "state": "UNAVAILABLE"}
