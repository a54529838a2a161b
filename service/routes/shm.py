"""Triton's shared-memory extensions: system shared memory (POSIX regions
under /dev/shm, service/shm.py) and, refused, CUDA shared memory.

Protected by the bearer token, like the repository routes, when
``BNFOLD_API_TOKEN`` is set: a registration makes the server read and
write a file of the host's shared memory.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from ..deps import AuthDep, body_schema, json_body
from ..errors import BadRequest, Unavailable, Unimplemented
from ..shm import DISABLED, SharedMemory
from .responses import errors

router = APIRouter(tags=["shared memory"])
CUDA = (
    "CUDA shared memory is not supported by this server; use system shared memory "
    "(/v2/systemsharedmemory)"
)


class RegisterRequest(BaseModel):
    """``{"key": $string, "offset": $number, "byte_size": $number}``"""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    offset: int = 0
    byte_size: int | None = None


RegisterBody = Annotated[RegisterRequest | None, Depends(json_body(RegisterRequest))]
COMMON = {401: "Missing or wrong bearer token.", 503: "The server is starting."}
REGISTER_ERRORS = errors(
    {
        400: "No such shared memory object, a range outside it, a name already in manager, "
        "a body over the size limit.",
        **COMMON,
    }
)
NAMED_ERRORS = errors({404: "No region of that name is registered.", **COMMON})
UNREGISTER_ERRORS = errors(COMMON)
CUDA_ERRORS = errors({400: "CUDA shared memory is not supported.", **COMMON})
COMMON_ERRORS = errors(COMMON)


async def get_shm(request: Request) -> SharedMemory:
    shm: SharedMemory | None = getattr(request.app.state, "shm", None)
    if shm is None:
        raise Unavailable("the server is starting")
    return shm


ShmDep = Annotated[SharedMemory, Depends(get_shm)]


@router.get(
    "/v2/systemsharedmemory/status",
    summary="System shared memory regions",
    responses=NAMED_ERRORS,
)
async def status(shm: ShmDep, _: AuthDep) -> list[dict[str, Any]]:
    """Every registered region: ``[{"name", "key", "offset", "byte_size"}]``."""
    return shm.status()


@router.get(
    "/v2/systemsharedmemory/region/{name}/status",
    summary="One system shared memory region",
    responses=NAMED_ERRORS,
)
async def region_status(name: str, shm: ShmDep, _: AuthDep) -> list[dict[str, Any]]:
    return shm.status(name)


@router.post(
    "/v2/systemsharedmemory/region/{name}/register",
    summary="Register a system shared memory region",
    responses=REGISTER_ERRORS,
    openapi_extra=body_schema(RegisterRequest),
)
async def register(name: str, shm: ShmDep, _: AuthDep, body: RegisterBody) -> Response:
    """Map ``byte_size`` bytes at ``offset`` of the shared memory object
    ``key`` (``/name``, as shm_open takes it) under ``name``; inputs and
    outputs then name it in ``parameters.shared_memory_region``."""
    if body is None or body.key is None:  # Triton's words for each missing field
        raise BadRequest("Shared memory register request has no 'key' field")
    if body.byte_size is None:
        raise BadRequest("Shared memory register request has no 'byte_size' field")
    shm.register(name, body.key, body.offset, body.byte_size)
    return Response(status_code=200)


@router.post(
    "/v2/systemsharedmemory/region/{name}/unregister",
    summary="Unregister a system shared memory region",
    responses=UNREGISTER_ERRORS,
)
async def unregister(name: str, shm: ShmDep, _: AuthDep) -> Response:
    """Forget the region: new requests cannot name it, requests using it
    finish first. A name that is not registered is no error (as in Triton)."""
    shm.unregister(name)
    return Response(status_code=200)


@router.post(
    "/v2/systemsharedmemory/unregister",
    summary="Unregister every system shared memory region",
    responses=UNREGISTER_ERRORS,
)
async def unregister_all(shm: ShmDep, _: AuthDep) -> Response:
    shm.unregister()
    return Response(status_code=200)


@router.get(
    "/v2/cudasharedmemory/status",
    summary="CUDA shared memory regions (none: not supported)",
    responses=COMMON_ERRORS,
)
async def cuda_status(_: AuthDep) -> list[dict[str, Any]]:
    """Always empty: clients ask it (and unregister) to clean up."""
    return []


@router.post(
    "/v2/cudasharedmemory/unregister",
    summary="Unregister every CUDA shared memory region (none)",
    responses=COMMON_ERRORS,
)
async def cuda_unregister_all(shm: ShmDep, _: AuthDep) -> Response:
    if not shm.allowed:  # Triton refuses CUDA's too when client shared memory is off
        raise Unimplemented(DISABLED)
    return Response(status_code=200)


@router.post(
    "/v2/cudasharedmemory/region/{name}/{action}",
    summary="Register or unregister a CUDA shared memory region (not supported)",
    responses=CUDA_ERRORS,
)
async def cuda_region(name: str, action: str, shm: ShmDep, _: AuthDep) -> Response:
    """Answered 400: regions of GPU memory are not served (501 when client
    shared memory is off, as Triton answers then)."""
    if not shm.allowed:
        raise Unimplemented(DISABLED)
    raise BadRequest(CUDA)


@router.get(
    "/v2/cudasharedmemory/region/{name}/status",
    summary="Status of a CUDA shared memory region (not supported)",
    responses=CUDA_ERRORS,
)
async def cuda_region_status(name: str, _: AuthDep) -> Response:
    """Answered 400: regions of GPU memory are not served."""
    raise BadRequest(CUDA)
