"""An uploaded PNG/JPEG to a model input, and logits to top-k labels.

The steps, from ``config.json``'s ``preprocessing`` (docs/repository.md):

1. **Decode**, and composite any transparency onto a background that
   contrasts with what is drawn (dark strokes onto white, light onto black).
2. **Colour**: grayscale (ITU-R 601 luma, as PIL's ``convert("L")``) or RGB.
3. **Invert** (``invert=auto|true|false``): ``auto`` turns the image around
   when its border's brightness is the opposite of the model's
   ``background`` (a digit drawn black on white, for a model trained on
   light ink on dark); a model with no ``background`` is never inverted on
   ``auto``.
4. **Fit** to the input's height and width (``fit=resize|crop-center``,
   default the model's ``fit``): ``resize`` stretches the whole image;
   ``crop-center`` does what was done to digit data sets: crop to the ink,
   scale it, keeping its aspect ratio, to fill ``fit_box`` of the frame,
   centre it, draw it as a bitmap at 4x the input's resolution and count
   the ink in blocks (scikit-learn's digits are 32x32 NIST bitmaps counted
   in 4x4 blocks, 0..16).
5. **Values**: the image's [0, 1] maps onto the input's range
   (``input_range``, 8-bit values by default); a model that takes
   normalised input (``normalized: true``) gets
   ``(raw / pixel_scale - mean[c]) / std[c]``.
6. **Layout**: ``(1, C, H, W)`` for NCHW, ``(1, H, W, C)`` for NHWC,
   ``(1, F)`` for flat NC inputs.

:func:`preprocessing_problem` says, when a version loads, why a
preprocessing cannot make the graph's input, so that such a model is
refused at load rather than on every request.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any, Literal

import numpy as np
from PIL import Image

from bnfold.contract import Preprocessing

from .errors import BadRequest, PayloadTooLarge
from .signature import Signature

FORMATS = ("PNG", "JPEG")
Invert = Literal["auto", "true", "false"]
Fit = Literal["resize", "crop-center"]
# crop-center draws the frame at this many times the input's resolution and
# averages it down (sklearn's digits: 32x32 bitmaps, 4x4 blocks), up to
# MAX_FRAME pixels a side.
SUPERSAMPLE = 4
MAX_FRAME = 512
# crop-center: a pixel is ink when it differs from the background by more than
# this share of the largest difference (the bitmap's on pixels; JPEG noise,
# paper texture and faint strokes stay out).
INK_THRESHOLD = 0.5
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
FLOAT_TYPES = ("FP16", "FP32", "FP64")
# A decoded image costs up to 4 channels of float32 a pixel (RGBA while its
# transparency is composited); MAX_BYTES bounds that before decoding.
BYTES_PER_PIXEL = 4 * 4
MAX_BYTES = 256 << 20


def decoded_bytes(width: int, height: int) -> int:
    """The most memory one image takes once converted: float32 RGBA, the
    widest form :func:`pixels` makes (copies aside)."""
    return width * height * BYTES_PER_PIXEL


def decode(data: bytes, *, max_pixels: int, max_bytes: int = MAX_BYTES) -> Image.Image:
    """The image, its size checked from the header before a pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLarge(f"image is {width}x{height}, over {max_pixels} pixels")
            if decoded_bytes(width, height) > max_bytes:
                raise PayloadTooLarge(
                    f"image is {width}x{height}: {decoded_bytes(width, height)} bytes once "
                    f"decoded (float32 RGBA), over the {max_bytes}-byte limit"
                )
            image.load()
    except PayloadTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge("image is too large to decode") from None
    except Exception:
        raise BadRequest("the upload is not a readable PNG or JPEG image") from None
    return image


def pixels(image: Image.Image, color: str) -> np.ndarray:
    """``(H, W, C)`` float32 in [0, 1], C = 1 (grayscale) or 3; transparency
    composited onto white where what is drawn is dark, onto black otherwise."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        weight = float(alpha.sum())
        drawn = float(((rgb @ LUMA) * alpha[..., 0]).sum() / weight) if weight else 0.0
        background = 1.0 if drawn < 0.5 else 0.0
        rgb = rgb * alpha + background * (1.0 - alpha)
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if color == "rgb":
        return rgb
    return (rgb @ LUMA)[..., None]


def border_brightness(x: np.ndarray) -> float:
    """Mean luminance of the outer ring (5% of the shorter side, at least 1 pixel)."""
    lum = x.mean(axis=2) if x.shape[2] == 1 else x @ LUMA
    h, w = lum.shape
    k = max(1, round(0.05 * min(h, w)))
    ring = np.concatenate(
        [lum[:k].ravel(), lum[-k:].ravel(), lum[k:-k, :k].ravel(), lum[k:-k, -k:].ravel()]
    )
    return float(ring.mean()) if ring.size else float(lum.mean())


def should_invert(x: np.ndarray, prep: Preprocessing, invert: Invert) -> bool:
    if invert != "auto":
        return invert == "true"
    if prep.background is None:
        return False
    light = border_brightness(x) > 0.5
    return light if prep.background == "dark" else not light


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, C)`` float32 resized per channel (bilinear, antialiased downwards)."""
    if x.shape[:2] == (height, width):
        return x
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F").resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for c in range(x.shape[2])
    ]
    return np.stack(channels, axis=2)


def crop_center(
    x: np.ndarray, height: int, width: int, *, background: float, box: float = 1.0
) -> np.ndarray:
    """How NIST made the bitmaps behind scikit-learn's digits, on any image:
    the ink (pixels away from ``background`` by more than half the largest
    difference) cropped to its bounding box, scaled keeping its aspect
    ratio to the largest size that fits ``box`` of the frame, centred, drawn
    as a bitmap at ``SUPERSAMPLE`` times the input's resolution (32x32 for
    8x8) and counted in blocks (4x4: 0..16 ink pixels, as a fraction here).
    Every digit of the data set fills the height and its box is centred (the
    box centres of each class average 3.46 to 3.80 of columns 0..7, the
    mass centres 3.28 to 3.82). An image without ink is resized whole."""
    lum = x.mean(axis=2) if x.shape[2] == 1 else x @ LUMA
    ink = np.abs(lum - background)
    peak = float(ink.max())
    if peak <= 1e-3:
        return _resize(x, height, width)
    cut = INK_THRESHOLD * peak
    rows = np.flatnonzero((ink > cut).any(axis=1))
    cols = np.flatnonzero((ink > cut).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1, None]
    k = max(1, min(SUPERSAMPLE, MAX_FRAME // max(height, width)))
    fh, fw = height * k, width * k
    ch, cw = crop.shape[:2]
    scale = min(box * fh / ch, box * fw / cw)
    sh, sw = max(1, min(fh, round(ch * scale))), max(1, min(fw, round(cw * scale)))
    bitmap = np.zeros((fh, fw), dtype=np.float32)
    top, left = (fh - sh) // 2, (fw - sw) // 2
    bitmap[top : top + sh, left : left + sw] = _resize(crop, sh, sw)[..., 0] > cut
    share = bitmap.reshape(height, k, width, k).mean(axis=(1, 3))[..., None]  # (H, W, 1)
    drawn = 1.0 if background < 0.5 else 0.0  # the ink's own value
    out = background + share * (drawn - background)
    return np.broadcast_to(out, (height, width, x.shape[2])).astype(np.float32)


def image_input(
    data: bytes,
    prep: Preprocessing,
    *,
    max_pixels: int,
    max_bytes: int = MAX_BYTES,
    invert: Invert = "auto",
    fit: Fit | None = None,
) -> np.ndarray:
    """One preprocessed image, batch axis first: ``(1, C, H, W)``, ``(1, H, W, C)``, ``(1, F)``.
    CPU-bound (milliseconds to seconds): callers on an event loop run it in a
    worker thread (service/routes/images.py)."""
    image = decode(data, max_pixels=max_pixels, max_bytes=max_bytes)
    return array_input(pixels(image, prep.color), prep, invert=invert, fit=fit)


def array_input(
    x: np.ndarray, prep: Preprocessing, *, invert: Invert = "auto", fit: Fit | None = None
) -> np.ndarray:
    """Steps 3 to 6 on ``(H, W, C)`` values in [0, 1]."""
    if should_invert(x, prep, invert):
        x = 1.0 - x
    height, width = prep.spatial
    if (fit or prep.fit) == "crop-center":
        background = {"dark": 0.0, "light": 1.0}.get(prep.background or "", border_brightness(x))
        x = crop_center(x, height, width, background=background, box=prep.fit_box)
    else:
        x = _resize(x, height, width)
    lo, hi = prep.value_range
    values = lo + x.astype(np.float32) * np.float32(hi - lo)  # (H, W, C)
    if prep.normalized:
        mean = np.asarray(prep.mean, dtype=np.float32)
        std = np.asarray(prep.std, dtype=np.float32)
        values = (values / np.float32(prep.pixel_scale) - mean) / std
    values = values.astype(np.float32)
    if prep.layout == "NC":
        return values.reshape(1, -1)  # (1, F)
    if prep.layout == "NHWC":
        return values[None]  # (1, H, W, C)
    return values.transpose(2, 0, 1)[None]  # (1, C, H, W)


def made_shape(prep: Preprocessing) -> list[int]:
    """The shape :func:`image_input` makes, batch axis included."""
    if prep.layout == "NC":
        return [1, prep.input_shape[0]]
    return [1, *prep.input_shape]


def preprocessing_problem(prep: Preprocessing, signature: Signature) -> str | None:
    """Why ``prep`` cannot make the input of the graph ``signature``
    describes, or None when it can."""
    where = f"preprocessing (layout {prep.layout}, input_shape {prep.input_shape})"
    if len(signature.inputs) != 1:
        names = [s.name for s in signature.inputs]
        return f"{where} makes one input but the graph takes {len(names)}: {names}"
    spec = signature.inputs[0]
    if spec.datatype not in FLOAT_TYPES:
        return f"{where} makes floats but input {spec.name!r} is {spec.datatype}"
    made = made_shape(prep)
    want = list(spec.shape)
    if signature.batched:
        fits = len(want) == len(made) and all(
            w in (-1, m) for w, m in zip(want[1:], made[1:], strict=True)
        )
    else:  # the route reshapes to the graph's shape: the element count must agree
        static = [d for d in want if d != -1]
        fits = len(static) == len(want) and math.prod(want) == math.prod(made)
        fits = fits or (
            len(want) == len(made) and all(w in (-1, m) for w, m in zip(want, made, strict=True))
        )
    if not fits:
        return f"{where} makes {made} but input {spec.name!r} takes {want} (-1: any size)"
    return None


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax of one row, unless the row already is a distribution."""
    scores = scores.astype(np.float64).ravel()
    if scores.min() >= 0 and abs(scores.sum() - 1.0) < 1e-3:
        return scores
    shifted = np.exp(scores - scores.max())
    return shifted / shifted.sum()


def top_labels(scores: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    probs = probabilities(scores)
    order = np.argsort(-probs, kind="stable")[:k]
    return [
        {
            "index": int(i),
            "label": labels[i] if i < len(labels) else str(int(i)),
            "probability": float(probs[i]),
        }
        for i in order
    ]
