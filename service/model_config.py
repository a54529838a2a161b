"""``<model>/config.json`` as the service reads it (docs/repository.md).

The same file is rendered back in Triton's model configuration format for
``GET /v2/models/{m}/config``, which perf_analyzer reads before it sends
load (``max_batch_size``, ``input``/``output`` with ``dims`` excluding the
batch dimension, ``dynamic_batching``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnfold.contract import CONFIG_FILE, ContractError, ModelConfig, parse_json

from .files import MAX_JSON_BYTES, read_file
from .protocol import TRITON_DATATYPES
from .triton_config import PBTXT_FILE, read_pbtxt

GRAPH = "the graph"  # where the configuration comes from when no file exists


def read_model_config(model_dir: Path, root: Path) -> tuple[ModelConfig | None, str]:
    """The model folder's configuration and the file it came from: bnfold's
    ``config.json``, Triton's ``config.pbtxt``, or (None, 'the graph') when
    there is none and the graph completes it. Both files at once is refused."""
    json_path, pbtxt_path = model_dir / CONFIG_FILE, model_dir / PBTXT_FILE
    has_json, has_pbtxt = json_path.exists(), pbtxt_path.exists()
    if has_json and has_pbtxt:
        raise ContractError(f"both {CONFIG_FILE} and {PBTXT_FILE} are present; keep one")
    if has_json:
        return read_config(json_path, root=root), CONFIG_FILE
    if has_pbtxt:
        return read_pbtxt(pbtxt_path, root=root), PBTXT_FILE
    return None, GRAPH


def read_config(path: Path, root: Path | None = None) -> ModelConfig:
    """Parse ``config.json`` (a regular file inside ``root``, its own folder
    by default); raises ``ValueError`` (the contract's ContractError) with a
    one-line reason."""
    data = read_file(path, root=path.parent if root is None else root, max_bytes=MAX_JSON_BYTES)
    return ModelConfig.from_dict(parse_json(data, path.name))


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
            {
                k: v
                for k, v in tensor(*t).items()
                if k not in ("format", "allow_ragged_batch", "optional")  # inputs only
            }
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
