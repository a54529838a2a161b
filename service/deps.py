"""What routes depend on, as ``Annotated`` aliases (swappable in tests).

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency
in a worker thread, which cost the inference path a thread hop per
dependency per request (measured: ~15% of throughput).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from .errors import BadRequest, describe_validation
from .json_depth import cut_deep
from .metrics import Metrics
from .repository import Repository
from .settings import Settings
from .state import ServerState

__all__ = ["ServerState"]  # built by create_app; defined with what gRPC shares (state.py)


async def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.bnfold
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_repository(state: StateDep) -> Repository:
    return state.serving_repository()


RepositoryDep = Annotated[Repository, Depends(get_repository)]


async def require_token(request: Request, state: StateDep) -> None:
    """Bearer token check for the repository routes, when a token is configured."""
    state.authorize(request.headers.get("authorization", ""))


AuthDep = Annotated[None, Depends(require_token)]


async def path_version(request: Request) -> str | None:
    """``{version}`` of a handler routed at both ``.../{name}/...`` and
    ``.../{name}/versions/{version}/...``; None on the first (which then
    takes no ``version`` query parameter). service/openapi.py documents it."""
    version: str | None = request.path_params.get("version")
    return version


VersionDep = Annotated[str | None, Depends(path_version)]


M = TypeVar("M", bound=BaseModel)


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M | None]]:
    """Parse the body as JSON into ``model`` whatever the Content-Type (curl's
    default form type and tritonclient's none included); empty is ``None``.
    JSON nested past the parser's depth is read cut (service/json_depth.py),
    so its fields are refused for what they are, as Triton refuses them."""

    async def parse(request: Request) -> M | None:
        raw = await request.body()
        if not raw.strip():
            return None
        try:
            return model.model_validate_json(raw)
        except ValidationError as e:
            errors = e.errors()
        if any("recursion limit" in str(err.get("msg", "")) for err in errors):
            try:
                return model.model_validate_json(cut_deep(raw))
            except ValidationError as e:
                errors = e.errors()
        raise BadRequest(describe_validation(errors))

    return parse


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a ``json_body`` dependency."""
    from .protocol import inline_schema

    schema = inline_schema(model)
    return {"requestBody": {"content": {"application/json": {"schema": schema}}}}
