"""Image upload for image models: PNG/JPEG in, top-k labels out."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from .. import dataplane
from ..deps import RepositoryDep, SettingsDep, VersionDep
from ..errors import BadRequest
from ..images import Fit, Invert, image_input, top_labels
from ..repository import Repository
from ..settings import Settings
from .infer import unless_gone
from .responses import MODEL, errors

router = APIRouter(tags=["inference"])

ERRORS = errors(
    {
        400: "Not an image, no preprocessing for the model, a bad top_k (or version).",
        413: "Image or body over the limit.",
        404: MODEL[404],
        500: "ONNX Runtime failed on input that passed every check.",
        503: "Not ready, overloaded or timed out (Retry-After).",
    }
)
FileDep = Annotated[UploadFile, File(description="A PNG or JPEG image.")]
TopK = Annotated[int, Query(ge=1, le=1000, description="How many labels to return.")]
INVERT_HELP = (
    "auto: turn the image around when its border is the opposite of the model's training "
    "background (a digit drawn black on white, for a model of light ink on dark); true; false."
)
FIT_HELP = (
    "crop-center: crop to the ink, keep its aspect ratio, centre it, as digit data sets were "
    "made; resize: stretch the whole image. Default: the model's preprocessing.fit."
)
InvertQuery = Annotated[Invert | None, Query(alias="invert", description=INVERT_HELP)]
InvertForm = Annotated[Invert | None, Form(alias="invert", description=INVERT_HELP)]
FitQuery = Annotated[Fit | None, Query(alias="fit", description=FIT_HELP)]
FitForm = Annotated[Fit | None, Form(alias="fit", description=FIT_HELP)]
# Images decoded at once (each in a worker thread, off the event loop): with
# the per-image bound (max_image_bytes) this bounds the memory uploads take.
DECODE_SLOTS = 2


def decode_limiter(request: Request) -> anyio.CapacityLimiter:
    """The app's limiter on concurrent decodes, made on first use in its loop."""
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "image_decoders", None)
    if limiter is None:
        limiter = state.image_decoders = anyio.CapacityLimiter(DECODE_SLOTS)
    return limiter


@router.post(
    "/v2/models/{name}/versions/{version}/classify",
    name="classify_version",
    summary="Classify an image with a version",
    responses=ERRORS,
)
@router.post("/v2/models/{name}/classify", summary="Classify an image", responses=ERRORS)
async def classify(
    request: Request,
    name: str,
    version: VersionDep,
    file: FileDep,
    repo: RepositoryDep,
    settings: SettingsDep,
    top_k: TopK = 5,
    invert_query: InvertQuery = None,
    fit_query: FitQuery = None,
    invert_form: InvertForm = None,
    fit_form: FitForm = None,
) -> dict[str, Any]:
    """Multipart upload (field ``file``): the image is prepared as
    config.json's preprocessing says (transparency composited, turned around
    where its background is the other kind, fitted, mapped to the model's
    input range; ``invert`` and ``fit`` as query or form fields), run, and
    the top-k labels are returned with softmax probabilities."""
    data = await file.read()
    invert = invert_form or invert_query or "auto"
    fit = fit_form or fit_query
    answered = await unless_gone(
        request, _classify(request, repo, settings, name, version, data, top_k, invert, fit)
    )
    return {} if answered is None else answered  # {}: never sent, the client is gone


async def _classify(
    request: Request,
    repo: Repository,
    settings: Settings,
    name: str,
    version: str | None,
    data: bytes,
    top_k: int,
    invert: Invert,
    fit: Fit | None,
) -> dict[str, Any]:
    """``classify``'s answer, once its upload is read."""
    async with repo.serving(name, version) as served:
        prep = served.config.preprocessing
        if prep is None or len(served.signature.inputs) != 1:
            raise BadRequest(f"model {name!r} has no image preprocessing in its config.json")
        spec = served.signature.inputs[0]
        prepare = partial(
            image_input,
            data,
            prep,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_image_bytes,
            invert=invert,
            fit=fit,
        )
        # decoding and converting take seconds for a big image: never on the loop
        x = await anyio.to_thread.run_sync(prepare, limiter=decode_limiter(request))
        x = x.astype(spec.dtype)
        if not served.signature.batched:
            x = x.reshape([d if d > 0 else -1 for d in spec.shape])
        served.signature.check_input(spec.name, spec.datatype, list(x.shape), x.size)
        outputs = await dataplane.run(served, {spec.name: x}, 1, settings.request_timeout_s)
        scores = outputs[served.signature.outputs[0].name]
        labels = served.config.labels or (served.manifest.labels if served.manifest else [])
        return {
            "model_name": served.name,
            "model_version": served.version_str,
            "predictions": top_labels(scores[0] if scores.ndim > 1 else scores, labels, top_k),
        }
