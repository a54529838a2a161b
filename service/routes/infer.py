"""Inference: Open Inference Protocol V2 (JSON and binary) and KServe V1.

The hot path reads the body once, decodes straight to numpy (no pydantic
per tensor), submits to the model's batcher and encodes the outputs. The
model version is held (``Repository.serving``) from after the body is read
until the response is encoded, so a swap or unload never cuts a request
short.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import shm
from ..binary import HEADER_LENGTH
from ..codec import decode_infer, decode_v1, decompress, encode_infer, encode_v1
from ..deps import RepositoryDep, StateDep, VersionDep
from ..protocol import (
    InferenceRequest,
    InferenceResponse,
    PredictRequestV1,
    PredictResponseV1,
    inline_schema,
)
from .responses import MODEL, Responses, errors

router = APIRouter(tags=["inference"])

ERRORS = errors(
    {
        400: "Bad input: JSON, name, shape, datatype, NaN (or version).",
        404: MODEL[404],
        413: "Body over the size limit.",
        500: "ONNX Runtime failed on input that passed every check.",
        503: "Not ready, overloaded or timed out (Retry-After).",
    }
)
OUTPUTS: Responses = {
    200: {"model": InferenceResponse, "description": "Outputs (JSON, or binary framing)."}
}
V1_OUTPUTS: Responses = {200: {"model": PredictResponseV1}}
V2_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferenceRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header (Inference-Header-Content-Length bytes), "
                "then each binary input's bytes in input order.",
            },
        },
    }
}
V1_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_schema(PredictRequestV1)}},
    }
}


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    name="infer_version",
    summary="Inference on a version (V2)",
    responses=OUTPUTS | ERRORS,
    openapi_extra=V2_BODY,
    response_class=Response,
)
@router.post(
    "/v2/models/{name}/infer",
    summary="Inference (V2)",
    responses=OUTPUTS | ERRORS,
    openapi_extra=V2_BODY,
    response_class=Response,
)
async def infer(
    name: str, request: Request, repo: RepositoryDep, state: StateDep, version: VersionDep
) -> Response:
    """Open Inference Protocol inference with Triton's binary tensor data
    extension. A body without Content-Type is read as JSON. ``outputs``
    selects outputs; ``parameters.binary_data_output`` or per-output
    ``parameters.binary_data`` returns them in binary."""
    settings = state.settings
    headers = request.headers
    body = await request.body()
    async with repo.serving(name, version) as served:
        body = decompress(body, headers.get("content-encoding"), settings.max_body_bytes)
        # the shared-memory regions the request names stay open until it ends
        with shm.using(getattr(request.app.state, "shm", None), served.name) as regions:
            req = decode_infer(
                body,
                headers.get(HEADER_LENGTH),
                served.signature,
                max_elements=settings.max_body_bytes,
                allow_nonfinite=settings.allow_nonfinite,
                shm=regions,
            )
            timeout = min(settings.request_timeout_s, req.timeout_s or math.inf)
            outputs = await served.infer(req.feeds, req.rows, timeout)
            content, out_headers = encode_infer(
                served.name, served.version_str, req, outputs, labels=served.config.labels
            )
    return Response(content, headers=out_headers)


@router.post(
    "/v1/models/{name}:predict",
    summary="Prediction (KServe V1)",
    responses=V1_OUTPUTS | ERRORS,
    openapi_extra=V1_BODY,
    response_class=Response,
)
async def predict_v1(name: str, request: Request, repo: RepositoryDep, state: StateDep) -> Response:
    """``{"instances": [row, ...]}`` to ``{"predictions": [row, ...]}``; one row
    per instance, for curl users. With several inputs an instance is an
    object keyed by input name."""
    settings = state.settings
    body = await request.body()
    async with repo.serving(name) as served:
        feeds, rows = decode_v1(body, served.signature, allow_nonfinite=settings.allow_nonfinite)
        outputs = await served.infer(feeds, rows, settings.request_timeout_s)
        content = encode_v1(outputs, served.signature.output_names())
    return Response(content, media_type="application/json")
