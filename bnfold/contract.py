"""The model repository contract: the one thing the converter and the service share.

The converter writes a repository, the service reads it, and this module is
all that crosses between them (docs/repository.md). stdlib and numpy only:
the service imports it without torch, the converter without uvicorn.

- **Names and versions.** A model name matches :data:`NAME_RE`; a version
  folder is a decimal integer >= 1 written without leading zeros or signs
  (``1``, ``12``; never ``01``, ``+1``, ``1.0`` or ``²``). Anything else in a
  model folder is refused with a reason (:func:`scan_versions`), except
  hidden entries such as the writer's ``.tmp-*`` staging folders.
- **File names** of a version and of a model folder.
- **Schemas**: :class:`ModelConfig` (``<model>/config.json``) and
  :class:`Manifest` (``<model>/<version>/manifest.json``), typed and
  versioned by :data:`FORMAT`. Unknown keys are refused with the key and the
  nearest known one (``max_batch_sise``: did you mean ``max_batch_size``?).
- **Parity**: :func:`compare`, the one numerical comparison every report
  uses (PyTorch vs reference.onnx vs model.onnx, stored and recomputed), and
  :class:`ParityReport` (:func:`compare_outputs`), the one way several of
  them make a verdict: ``bnfold verify``, ``import``, ``convert``, fold on
  load and ``/parity`` all report it.
- **Defaults** both wings use: :data:`DEFAULT_MAX_BATCH_SIZE`,
  :data:`DEFAULT_RTOL`, :data:`DEFAULT_MIN_TOP1`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import numpy as np

# --- file names ------------------------------------------------------------------

CONFIG_FILE = "config.json"
PBTXT_FILE = "config.pbtxt"  # Triton's configuration, read by the service as it is
MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.onnx"
MANIFEST_FILE = "manifest.json"
VERSION_FILES = (MODEL_FILE, REFERENCE_FILE)
# Writers stage here; readers skip every hidden entry.
STAGING_PREFIX = ".tmp-"
# The format of config.json and manifest.json this module reads and writes.
FORMAT = 1
# What a model configuration may name as its platform.
PLATFORMS = ("onnxruntime_onnx",)
# max_batch_size written for a graph whose first axis is dynamic (convert,
# import) and taken by the service for one that comes without a configuration.
DEFAULT_MAX_BATCH_SIZE = 64
# Rows one batch may hold: far above any batcher's use, far below what would
# let a configuration alone claim gigabytes (issue 19: 2**22 was accepted).
MAX_BATCH_SIZE = 1 << 16


class ContractError(ValueError):
    """A name, version, config.json or manifest.json breaks the contract.
    The message is one line, fit for the repository index."""


# --- names and versions ------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# 18 digits: every such version fits a signed 64-bit integer.
VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model, or None when it can."""
    if NAME_RE.fullmatch(name) and ".." not in name:
        return None
    return (
        f"invalid model name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
        "starting with a letter or digit, without '..'"
    )


def check_name(name: str) -> str:
    problem = name_problem(name)
    if problem:
        raise ContractError(problem)
    return name


def version_problem(text: str) -> str | None:
    """Why ``text`` cannot name a version, or None when it can."""
    if VERSION_RE.fullmatch(text):
        return None
    if text.isascii() and text.isdigit() and text.strip("0"):
        if text.startswith("0"):
            return f"version must be a positive integer without leading zeros, got {text!r}"
        return f"version must be a positive integer of at most 18 digits, got {text!r}"
    return f"version must be a positive integer (1, 2, ...), got {text!r}"


def parse_version(text: str) -> int:
    """The version that ``text`` names (``'7'`` -> 7); ContractError otherwise."""
    problem = version_problem(text)
    if problem:
        raise ContractError(problem)
    return int(text)


def check_version(version: int) -> int:
    """A version number a writer may use."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ContractError(f"version must be a positive integer, got {version!r}")
    return parse_version(str(version))


@dataclass(frozen=True)
class Versions:
    """What a model folder holds: complete versions ascending, and the
    folders that look like versions to a person but are not, with why."""

    valid: list[int]
    refused: dict[str, str]


def scan_versions(model_dir: Path) -> Versions:
    if not model_dir.is_dir():
        return Versions([], {})
    valid: list[int] = []
    refused: dict[str, str] = {}
    for p in model_dir.iterdir():
        if p.name.startswith(".") or not p.is_dir():
            continue
        problem = version_problem(p.name)
        if problem:
            refused[p.name] = f"not a version folder: {problem}"
        else:
            valid.append(int(p.name))
    return Versions(sorted(valid), dict(sorted(refused.items())))


def next_version(model_dir: Path) -> int:
    valid = scan_versions(model_dir).valid
    return valid[-1] + 1 if valid else 1


# --- datatypes ---------------------------------------------------------------------

# Open Inference Protocol datatype -> numpy dtype. BYTES (strings: ONNX's
# tensor(string)) is an array of Python objects (str), as ONNX Runtime takes
# and returns them: no itemsize, no arithmetic, no NaN; code that makes or
# checks arrays from this table tests ``dtype == object`` (or kind "O") first.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}


# ONNX tensor type, as ONNX Runtime spells it (NodeArg.type) -> datatype.
ONNX_DATATYPES: dict[str, str] = {
    f"tensor({onnx_name})": name
    for onnx_name, name in [
        ("bool", "BOOL"),
        ("uint8", "UINT8"),
        ("uint16", "UINT16"),
        ("uint32", "UINT32"),
        ("uint64", "UINT64"),
        ("int8", "INT8"),
        ("int16", "INT16"),
        ("int32", "INT32"),
        ("int64", "INT64"),
        ("float16", "FP16"),
        ("float", "FP32"),
        ("double", "FP64"),
        ("string", "BYTES"),
    ]
}

# --- schemas -----------------------------------------------------------------------

T = TypeVar("T")


def _fail(where: str, message: str) -> typing.NoReturn:
    raise ContractError(f"{where}: {message}")


def _unknown_key(where: str, key: str, known: list[str]) -> typing.NoReturn:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(known)}"
    _fail(where, f"unknown key {key!r}{hint}")


def _typename(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) checked against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _convert(inner, value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            _fail(where, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            _fail(where, f"expected a list, got {_typename(value)}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(where, f"expected an object, got {_typename(value)}")
        _, item = typing.get_args(tp)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _from_dict(typing.cast(type, tp), value, where)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, f"expected true or false, got {_typename(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, f"expected an integer, got {_typename(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(where, f"expected a number, got {_typename(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(where, f"expected a string, got {_typename(value)}")
        return value
    raise TypeError(f"no conversion for {tp!r}")  # a schema bug, not the file's


def _from_dict(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        _fail(where, f"expected an object, got {_typename(data)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            _unknown_key(where, key, known)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(where, f"missing key {f.name!r}")
    try:
        return cls(**kwargs)
    except ContractError as e:
        raise ContractError(f"{where}: {e}") from None


def _to_dict(obj: Any) -> dict[str, Any]:
    """The JSON object of a schema instance; optional keys left unset (None,
    or an empty list or object by default) are left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = _plain(getattr(obj, f.name))
        if f.default is None and value is None:
            continue
        if f.default_factory is not dataclasses.MISSING and value in ([], {}):
            continue
        out[f.name] = value
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_dict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class TensorConfig:
    """One input or output: Open Inference Protocol datatype, and the shape
    without the batch dimension when ``max_batch_size > 0`` (-1: any size).
    ``format`` is Triton's layout hint for image inputs."""

    name: str
    datatype: str
    shape: list[int]
    format: Literal["FORMAT_NONE", "FORMAT_NCHW", "FORMAT_NHWC"] | None = None
    # Triton's reshape: ``shape`` is what the wire carries, ``reshape`` what
    # the graph sees (both without the batch dimension); [] is a scalar.
    reshape: list[int] | None = None
    # Triton's optional input: a request may leave it out (None: required).
    optional: bool | None = None

    def __post_init__(self) -> None:
        if self.reshape is not None and any(d < -1 for d in self.reshape):
            raise ContractError(f"reshape {self.reshape} has a dimension below -1")
        if self.datatype not in DATATYPES:
            raise ContractError(
                f"unsupported datatype {self.datatype!r} (one of {', '.join(DATATYPES)})"
            )
        if any(d < -1 for d in self.shape):
            raise ContractError(f"shape {self.shape} has a dimension below -1")


@dataclass
class DynamicBatching:
    enabled: bool = True
    max_queue_delay_ms: float | None = None  # None: the server's default
    max_queue_size: int | None = None
    # Triton's default_queue_policy: a request still queued after this long is
    # refused (timeout_action REJECT; None: never), and a request's own
    # parameters.timeout may shorten it (allow_timeout_override; None: no, and
    # left out of a written config.json, as every unset key is).
    queue_timeout_ms: float | None = None
    allow_timeout_override: bool | None = None
    # bnfold's own: leave at once when no other request is on its way
    # (None: the server's BNFOLD_EAGER_BATCHING); Triton ignores the key.
    eager: bool | None = None
    # Triton's preferred_batch_size: with Triton's rule (eager off), a batch
    # that reaches one of these sizes leaves at once (none: max_batch_size).
    preferred_batch_size: list[int] = field(default_factory=list)
    # Triton's preserve_ordering: answers leave in the order the requests
    # were taken, even with several batches in flight (None: off, as in
    # Triton, and left out of a written config.json).
    preserve_ordering: bool | None = None

    def __post_init__(self) -> None:
        if self.max_queue_delay_ms is not None and not 0 <= self.max_queue_delay_ms <= 60_000:
            raise ContractError("max_queue_delay_ms must be within 0 and 60000")
        if self.max_queue_size is not None and self.max_queue_size < 1:
            raise ContractError("max_queue_size must be at least 1")
        if self.queue_timeout_ms is not None and not self.queue_timeout_ms > 0:
            raise ContractError("queue_timeout_ms must be more than 0")
        if any(size < 1 for size in self.preferred_batch_size):
            raise ContractError("preferred_batch_size must hold sizes of 1 or more")


@dataclass
class Preprocessing:
    """What the model's input is, and how an uploaded image becomes it
    (docs/repository.md, "preprocessing").

    ``input_range`` ``[lo, hi]`` is the range of the values the graph takes
    as they come (digits' ink counts ``[0, 16]``, 8-bit pixels ``[0, 255]``,
    the default), ``input_meaning`` says what they are. An image's 8-bit
    values ``v`` map onto it linearly: ``raw = lo + v / 255 * (hi - lo)``.

    - ``normalized: false`` (what the converter writes): the graph takes
      ``raw`` as it is and applies ``(raw / pixel_scale - mean[c]) / std[c]``
      itself, folded into its first layer; the service only lays out.
    - ``normalized: true`` (the default, as before this key existed): the
      graph takes ``(raw / pixel_scale - mean[c]) / std[c]``, which the
      service computes.

    The image is laid out as ``input_shape``: ``[C, H, W]`` for NCHW,
    ``[H, W, C]`` for NHWC (Keras/tf2onnx), ``[F]`` for flat NC inputs (a
    square image). ``background`` (``dark``: light ink on dark, as digits are
    stored) lets the service turn around images of the other kind;
    ``fit`` is how an image is fitted to the input by default (``resize``,
    or ``crop-center``: crop to the ink, scale it to fill ``fit_box`` of the
    frame keeping its aspect ratio, centre it, as digit data sets were made)."""

    layout: Literal["NCHW", "NHWC", "NC"]
    input_shape: list[int]
    pixel_scale: float = 255.0
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    color: Literal["grayscale", "rgb"] = "grayscale"
    normalized: bool = True
    input_range: list[float] | None = None  # None: [0, 255], the 8-bit values themselves
    input_meaning: str | None = None
    background: Literal["dark", "light"] | None = None  # None: unknown, never inverted on auto
    fit: Literal["resize", "crop-center"] = "resize"
    fit_box: float = 1.0

    def __post_init__(self) -> None:
        rank = 1 if self.layout == "NC" else 3
        if len(self.input_shape) != rank or any(d < 1 for d in self.input_shape):
            raise ContractError(f"input_shape {self.input_shape} does not fit layout {self.layout}")
        if self.pixel_scale <= 0:
            raise ContractError("pixel_scale must be positive")
        if any(s == 0 for s in self.std):
            raise ContractError("std has a zero entry")
        channels = self.channels
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, channels):
                raise ContractError(f"{name} needs 1 or {channels} entries")
        if self.layout == "NC" and round(self.input_shape[0] ** 0.5) ** 2 != self.input_shape[0]:
            raise ContractError(f"flat input_shape {self.input_shape} is not a square image")
        want = 3 if self.color == "rgb" else 1
        if self.layout != "NC" and channels != want:
            raise ContractError(f"{self.color} images need {want} channels")
        if self.input_range is not None and (
            len(self.input_range) != 2 or not self.input_range[0] < self.input_range[1]
        ):
            raise ContractError(f"input_range {self.input_range} must be [low, high], low < high")
        if not 0 < self.fit_box <= 1:
            raise ContractError("fit_box must be within 0 (exclusive) and 1")

    @property
    def channels(self) -> int:
        """Channels of the image the input is made of (1 for flat inputs)."""
        if self.layout == "NCHW":
            return self.input_shape[0]
        return self.input_shape[-1] if self.layout == "NHWC" else 1

    @property
    def spatial(self) -> tuple[int, int]:
        """(height, width) of the image the input is made of."""
        if self.layout == "NCHW":
            return self.input_shape[1], self.input_shape[2]
        if self.layout == "NHWC":
            return self.input_shape[0], self.input_shape[1]
        side = round(self.input_shape[0] ** 0.5)
        return side, side

    @property
    def value_range(self) -> tuple[float, float]:
        """``input_range`` as (low, high), the 8-bit range when unset."""
        lo, hi = self.input_range if self.input_range is not None else (0.0, 255.0)
        return float(lo), float(hi)


@dataclass
class LatestVersions:
    num_versions: int = 1

    def __post_init__(self) -> None:
        if self.num_versions < 1:
            raise ContractError("num_versions must be at least 1")


@dataclass
class SpecificVersions:
    versions: list[int]

    def __post_init__(self) -> None:
        for v in self.versions:
            check_version(v)


@dataclass
class VersionPolicy:
    """Which versions serve, as Triton's ``version_policy``: exactly one of
    ``latest`` (the N highest; the default, N = 1), ``all`` (``{}``) or
    ``specific`` (the versions listed, where present)."""

    latest: LatestVersions | None = None
    all: dict[str, Any] | None = None
    specific: SpecificVersions | None = None

    def __post_init__(self) -> None:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ContractError(f"set one of latest, all, specific; got {', '.join(chosen)}")
        if self.all:
            raise ContractError("all takes no settings: write {}")

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available``, ascending."""
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific.versions)]
        n = self.latest.num_versions if self.latest is not None else 1
        return ordered[-n:]

    def describe(self) -> str:
        if self.all is not None:
            return "all versions"
        if self.specific is not None:
            return "versions " + ", ".join(map(str, self.specific.versions))
        n = self.latest.num_versions if self.latest is not None else 1
        return "the highest version" if n == 1 else f"the {n} highest versions"


@dataclass
class InstanceGroup:
    """Where the model runs: ``KIND_GPU``, ``KIND_CPU``, or ``KIND_AUTO``
    (the server's device). bnfold runs one session per served version, so
    ``count`` is accepted as Triton writes it and not multiplied."""

    kind: Literal["KIND_AUTO", "KIND_GPU", "KIND_CPU"] = "KIND_AUTO"
    count: int = 1
    gpus: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ContractError("instance_group count must be at least 1")
        if any(g < 0 for g in self.gpus):
            raise ContractError("instance_group gpus must be device ids >= 0")


@dataclass
class ModelConfig:
    """``<model>/config.json``: serving settings, written by the converter and
    editable by hand. Field names follow Triton's model configuration.

    ``name`` and ``input``/``output`` may be left out: the service then completes them
    from the graph, as Triton does. ``fold_on_load`` (bnfold's own; None:
    the server's ``--fold-on-load``) folds the BNs of the graph in memory
    when the version loads, served only if parity holds."""

    name: str = ""  # the model folder's name when left out
    input: list[TensorConfig] = field(default_factory=list)
    output: list[TensorConfig] = field(default_factory=list)
    format: int = FORMAT
    platform: str = "onnxruntime_onnx"
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None
    labels: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None
    version_policy: VersionPolicy | None = None
    instance_group: list[InstanceGroup] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    fold_on_load: bool | None = None
    # Triton's ``optimization`` and ``model_warmup`` in their JSON form
    # (ONNX Runtime's providers, graph level, CUDA graphs; warm-up samples);
    # the service reads them (docs/repository.md).
    optimization: dict[str, Any] | None = None
    model_warmup: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_format(self.format)
        if self.max_batch_size < 0:
            raise ContractError("max_batch_size must be 0 (no batching) or more")
        if self.max_batch_size > MAX_BATCH_SIZE:
            raise ContractError(
                f"max_batch_size {self.max_batch_size} is over {MAX_BATCH_SIZE}, the most "
                "one batch may hold"
            )
        if self.platform not in PLATFORMS:
            raise ContractError(
                f"platform {self.platform!r} is not served: bnfold serves ONNX models "
                f"({', '.join(PLATFORMS)})"
            )
        dyn = self.dynamic_batching
        if dyn is not None and any(s > self.max_batch_size for s in dyn.preferred_batch_size):
            # Triton's words (its model configuration validation)
            raise ContractError(
                f"dynamic batching preferred size must be <= max batch size {self.max_batch_size}"
            )
        kinds = {g.kind for g in self.instance_group}
        if len(kinds) > 1:
            raise ContractError(f"instance_group mixes kinds {sorted(kinds)}; use one")

    @property
    def policy(self) -> VersionPolicy:
        return self.version_policy or VersionPolicy()

    @property
    def device_kind(self) -> str:
        return self.instance_group[0].kind if self.instance_group else "KIND_AUTO"

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        return _from_dict(cls, data, CONFIG_FILE)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass
class FileEntry:
    sha256: str
    bytes: int

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ContractError("sha256 is not 64 lowercase hex digits")
        if self.bytes < 0:
            raise ContractError("bytes is negative")


@dataclass
class Manifest:
    """``<model>/<version>/manifest.json``: provenance and proofs of one
    version. ``name``, ``version`` and ``files`` are filled in by the writer
    from the bytes it writes; the reports are free-form objects."""

    name: str
    version: int
    files: dict[str, FileEntry]
    format: int = FORMAT
    created: str | None = None
    arch: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    labels: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    folding: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] | None = None  # where an imported model came from
    # A quantized version (docs/quantization.md): its precision (None: float32)
    # and its record: calibration, thresholds, the gate's numbers, the source.
    precision: Literal["fp32", "int8", "fp16"] | None = None
    quantization: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_format(self.format)
        check_name(self.name)
        check_version(self.version)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        return _from_dict(cls, data, MANIFEST_FILE)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def sha256(self, filename: str) -> str:
        entry = self.files.get(filename)
        if entry is None:
            raise ContractError(f"{MANIFEST_FILE} has no sha256 for {filename}")
        return entry.sha256


# (name, ONNX tensor type as ONNX Runtime spells it, shape with None or a
# string for a symbolic dimension): a graph input or output.
GraphTensor = tuple[str, str, Sequence[int | str | None]]


def complete_config(
    config: ModelConfig | None,
    name: str,
    inputs: Sequence[GraphTensor],
    outputs: Sequence[GraphTensor],
    *,
    default_max_batch_size: int,
) -> ModelConfig:
    """``config`` with what it leaves out taken from the graph, as Triton
    completes a configuration: every graph input and output when none is
    listed (symbolic dimensions as -1); and with no configuration at all,
    ``max_batch_size = default_max_batch_size`` when every input and output
    has a symbolic first dimension (the graph batches), else 0."""
    if config is None:
        config = ModelConfig(name=name)
        if default_max_batch_size > 0 and all(_symbolic_batch(t) for t in [*inputs, *outputs]):
            config = dataclasses.replace(config, max_batch_size=default_max_batch_size)
    batched = config.max_batch_size > 0
    if not config.input:
        config = dataclasses.replace(config, input=[_graph_tensor(t, batched) for t in inputs])
    if not config.output:
        config = dataclasses.replace(config, output=[_graph_tensor(t, batched) for t in outputs])
    return config


def _symbolic_batch(tensor: GraphTensor) -> bool:
    shape = list(tensor[2])
    return bool(shape) and not (isinstance(shape[0], int) and shape[0] >= 0)


def _graph_tensor(tensor: GraphTensor, batched: bool) -> TensorConfig:
    name, onnx_type, shape = tensor
    datatype = ONNX_DATATYPES.get(onnx_type)
    if datatype is None:
        raise ContractError(f"graph tensor {name!r} has unsupported type {onnx_type}")
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    if batched and not dims:
        raise ContractError(f"graph tensor {name!r} is a scalar but max_batch_size > 0")
    return TensorConfig(name=name, datatype=datatype, shape=dims[1:] if batched else dims)


def _check_format(value: int) -> None:
    if value != FORMAT:
        raise ContractError(f"format {value} is not supported (this bnfold reads format {FORMAT})")


def parse_json(data: bytes, filename: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ContractError(f"{filename} is not valid JSON: {e}") from None


def json_bytes(obj: Any) -> bytes:
    """How the writer lays out config.json and manifest.json."""
    return (json.dumps(obj, indent=2) + "\n").encode()


# --- parity ------------------------------------------------------------------------

# float32 folding reorders a handful of multiply-adds per output; 1e-5 of the
# output's scale is ~80 float32 ulps, loose enough for that and tight enough
# to catch any wrong channel, sign or epsilon.
DEFAULT_RTOL = 1e-5
# Fraction of rows whose predicted class may differ (ties broken differently).
DEFAULT_MIN_TOP1 = 1.0


@dataclass(frozen=True)
class Parity:
    """Outcome of one comparison; ``passed`` applies the thresholds given.

    - ``max_abs_error``: ``max |actual - expected|``.
    - ``max_rel_error``: ``max_abs_error / max |expected|``, the error relative
      to the output's scale. Element-wise relative error explodes on logits
      near zero and says nothing about the model; the thresholds are stated
      in this normwise form.
    - ``top1_agreement``: share of rows whose arg-max over the last axis
      agrees (outputs of rank >= 2 only).
    """

    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    n_samples: int
    rtol: float
    min_top1: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    expected: np.ndarray,
    actual: np.ndarray,
    *,
    rtol: float = DEFAULT_RTOL,
    min_top1: float = DEFAULT_MIN_TOP1,
) -> Parity:
    """Compare ``actual`` against ``expected`` (the trusted side)."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    if expected.shape != actual.shape:
        raise ValueError(f"shape mismatch: expected {expected.shape}, got {actual.shape}")
    if expected.dtype.kind in "OSU" or actual.dtype.kind in "OSU":  # strings: equal or not
        err = 0.0 if bool(np.all(expected == actual)) else float("inf")
        return Parity(err, err, None, _rows(expected), rtol, min_top1, err == 0.0)
    e = expected.astype(np.float64)
    a = actual.astype(np.float64)
    if not (np.isfinite(e).all() and np.isfinite(a).all()):
        return Parity(float("inf"), float("inf"), None, _rows(e), rtol, min_top1, False)
    abs_err = float(np.max(np.abs(a - e))) if e.size else 0.0
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
    top1: float | None = None
    if e.ndim >= 2 and e.shape[-1] > 1 and e.size:
        top1 = float(np.mean(np.argmax(e, axis=-1) == np.argmax(a, axis=-1)))
    passed = rel_err <= rtol and (top1 is None or top1 >= min_top1)
    return Parity(abs_err, rel_err, top1, _rows(e), rtol, min_top1, passed)


def _rows(x: np.ndarray) -> int:
    return int(x.shape[0]) if x.ndim else 1


@dataclass(frozen=True)
class ParityReport:
    """Several comparisons of one proof (each output of a graph, or each
    pair of PyTorch, reference.onnx and model.onnx) by name, and the verdict
    over them: the largest errors, the lowest top-1 agreement, ``passed``
    only when every comparison passed. ``n_samples``: the rows compared."""

    outputs: dict[str, Parity]
    n_samples: int
    rtol: float = DEFAULT_RTOL
    min_top1: float = DEFAULT_MIN_TOP1

    @classmethod
    def of(cls, outputs: Mapping[str, Parity], n_samples: int | None = None) -> ParityReport:
        if not outputs:
            raise ValueError("a parity report needs at least one comparison")
        first = next(iter(outputs.values()))
        rows = max(p.n_samples for p in outputs.values()) if n_samples is None else n_samples
        return cls(dict(outputs), rows, first.rtol, first.min_top1)

    @classmethod
    def merge(cls, reports: Mapping[str, ParityReport]) -> ParityReport:
        """One verdict over reports on different inputs (held-out, random):
        comparisons named ``<report>/<output>``, rows added up."""
        outputs = {f"{k}/{name}": p for k, r in reports.items() for name, p in r.outputs.items()}
        return cls.of(outputs, sum(r.n_samples for r in reports.values()))

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.outputs.values())

    @property
    def max_abs_error(self) -> float:
        return max(p.max_abs_error for p in self.outputs.values())

    @property
    def max_rel_error(self) -> float:
        return max(p.max_rel_error for p in self.outputs.values())

    @property
    def top1_agreement(self) -> float | None:
        top1 = [p.top1_agreement for p in self.outputs.values() if p.top1_agreement is not None]
        return min(top1) if top1 else None

    def worst(self) -> tuple[str, Parity]:
        """The comparison that decides: the first failed one, else the largest error."""
        return max(self.outputs.items(), key=lambda kv: (not kv[1].passed, kv[1].max_rel_error))

    def summary(self) -> dict[str, Any]:
        """The verdict alone, as every report spells it."""
        return {
            "passed": self.passed,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "top1_agreement": self.top1_agreement,
            "n_samples": self.n_samples,
            "rtol": self.rtol,
            "min_top1": self.min_top1,
        }

    def to_dict(self) -> dict[str, Any]:
        return self.summary() | {"outputs": {n: p.to_dict() for n, p in self.outputs.items()}}


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    rtol: float = DEFAULT_RTOL,
    min_top1: float = DEFAULT_MIN_TOP1,
    n_samples: int | None = None,
) -> ParityReport:
    """Every output of ``expected`` (the trusted side) against the same name
    in ``actual``; an output missing or of another shape is a ValueError."""
    missing = [name for name in expected if name not in actual]
    if missing:
        raise ValueError(f"outputs {missing} are missing")
    outputs = {
        name: compare(want, actual[name], rtol=rtol, min_top1=min_top1)
        for name, want in expected.items()
    }
    return ParityReport.of(outputs, n_samples)
