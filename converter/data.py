"""Data sets for training: loaders that validate, and one deterministic split.

``--data`` takes one of:

- ``digits``: scikit-learn's embedded 8x8 digits (no download), the default;
- ``synthetic``: seeded Gaussian classes in the architecture's input shape;
- ``npz:PATH``: arrays ``x`` (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)
  and ``y`` (N,) integer labels;
- ``cifar10:PATH``: the official binary batches (``data_batch_*.bin``,
  ``test_batch.bin``; PATH is their folder or one ``.bin`` file);
- ``fer2013:PATH``: the FER2013 CSV (``emotion,pixels,Usage``).

Every loader returns the values as the data set stores them, which is what a
user has: digits' ink counts 0..16, 8-bit pixels 0..255 (``Dataset.input_range``
and ``input_meaning`` say which). :func:`prepare` resizes them to the
architecture's input, splits train/validation/test deterministically
(:func:`split_indices`) and standardises with statistics of the training
split only: ``(raw / pixel_scale - mean) / std``. The converter puts that map
in front of the exported network, so the served model takes the raw values.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.converter.errors import InputError

CIFAR10_LABELS = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
FER2013_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER2013_USAGE = {"Training": 0, "PublicTest": 1, "PrivateTest": 2}
TRAIN, VAL, TEST = 0, 1, 2


class DataError(InputError):
    """A data source is missing, malformed or does not fit the architecture."""


# What the embedded digits are: scikit-learn's load_digits() is UCI's optdigits,
# NIST bitmaps of 32x32 pixels (each digit scaled to fill the height, centred)
# counted in 4x4 blocks.
DIGITS_MEANING = "ink pixels per 4x4 block of a 32x32 bitmap (0..16), light ink on dark"
PIXELS_MEANING = "8-bit pixel values (0..255)"


@dataclass
class Dataset:
    """Samples as stored, images as (N, C, H, W) and vectors as (N, F).

    ``input_range`` is the range the values live in and ``pixel_scale`` what
    they are divided by to lie in [0, 1] before standardising (16 for digits,
    255 for 8-bit images, 1 for data already in [0, 1]); ``background`` and
    ``fit`` describe images for the service (docs/repository.md)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    # Optional predefined split per sample (TRAIN/VAL/TEST, -1 = choose).
    split: np.ndarray | None = None
    source: str = ""
    input_range: tuple[float, float] = (0.0, 1.0)
    pixel_scale: float = 1.0
    input_meaning: str = ""
    background: str | None = None  # "dark": light ink on a dark background
    fit: str = "resize"  # "crop-center" for digit-like images


@dataclass
class Splits:
    """Standardised arrays ready for training, plus how to reproduce them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    preprocessing: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    # The test split as stored (raw values, laid out for the network), and
    # which samples of the data set it holds.
    raw_test: np.ndarray | None = None
    test_indices: np.ndarray | None = None


# --------------------------------------------------------------------------- loaders


def load(
    spec: str, *, input_shape: tuple[int, ...], num_classes: int | None = None, seed: int = 0
) -> Dataset:
    """Load the data set named by ``spec`` (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return load_digits()
    if kind == "synthetic" and not arg:
        return synthetic(input_shape, num_classes or 10, seed=seed)
    loaders = {"npz": load_npz, "cifar10": load_cifar10, "fer2013": load_fer2013}
    if kind in loaders:
        if not arg:
            raise DataError(f"--data {kind}: needs a path, e.g. {kind}:/path/to/data")
        return loaders[kind](Path(arg).expanduser())
    raise DataError(
        f"unknown data set {spec!r}; use digits, synthetic, npz:PATH, cifar10:PATH or fer2013:PATH"
    )


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), counts 0..16 as stored
    return Dataset(
        "digits",
        x,
        d.target.astype(np.int64),
        [str(i) for i in range(10)],
        source="sklearn.datasets.load_digits",
        input_range=(0.0, 16.0),
        pixel_scale=16.0,
        input_meaning=DIGITS_MEANING,
        background="dark",
        fit="crop-center",
    )


def synthetic(
    input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0, n: int = 2000
) -> Dataset:
    """Seeded classes: a random prototype per class plus noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0.2, 0.8, size=(num_classes, *input_shape)).astype(np.float32)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = protos[y] + rng.normal(0, 0.15, size=(n, *input_shape)).astype(np.float32)
    return Dataset(
        "synthetic",
        np.clip(x, 0, 1).astype(np.float32),
        y.astype(np.int64),
        [f"class_{i}" for i in range(num_classes)],
        source=f"seed={seed}",
        input_meaning="synthetic values in [0, 1]",
    )


def load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"npz: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise DataError(f"npz: {path} lacks array(s) {sorted(missing)}; has {f.files}")
            x, y = f["x"], f["y"]
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"npz: cannot read {path}: {e}") from e
    if x.dtype.kind not in "uif":
        raise DataError(f"npz: x must be numeric, got dtype {x.dtype}")
    if y.dtype.kind not in "ui":
        raise DataError(f"npz: y must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"npz: y must be 1-D (N,), got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"npz: x has {x.shape[0]} samples but y has {y.shape[0]}")
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"npz: x must be (N, F), (N, H, W) or (N, H, W, C)/(N, C, H, W); got {x.shape}"
        )
    xf = x.astype(np.float32)
    if not np.isfinite(xf).all():
        raise DataError("npz: x contains NaN or infinite values")
    lo, hi = float(xf.min(initial=0.0)), float(xf.max(initial=0.0))
    if lo >= 0 and hi <= 1:  # already in [0, 1]
        value_range, scale, meaning = (0.0, 1.0), 1.0, "values in [0, 1]"
    elif lo >= 0 and hi <= 255 and (x.dtype.kind in "ui" or hi > 1):  # pixels
        value_range, scale, meaning = (0.0, 255.0), 255.0, PIXELS_MEANING
    else:
        scale = max(abs(lo), abs(hi))
        value_range, meaning = (lo, hi), f"values in [{lo:g}, {hi:g}]"
    if x.ndim == 3:
        xf = xf[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        xf = np.ascontiguousarray(xf.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    labels = _check_labels(y.astype(np.int64), "npz")
    return Dataset(
        "npz",
        xf,
        y.astype(np.int64),
        labels,
        source=str(path),
        input_range=value_range,
        pixel_scale=scale,
        input_meaning=meaning,
    )


PIXELS: dict[str, Any] = {
    "input_range": (0.0, 255.0),
    "pixel_scale": 255.0,
    "input_meaning": PIXELS_MEANING,
}


def load_cifar10(path: Path) -> Dataset:
    if path.is_dir():
        sub = path / "cifar-10-batches-bin"
        folder = sub if sub.is_dir() else path
        files = sorted(folder.glob("data_batch_*.bin")) + sorted(folder.glob("test_batch.bin"))
        if not files:
            raise DataError(f"cifar10: no data_batch_*.bin or test_batch.bin in {folder}")
        meta = folder / "batches.meta.txt"
    elif path.is_file():
        files, meta = [path], path.with_name("batches.meta.txt")
    else:
        raise DataError(f"cifar10: no such file or folder: {path}")
    record = 1 + 3 * 32 * 32
    xs, ys, splits = [], [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DataError(
                f"cifar10: {f.name} is {raw.size} bytes, not a whole number of "
                f"{record}-byte records (1 label byte + 3072 pixel bytes)"
            )
        rec = raw.reshape(-1, record)
        ys.append(rec[:, 0].astype(np.int64))
        xs.append(rec[:, 1:].reshape(-1, 3, 32, 32))
        splits.append(np.full(len(rec), TEST if f.name == "test_batch.bin" else -1))
    y = np.concatenate(ys)
    if y.max() > 9:
        raise DataError(f"cifar10: label byte {int(y.max())} out of range 0..9")
    labels = CIFAR10_LABELS
    if meta.is_file():
        names = [ln.strip() for ln in meta.read_text().splitlines() if ln.strip()]
        if len(names) == 10:
            labels = names
    x = np.concatenate(xs).astype(np.float32)
    return Dataset(
        "cifar10",
        x,
        y,
        list(labels),
        split=np.concatenate(splits),
        source=str(path),
        **PIXELS,
    )


def load_fer2013(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"fer2013: no such file: {path}")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    splits: list[int] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"emotion", "pixels"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(
                f"fer2013: {path} needs a header with columns emotion,pixels[,Usage]; "
                f"got {reader.fieldnames}"
            )
        for i, row in enumerate(reader, start=2):
            try:
                label = int(row["emotion"])
                px = np.array(row["pixels"].split(), dtype=np.int64)
            except (ValueError, AttributeError) as e:
                raise DataError(f"fer2013: line {i}: not numeric ({e})") from None
            if not 0 <= label < 7:
                raise DataError(f"fer2013: line {i}: emotion {label} out of range 0..6")
            if px.size != 48 * 48:
                raise DataError(f"fer2013: line {i}: {px.size} pixels, expected 2304 (48x48)")
            if px.min() < 0 or px.max() > 255:
                raise DataError(f"fer2013: line {i}: pixel values must lie in 0..255")
            usage = row.get("Usage") or ""
            if usage and usage not in FER2013_USAGE:
                raise DataError(f"fer2013: line {i}: unknown Usage {usage!r}")
            xs.append(px.astype(np.uint8).reshape(1, 48, 48))
            ys.append(label)
            splits.append(FER2013_USAGE.get(usage, -1))
    if not xs:
        raise DataError(f"fer2013: {path} has no rows")
    x = np.stack(xs).astype(np.float32)
    return Dataset(
        "fer2013",
        x,
        np.array(ys, dtype=np.int64),
        list(FER2013_LABELS),
        split=np.array(splits),
        source=str(path),
        **PIXELS,
    )


def _check_labels(y: np.ndarray, what: str) -> list[str]:
    if y.size == 0:
        raise DataError(f"{what}: no samples")
    if y.min() < 0:
        raise DataError(f"{what}: negative class label {int(y.min())}")
    k = int(y.max()) + 1
    if len(np.unique(y)) < 2:
        raise DataError(f"{what}: need at least 2 classes, found {len(np.unique(y))}")
    return [str(i) for i in range(k)]


# --------------------------------------------------------------------------- shaping


# The embedded data sets are resized to any network's input by design (the
# 8x8 digits stand in for every image task); a user's data is not.
RESIZED_BY_DESIGN = ("digits", "synthetic")


def fit_to(x: np.ndarray, input_shape: tuple[int, ...], *, resize: bool = True) -> np.ndarray:
    """Samples laid out as ``input_shape`` (data to the network, never the reverse).

    A reshape that keeps every value (``(1, 8, 8)`` images as 64 features,
    or back) is always done; resampling or a change of channels only with
    ``resize`` (the CLI's ``--resize``), else DataError naming both shapes.
    """
    if tuple(x.shape[1:]) == tuple(input_shape):
        return x
    if math.prod(x.shape[1:]) == math.prod(input_shape) and (len(input_shape) == 1 or x.ndim == 2):
        return x.reshape(len(x), *input_shape)
    if not resize:
        raise DataError(
            f"the data's samples have shape {tuple(x.shape[1:])} but the network takes "
            f"{tuple(input_shape)}; give data of that shape, set --input-shape to the data's, "
            "or pass --resize to resample it (images are resized and converted to the "
            "network's channels)"
        )
    if len(input_shape) == 1:
        (features,) = input_shape
        if x.ndim == 2:
            raise DataError(f"data has {x.shape[1]} features, the network expects {features}")
        side = math.isqrt(features)
        if side * side != features:
            raise DataError(
                f"cannot turn {x.shape[1:]} images into {features} features (not a square)"
            )
        img = _resize(_channels(x, 1), side, side)
        return img.reshape(len(x), features)
    if len(input_shape) == 3:
        c, h, w = input_shape
        if x.ndim == 2:
            side = math.isqrt(x.shape[1])
            if side * side != x.shape[1]:
                raise DataError(f"cannot read {x.shape[1]} features as a square image")
            x = x.reshape(len(x), 1, side, side)
        return _resize(_channels(x, c), h, w)
    raise DataError(f"unsupported input shape {input_shape}")


def _channels(x: np.ndarray, c: int) -> np.ndarray:
    have = x.shape[1]
    if have == c:
        return x
    if have == 1:
        return np.repeat(x, c, axis=1)
    if c == 1 and have == 3:
        # ITU-R BT.601 luma, what PIL's convert("L") computes.
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
        return (x * w).sum(axis=1, keepdims=True)
    raise DataError(f"cannot map {have} channels to {c}")


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    if x.shape[2:] == (h, w):
        return x.astype(np.float32)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if x.size:  # antialiasing overshoots; keep the data within its own range (0..16 digits)
        out.clamp_(float(x.min()), float(x.max()))
    return out.numpy()


# --------------------------------------------------------------------------- split


def split_indices(
    data: Dataset,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> dict[str, np.ndarray]:
    """The samples of each split (``train``, ``val``, ``test``), as ascending
    indices into ``data``: stratified, deterministic for a seed, a data set's
    own split (its ``split`` column) respected. What :func:`prepare` trains,
    validates and tests on; the demo and ``bnfold sample-image`` take their
    digits from ``test``."""
    n = len(data.y)
    idx = np.arange(n)
    if limit is not None and limit < n:
        idx = _stratified_take(data.y, limit, seed)
    y = data.y[idx]
    preset = data.split[idx] if data.split is not None else np.full(len(idx), -1)
    rng = np.random.default_rng(seed)
    split = preset.copy()
    free = np.flatnonzero(split < 0)
    have_test = bool((preset == TEST).any())
    have_val = bool((preset == VAL).any())
    for cls in np.unique(y[free]):
        members = free[y[free] == cls]
        members = members[rng.permutation(len(members))]
        n_test = 0 if have_test else round(len(members) * test_fraction)
        n_val = 0 if have_val else round(len(members) * val_fraction)
        split[members] = TRAIN
        split[members[:n_test]] = TEST
        split[members[n_test : n_test + n_val]] = VAL
    parts = {"train": idx[split == TRAIN], "val": idx[split == VAL], "test": idx[split == TEST]}
    for key, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        if len(parts[key]) == 0:
            raise DataError(f"{data.name}: the {name} split is empty; need more samples")
    return parts


def prepare(
    data: Dataset,
    input_shape: tuple[int, ...],
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    limit: int | None = None,
    resize: bool | None = None,
) -> Splits:
    """Deterministic stratified split (:func:`split_indices`), layout
    (:func:`fit_to`; ``resize`` None: only the embedded data sets are
    resampled), standardise with train statistics:
    ``(raw / pixel_scale - mean) / std``. ``raw_test`` keeps the test split
    as stored (laid out for the network, not standardised)."""
    parts = split_indices(
        data, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, limit=limit
    )
    allow = data.name in RESIZED_BY_DESIGN if resize is None else resize
    x = {k: fit_to(data.x[v], input_shape, resize=allow) for k, v in parts.items()}
    scale = float(data.pixel_scale)
    x_train = x["train"] / np.float32(scale)
    if x_train.ndim == 4:
        mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
        bshape: tuple[int, ...] = (1, -1, 1, 1)
        layout = "NCHW"
    else:
        mean = np.array([x_train.mean(dtype=np.float64)])
        std = np.array([x_train.std(dtype=np.float64)])
        bshape = (1, -1)
        layout = "NC"
    std = np.where(std < 1e-6, 1.0, std)

    def norm(a: np.ndarray) -> np.ndarray:
        scaled = a.astype(np.float64) / scale
        return ((scaled - mean.reshape(bshape)) / std.reshape(bshape)).astype(np.float32)

    lo, hi = data.input_range
    preprocessing: dict[str, Any] = {
        "layout": layout,
        "input_shape": list(input_shape),
        "pixel_scale": scale,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "color": "grayscale" if (layout == "NC" or input_shape[0] == 1) else "rgb",
        "normalized": True,  # these arrays are; the converter's graphs take raw_test's kind
        "input_range": [float(lo), float(hi)],
        "input_meaning": data.input_meaning or None,
        "background": data.background,
        "fit": data.fit,
        "fit_box": 1.0,  # crop-center: the ink's box fills the frame (digits fill the height)
    }
    preprocessing = {k: v for k, v in preprocessing.items() if v is not None}
    y = {k: data.y[v] for k, v in parts.items()}
    return Splits(
        x_train=norm(x["train"]), y_train=y["train"],
        x_val=norm(x["val"]), y_val=y["val"],
        x_test=norm(x["test"]), y_test=y["test"],
        labels=data.labels, preprocessing=preprocessing,
        info={"name": data.name, "source": data.source, "seed": seed,
              "n_train": len(parts["train"]), "n_val": len(parts["val"]),
              "n_test": len(parts["test"]),
              "limit": limit,
              "sample_shape": list(data.x.shape[1:]),
              "resized": tuple(data.x.shape[1:]) != tuple(x["test"].shape[1:])},
        raw_test=x["test"].astype(np.float32),
        test_indices=parts["test"],
    )  # fmt: skip


def _stratified_take(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(y))
    # Round-robin over classes so small limits keep every class.
    by_class = [order[y[order] == c] for c in np.unique(y)]
    picked: list[int] = []
    i = 0
    while len(picked) < k:
        for members in by_class:
            if i < len(members) and len(picked) < k:
                picked.append(int(members[i]))
        i += 1
    return np.sort(np.array(picked))
