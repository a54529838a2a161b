"""An uploaded PNG/JPEG to a model input, and logits to top-k labels.

Preprocessing comes from ``config.json`` (docs/repository.md):
``x = (pixel / pixel_scale - mean[c]) / std[c]``, the image resized to
``input_shape`` (``[C, H, W]`` for ``NCHW``; ``[F]`` for flat ``NC``, where
the image is resized to ``sqrt(F) x sqrt(F)`` grayscale and flattened).
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
from PIL import Image

from bnfold.contract import Preprocessing

from .errors import BadRequest, PayloadTooLarge

FORMATS = ("PNG", "JPEG")


def image_input(data: bytes, prep: Preprocessing, *, max_pixels: int) -> np.ndarray:
    """One preprocessed image with a batch axis: ``(1, C, H, W)`` or ``(1, F)``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLarge(f"image is {width}x{height}, over {max_pixels} pixels")
            image.load()
    except PayloadTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge("image is too large to decode") from None
    except Exception:
        raise BadRequest("the upload is not a readable PNG or JPEG image") from None

    if prep.layout == "NC":
        side = math.isqrt(prep.input_shape[0])
        size, mode = (side, side), "L"
    else:
        _, h, w = prep.input_shape
        size, mode = (w, h), ("RGB" if prep.color == "rgb" else "L")
    resized = image.convert(mode).resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / prep.pixel_scale  # (H, W) or (H, W, 3)
    # (C, H, W) with C = 1 or 3
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(-1, 1, 1)
    x = (pixels - mean) / std
    if prep.layout == "NC":
        return x.reshape(1, -1)  # (1, F)
    return x[None]  # (1, C, H, W)


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
