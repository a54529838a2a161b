"""What routes depend on, as ``Annotated`` aliases (swappable in tests).

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency
in a worker thread, which cost the inference path a thread hop per
dependency per request (measured: ~15% of throughput).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from .batching import Arrivals
from .errors import BadRequest, Unauthorized, Unavailable, describe_validation
from .metrics import Metrics
from .repository import Repository
from .settings import Settings


@dataclass
class ServerState:
    """Everything one app holds; built by ``create_app``, filled by its lifespan."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    arrivals: Arrivals = field(default_factory=Arrivals)
    repository: Repository | None = None
    executor: ThreadPoolExecutor | None = None
    started: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining


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
    if state.repository is None:
        raise Unavailable("the server is starting", retry_after=state.settings.retry_after_s)
    return state.repository


RepositoryDep = Annotated[Repository, Depends(get_repository)]


async def require_token(request: Request, settings: SettingsDep) -> None:
    """Bearer token check for the repository routes, when a token is configured."""
    if settings.api_token is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_token.get_secret_value()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("a valid bearer token is required for repository operations")


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
    default form type and tritonclient's none included); empty is ``None``."""

    async def parse(request: Request) -> M | None:
        raw = await request.body()
        if not raw.strip():
            return None
        try:
            return model.model_validate_json(raw)
        except ValidationError as e:
            raise BadRequest(describe_validation(e.errors())) from None

    return parse


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a ``json_body`` dependency."""
    from .protocol import inline_schema

    schema = inline_schema(model)
    return {"requestBody": {"content": {"application/json": {"schema": schema}}}}
