"""Inference: Open Inference Protocol V2 (JSON and binary) and KServe V1.

The hot path reads the body once, decodes straight to numpy (no pydantic
per tensor), submits to the model's batcher and encodes the outputs. The
model version is held (``Repository.serving``) from after the body is read
until the response is encoded, so a swap or unload never cuts a request
short.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import dataplane
from ..binary import HEADER_LENGTH
from ..codec import decode_v1, decompress, encode_result, encode_v1, parse_infer
from ..deps import RepositoryDep, StateDep, VersionDep
from ..protocol import (
    InferenceRequest,
    InferenceResponse,
    PredictRequestV1,
    PredictResponseV1,
    inline_schema,
)
from ..signature import Signature
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
async def infer(name: str, request: Request, state: StateDep, version: VersionDep) -> Response:
    """Open Inference Protocol inference with Triton's binary tensor data
    extension. A body without Content-Type is read as JSON. ``outputs``
    selects outputs; ``parameters.binary_data_output`` or per-output
    ``parameters.binary_data`` returns them in binary. A header length of 0
    is Triton's raw binary request: the body is the single input's bytes."""
    headers = request.headers
    body = await request.body()
    limit = state.settings.max_body_bytes
    wire: list[dataplane.WireRequest] = []

    def parse(signature: Signature) -> dataplane.WireRequest:
        raw = decompress(body, headers.get("content-encoding"), limit)
        wire.append(parse_infer(raw, headers.get(HEADER_LENGTH), signature, name))
        return wire[0]

    result = await dataplane.infer(state, name, version, parse)
    content, out_headers = encode_result(
        result, wire[0].parameters.get("binary_data_output") is True
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
