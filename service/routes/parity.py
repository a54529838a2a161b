"""Parity between reference.onnx and model.onnx: stored and recomputed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ..codec import decode_inputs
from ..deps import RepositoryDep, SettingsDep, VersionDep, body_schema, json_body
from ..errors import BadRequest
from ..parity import measure, stored_report
from ..protocol import ParityRequest
from ..signature import generate_inputs
from .responses import MODEL, VERSION, errors

router = APIRouter(tags=["parity"])
ParityBody = Annotated[ParityRequest | None, Depends(json_body(ParityRequest))]
PARITY_BODY = body_schema(ParityRequest)

TOO_LARGE = {413: "Body over the size limit."}


@router.get(
    "/v2/models/{name}/versions/{version}/parity",
    name="stored_version",
    summary="Stored parity report of a version",
    responses=errors(VERSION | MODEL),
)
@router.get("/v2/models/{name}/parity", summary="Stored parity report", responses=errors(MODEL))
async def stored(name: str, version: VersionDep, repo: RepositoryDep) -> dict[str, Any]:
    """The converter's parity and folding report from manifest.json."""
    return stored_report(repo.get(name, version))


@router.post(
    "/v2/models/{name}/versions/{version}/parity",
    name="measure_version",
    summary="Measure parity of a version now",
    responses=errors(
        {400: "Bad inputs, sample count or version; reference.onnx refused.", **TOO_LARGE, **MODEL}
    ),
    openapi_extra=PARITY_BODY,
)
@router.post(
    "/v2/models/{name}/parity",
    summary="Measure parity now",
    responses=errors(
        {400: "Bad inputs or sample count; reference.onnx refused.", **TOO_LARGE, **MODEL}
    ),
    openapi_extra=PARITY_BODY,
)
async def measure_now(
    name: str, version: VersionDep, repo: RepositoryDep, settings: SettingsDep, body: ParityBody
) -> dict[str, Any]:
    """Run reference.onnx (BNs kept) and model.onnx (folded) on the serving
    device for the V2 ``inputs`` given, or ``n`` generated ones, and return
    max abs/rel error and top-1 agreement per output (converter.parity)."""
    body = body or ParityRequest()
    # held while both graphs run; a diagnostic, not an inference request
    async with repo.serving(name, version, count=False) as served:
        if body.inputs:
            feeds, _ = decode_inputs(
                [i.model_dump() for i in body.inputs],  # parsed once, by the body's model
                served.signature,
                max_elements=settings.max_body_bytes,
                allow_nonfinite=settings.allow_nonfinite,
            )
        elif body.n > settings.max_parity_samples:
            raise BadRequest(f"n is {body.n}; at most {settings.max_parity_samples}")
        else:
            feeds = generate_inputs(served.signature, body.n, body.seed)
        return await measure(served, feeds, body.rtol)
