"""``<model>/config.json`` as the service reads it (docs/repository.md).

The same file is rendered back in Triton's model configuration format for
``GET /v2/models/{m}/config``, which perf_analyzer reads before it sends
load (``max_batch_size``, ``input``/``output`` with ``dims`` excluding the
batch dimension, ``dynamic_batching``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .files import MAX_JSON_BYTES, read_file
from .protocol import DATATYPES, TRITON_DATATYPES


class TensorConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    datatype: str
    shape: list[int]  # without the batch dimension when max_batch_size > 0

    @model_validator(mode="after")
    def _check(self) -> TensorConfig:
        if self.datatype not in DATATYPES:
            raise ValueError(f"unsupported datatype {self.datatype!r}")
        if any(d < -1 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a dimension below -1")
        return self


class DynamicBatching(BaseModel):
    model_config = ConfigDict(extra="allow")

    enabled: bool = True
    max_queue_delay_ms: Annotated[float | None, Field(ge=0, le=60_000)] = None
    max_queue_size: Annotated[int | None, Field(ge=1)] = None
    # bnfold's own: leave at once when no other request is on its way
    # (None: the server's BNFOLD_EAGER_BATCHING); Triton ignores the key.
    eager: bool | None = None


class Preprocessing(BaseModel):
    """How an uploaded image becomes the model input:
    ``x = (pixel / pixel_scale - mean[c]) / std[c]``, resized to ``input_shape``."""

    model_config = ConfigDict(extra="allow")

    layout: Literal["NCHW", "NC"]
    input_shape: list[int]
    pixel_scale: Annotated[float, Field(gt=0)] = 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])
    color: Literal["grayscale", "rgb"] = "grayscale"

    @model_validator(mode="after")
    def _check(self) -> Preprocessing:
        rank = 3 if self.layout == "NCHW" else 1
        if len(self.input_shape) != rank or any(d < 1 for d in self.input_shape):
            raise ValueError(f"input_shape {self.input_shape} does not fit layout {self.layout}")
        if any(s == 0 for s in self.std):
            raise ValueError("std has a zero entry")
        channels = self.input_shape[0] if self.layout == "NCHW" else 1
        for field in ("mean", "std"):
            if len(getattr(self, field)) not in (1, channels):
                raise ValueError(f"{field} needs 1 or {channels} entries")
        if self.layout == "NC" and round(self.input_shape[0] ** 0.5) ** 2 != self.input_shape[0]:
            raise ValueError(f"flat input_shape {self.input_shape} is not a square image")
        if self.layout == "NCHW" and self.input_shape[0] != (3 if self.color == "rgb" else 1):
            raise ValueError(f"{self.color} images need {3 if self.color == 'rgb' else 1} channels")
        return self


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    platform: str = "onnxruntime_onnx"
    max_batch_size: Annotated[int, Field(ge=0)] = 0
    input: list[TensorConfig]
    output: list[TensorConfig]
    dynamic_batching: DynamicBatching | None = None
    labels: list[str] = Field(default_factory=list)
    preprocessing: Preprocessing | None = None


def read_config(path: Path, root: Path | None = None) -> ModelConfig:
    """Parse ``config.json`` (a regular file inside ``root``, its own folder
    by default); raises ``ValueError`` with a one-line reason."""
    data = read_file(path, root=path.parent if root is None else root, max_bytes=MAX_JSON_BYTES)
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"config.json is not valid JSON: {e}") from None
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"config.json: {where}: {first['msg']}") from None


def triton_config(
    name: str,
    config: ModelConfig,
    *,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    batching: bool,
    max_queue_delay_ms: float,
    max_queue_size: int,
    gpu: int | None,
) -> dict[str, Any]:
    """Triton's model configuration (JSON form) for the served version;
    ``name`` is the model's folder name, which Triton and clients go by.

    ``inputs``/``outputs`` are ``(name, datatype, dims)`` with the batch
    dimension already removed.
    """

    def tensor(name: str, datatype: str, dims: list[int]) -> dict[str, Any]:
        return {
            "name": name,
            "data_type": TRITON_DATATYPES[datatype],
            "format": "FORMAT_NONE",
            "dims": dims,
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
        }

    out: dict[str, Any] = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": config.max_batch_size,
        "input": [tensor(*t) for t in inputs],
        "output": [
            {k: v for k, v in tensor(*t).items() if k not in ("format", "allow_ragged_batch")}
            | {"label_filename": ""}
            for t in outputs
        ],
        "batch_input": [],
        "batch_output": [],
        "instance_group": [
            {
                "name": f"{name}_0",
                "kind": "KIND_GPU" if gpu is not None else "KIND_CPU",
                "count": 1,
                "gpus": [gpu] if gpu is not None else [],
            }
        ],
        "default_model_filename": "model.onnx",
        "parameters": {},
    }
    if batching:
        out["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": round(max_queue_delay_ms * 1000),
            "preserve_ordering": True,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": True,
                "max_queue_size": max_queue_size,
            },
        }
    return out
