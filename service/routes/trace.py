"""Triton's trace extension: ``GET``/``POST /v2[/models/{m}]/trace/setting``.

What is traced and how is service/tracing.py's (OpenTelemetry spans over
OTLP when ``--otlp-endpoint`` is set, or Triton's trace file); these routes read and change its
settings, server-wide or for one model. Protected by the bearer token when
``BNFOLD_API_TOKEN`` is set, as the repository routes are.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import RootModel

from ..deps import AuthDep, RepositoryDep, StateDep, body_schema, json_body
from ..repository import Repository
from ..tracing import unknown_model
from .responses import MODEL, errors

router = APIRouter(tags=["trace"])


def known(repo: Repository, name: str) -> None:
    """404 in the words of Triton's trace extension for a model it lacks."""
    if not repo.served_versions(name):  # Triton asks whether the model is ready
        raise unknown_model(name)


class TraceSettingRequest(RootModel[dict[str, str | list[str] | None]]):
    """``{$trace_setting, ...}``: each setting a string or a list of strings;
    null clears it (back to the server-wide value)."""


TraceBody = Annotated[TraceSettingRequest | None, Depends(json_body(TraceSettingRequest))]
Settings = dict[str, str | list[str]]
COMMON = {401: "Missing or wrong bearer token."}
REFUSED = "An unknown or refused setting, a bad value or body."
SERVER_ERRORS = errors({400: REFUSED, **COMMON})
MODEL_ERRORS = errors({400: REFUSED, **COMMON, **MODEL})


@router.get("/v2/trace/setting", summary="Trace settings", responses=SERVER_ERRORS)
async def trace_setting(state: StateDep, _: AuthDep) -> Settings:
    """trace_level, trace_rate, trace_count (honoured), trace_file,
    log_frequency and trace_mode (reported) as Triton spells them."""
    return state.tracing.get()


@router.post(
    "/v2/trace/setting",
    summary="Change trace settings",
    responses=SERVER_ERRORS,
    openapi_extra=body_schema(TraceSettingRequest),
)
async def update_trace_setting(state: StateDep, _: AuthDep, body: TraceBody) -> Settings:
    """Only the settings named change; the settings after the change."""
    return state.tracing.update(body.root if body is not None else {})


@router.get(
    "/v2/models/{name}/trace/setting", summary="Trace settings of a model", responses=MODEL_ERRORS
)
async def model_trace_setting(
    name: str, repo: RepositoryDep, state: StateDep, _: AuthDep
) -> Settings:
    """The model's own settings, the server-wide ones where it has none."""
    known(repo, name)
    return state.tracing.get(name)


@router.post(
    "/v2/models/{name}/trace/setting",
    summary="Change trace settings of a model",
    responses=MODEL_ERRORS,
    openapi_extra=body_schema(TraceSettingRequest),
)
async def update_model_trace_setting(
    name: str, repo: RepositoryDep, state: StateDep, _: AuthDep, body: TraceBody
) -> Settings:
    """The model's own values (null: back to the server-wide one)."""
    known(repo, name)
    return state.tracing.update(body.root if body is not None else {}, name)
