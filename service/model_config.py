"""``<model>/config.json`` as the service reads it (docs/repository.md).

The same file is rendered back in Triton's model configuration format for
``GET /v2/models/{m}/config``, which perf_analyzer reads before it sends
load (``max_batch_size``, ``input``/``output`` with ``dims`` excluding the
batch dimension, ``dynamic_batching``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format

from bnfold.contract import CONFIG_FILE, ContractError, ModelConfig, VersionPolicy, parse_json

from .files import MAX_JSON_BYTES, present, read_file, regular_size
from .proto import model_config_pb2 as pb
from .protocol import TRITON_DATATYPES
from .triton_config import PBTXT_FILE, read_pbtxt

GRAPH = "the graph"  # where the configuration comes from when no file exists
LABELS_FILE = "labels.txt"  # what Triton calls a model's label_filename


def read_model_config(model_dir: Path, root: Path) -> tuple[ModelConfig | None, str]:
    """The model folder's configuration and the file it came from: bnfold's
    ``config.json``, Triton's ``config.pbtxt``, or (None, 'the graph') when
    there is none and the graph completes it. Both files at once is refused."""
    json_path, pbtxt_path = model_dir / CONFIG_FILE, model_dir / PBTXT_FILE
    has_json, has_pbtxt = present(json_path), present(pbtxt_path)  # a link is refused
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


def label_file(model_dir: Path) -> str | None:
    """The labels file a Triton client may read in the model folder: the one
    ``config.pbtxt`` names, else ``labels.txt``, when it is a regular file
    inside the folder; None when there is none (labels given in
    ``config.json`` only serve through the classification extension)."""
    names = [LABELS_FILE]
    if present(model_dir / PBTXT_FILE):
        try:
            raw = read_file(model_dir / PBTXT_FILE, root=model_dir, max_bytes=MAX_JSON_BYTES)
            message = text_format.Parse(raw.decode("utf-8"), pb.ModelConfig())
            names = [t.label_filename for t in message.output if t.label_filename] + names
        except (OSError, ValueError, text_format.ParseError):
            pass  # refused when the model loads; here, only the file next to it counts
    for name in names:
        try:
            regular_size(model_dir / name, root=model_dir)
        except (OSError, ValueError):
            continue
        return name
    return None


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
    labels: str | None = None,
    queue_timeout_ms: float | None = None,
    timeout_override: bool = False,
    preferred: list[int] | None = None,
    preserve_ordering: bool = False,
) -> dict[str, Any]:
    """Triton's model configuration (JSON form) for the served version;
    ``name`` is the model's folder name, which Triton and clients go by.

    ``inputs``/``outputs`` are ``(name, datatype, dims)`` with the batch
    dimension already removed.

    What Triton's clients read is filled from the configuration: an input's
    ``format`` (its own, else the preprocessing layout of an image model:
    ``FORMAT_NCHW``), ``label_filename`` on the classification output when
    the model has labels and the folder a file of them, ``labels`` (from
    :func:`label_file`: a name never points at a file that is not there; the
    labels themselves serve through the classification extension), and the
    ``instance_group`` kind the version
    actually runs on (``KIND_GPU`` or ``KIND_CPU``). An input's or output's
    ``reshape`` and an input's ``optional`` are the configuration's, and so
    are ``optimization`` and ``model_warmup`` when it sets them.
    """
    formats = {t.name: t.format for t in config.input if t.format}
    configured = {t.name: t for t in [*config.input, *config.output]}
    prep = config.preprocessing
    if prep is not None and prep.layout == "NCHW" and len(inputs) == 1:
        formats.setdefault(inputs[0][0], "FORMAT_NCHW")
    labelled = _labelled_output(config, outputs)

    def tensor(name: str, datatype: str, dims: list[int]) -> dict[str, Any]:
        cfg = configured.get(name)
        out: dict[str, Any] = {
            "name": name,
            "data_type": TRITON_DATATYPES[datatype],
            "format": formats.get(name, "FORMAT_NONE"),
            "dims": dims,
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": bool(cfg is not None and cfg.optional),
        }
        if cfg is not None and cfg.reshape is not None:
            out["reshape"] = {"shape": list(cfg.reshape)}
        return out

    out: dict[str, Any] = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": _policy(config.policy),
        "max_batch_size": config.max_batch_size,
        "input": [tensor(*t) for t in inputs],
        "output": [
            {
                k: v
                for k, v in tensor(*t).items()
                if k not in ("format", "allow_ragged_batch", "optional")  # inputs only
            }
            | {"label_filename": labels if labels and t[0] == labelled else ""}
            for t in outputs
        ],
        "batch_input": [],
        "batch_output": [],
        "instance_group": [
            {
                "name": f"{name}_0",
                "kind": "KIND_GPU" if gpu is not None else "KIND_CPU",
                "count": config.instance_group[0].count if config.instance_group else 1,
                "gpus": [gpu] if gpu is not None else [],
            }
        ],
        "default_model_filename": "model.onnx",
        "parameters": {k: {"string_value": v} for k, v in config.parameters.items()},
    }
    if config.optimization:
        out["optimization"] = config.optimization
    if config.model_warmup:
        out["model_warmup"] = config.model_warmup
    if batching:
        out["dynamic_batching"] = {
            "preferred_batch_size": preferred or [],
            "max_queue_delay_microseconds": round(max_queue_delay_ms * 1000),
            "preserve_ordering": preserve_ordering,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round((queue_timeout_ms or 0) * 1000),
                "allow_timeout_override": timeout_override if queue_timeout_ms else True,
                "max_queue_size": max_queue_size,
            },
        }
    return out


def _labelled_output(config: ModelConfig, outputs: list[tuple[str, str, list[int]]]) -> str | None:
    """The output the labels name classes of: the one whose last dimension
    is the number of labels, else the first."""
    if not config.labels or not outputs:
        return None
    for name, _, dims in outputs:
        if dims and dims[-1] == len(config.labels):
            return name
    return outputs[0][0]


def _policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.all is not None:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": list(policy.specific.versions)}}
    return {"latest": {"num_versions": policy.latest.num_versions if policy.latest else 1}}
