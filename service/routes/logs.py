"""Triton's logging extension: ``GET``/``POST /v2/logging``.

The settings and what they change are service/logs.py's; these routes read
and change them. Protected by the bearer token when ``BNFOLD_API_TOKEN`` is
set, as the trace settings are.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import JsonValue, RootModel

from .. import logs
from ..deps import AuthDep, body_schema, json_body
from .responses import errors

router = APIRouter(tags=["logging"])


class LogSettingsRequest(RootModel[dict[str, JsonValue]]):
    """``{"log_info": true, "log_verbose_level": 1, "log_format": "ISO8601", ...}``:
    only the settings named change; null leaves one as it is."""


LogBody = Annotated[LogSettingsRequest | None, Depends(json_body(LogSettingsRequest))]
Settings = dict[str, str | bool | int]
ERRORS = errors(
    {
        400: "An unknown setting, or a value of the wrong type or out of range.",
        401: "Missing or wrong bearer token.",
        413: "Body over the size limit.",
        501: "log_file named: it is set at start only (--log-file).",
    }
)


@router.get("/v2/logging", summary="Log settings", responses=ERRORS)
async def log_settings(_: AuthDep) -> Settings:
    """log_file, log_info, log_warning, log_error, log_verbose_level and
    log_format, as Triton spells them."""
    return logs.log_settings()


@router.post(
    "/v2/logging",
    summary="Change log settings",
    responses=ERRORS,
    openapi_extra=body_schema(LogSettingsRequest),
)
async def update_log_settings(_: AuthDep, body: LogBody) -> Settings:
    """Only the settings named change (all or none); the settings after."""
    return logs.update_log_settings(logs.json_settings(body.root if body is not None else {}))
