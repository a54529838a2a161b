"""Triton's ``config.pbtxt``, read as Triton reads it, into the contract's ModelConfig.

The text is parsed by protobuf's text format against Triton's own schema
(``proto/model_config.proto``, vendored), so a field Triton does not know is
an error with its line and column, as it is in Triton. The fields bnfold
acts on are carried over: ``name``, ``platform``/``backend``,
``max_batch_size``, ``input``/``output`` (``data_type``, ``dims``,
``format``, ``reshape``, ``optional``, ``label_filename``),
``dynamic_batching`` (its queue delay, size and timeout), ``version_policy``,
``instance_group`` (kind, gpus), ``parameters`` (the ONNX Runtime
backend's keys, service/ort_settings.py; ``fold_on_load: "true"`` is
bnfold's per-model switch), ``optimization`` (graph level, CUDA graphs,
execution accelerators) and ``model_warmup`` (service/warmup.py), the last
two in their JSON form. Ensembles and sequence batching are refused
(bnfold serves stateless single models). Every other field that is set is
accepted, has no effect, and is named in the log when the file is read
(:func:`unhonoured`; the list is in docs/repository.md), never dropped
silently.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.message import Message

from bnfold.contract import PBTXT_FILE, ContractError, ModelConfig

from .files import MAX_JSON_BYTES, read_file
from .proto import model_config_pb2 as pb

ONNX_BACKEND = "onnxruntime"
ONNX_PLATFORM = "onnxruntime_onnx"
REFUSED = {
    "ensemble_scheduling": "ensembles are not served (bnfold serves single models)",
    "sequence_batching": "sequence batching is not supported (bnfold serves stateless models)",
}
TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}

log = logging.getLogger("bnfold.service")

# Fields of model_config.proto that bnfold acts on; a field below one of
# these paths is covered by it. Everything else set in a file is named.
HONOURED = frozenset(
    {
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "version_policy",
        "parameters",
        "model_warmup",
        "input.name",
        "input.data_type",
        "input.format",
        "input.dims",
        "input.reshape",
        "input.optional",
        "output.name",
        "output.data_type",
        "output.dims",
        "output.reshape",
        "output.label_filename",
        "dynamic_batching.max_queue_delay_microseconds",
        "dynamic_batching.preferred_batch_size",
        "dynamic_batching.preserve_ordering",
        "dynamic_batching.default_queue_policy.max_queue_size",
        "dynamic_batching.default_queue_policy.timeout_action",
        "dynamic_batching.default_queue_policy.default_timeout_microseconds",
        "dynamic_batching.default_queue_policy.allow_timeout_override",
        "instance_group.name",
        "instance_group.kind",
        "instance_group.gpus",
        "optimization.graph",
        "optimization.cuda.graphs",
        "optimization.execution_accelerators",
    }
)


def datatype(data_type: int) -> str:
    """``TYPE_FP32`` -> ``FP32``; Triton's ``TYPE_STRING`` is the protocol's BYTES."""
    return datatype_of(pb.DataType.Name(data_type))


def datatype_of(name: str) -> str:
    """The protocol datatype of Triton's data type name (``TYPE_FP32`` -> ``FP32``)."""
    return "BYTES" if name == "TYPE_STRING" else str(name).removeprefix("TYPE_")


def unhonoured(message: Message, prefix: str = "") -> list[str]:
    """The fields set in ``message`` that bnfold does not act on, as dotted
    paths (``input.allow_ragged_batch``), each once, in file order."""
    out: list[str] = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if path in HONOURED or any(path.startswith(h + ".") for h in HONOURED):
            continue
        nested = field.message_type is not None and not field.message_type.GetOptions().map_entry
        if nested and any(h.startswith(path + ".") for h in HONOURED):
            items = value if field.label == field.LABEL_REPEATED else [value]
            for item in items:
                out.extend(p for p in unhonoured(item, path + ".") if p not in out)
        elif path not in out:
            out.append(path)
    return out


def read_pbtxt(path: Path, *, root: Path) -> ModelConfig:
    """Parse ``<model>/config.pbtxt``; ContractError with a one-line reason."""
    raw = read_file(path, root=root, max_bytes=MAX_JSON_BYTES)
    try:
        message = text_format.Parse(raw.decode("utf-8"), pb.ModelConfig())
    except UnicodeDecodeError:
        raise ContractError(f"{PBTXT_FILE} is not UTF-8 text") from None
    except text_format.ParseError as e:
        raise ContractError(f"{PBTXT_FILE}: {e}") from None
    return from_proto(message, model_dir=path.parent, root=root)


def from_proto(message: pb.ModelConfig, *, model_dir: Path, root: Path) -> ModelConfig:
    folder = model_dir.name
    for name, why in REFUSED.items():
        if message.HasField(name):
            raise ContractError(f"{PBTXT_FILE}: {why}")
    if message.name and message.name != folder:
        raise ContractError(
            f"{PBTXT_FILE}: name {message.name!r} does not match the model folder {folder!r}"
        )
    if message.platform not in ("", ONNX_PLATFORM) or message.backend not in ("", ONNX_BACKEND):
        given = message.platform or message.backend
        raise ContractError(
            f"{PBTXT_FILE}: {given!r} models are not served; bnfold serves ONNX models "
            f"(platform {ONNX_PLATFORM!r} or backend {ONNX_BACKEND!r})"
        )
    config: dict[str, Any] = {
        "name": folder,
        "max_batch_size": message.max_batch_size,
        "input": [_tensor(t, with_format=True) for t in message.input],
        "output": [_tensor(t, with_format=False) for t in message.output],
        "parameters": {k: v.string_value for k, v in message.parameters.items()},
    }
    if message.HasField("optimization"):
        config["optimization"] = _json(message.optimization)
    if message.model_warmup:
        config["model_warmup"] = [_json(w) for w in message.model_warmup]
    ignored = unhonoured(message)
    if ignored:  # read when the model loads: said on every load
        log.warning(
            "model %s: %s fields not honoured by bnfold (accepted, no effect): %s",
            folder,
            PBTXT_FILE,
            ", ".join(ignored),
        )
    labels = [t.label_filename for t in message.output if t.label_filename]
    if labels:
        config["labels"] = _labels(model_dir / labels[0], root)
    if message.HasField("dynamic_batching"):
        config["dynamic_batching"] = _batching(message.dynamic_batching)
    if message.HasField("version_policy"):
        config["version_policy"] = _policy(message.version_policy)
    if message.instance_group:
        config["instance_group"] = [
            {
                "kind": pb.ModelInstanceGroup.Kind.Name(g.kind),
                "count": max(g.count, 1),
                "gpus": list(g.gpus),
            }
            for g in message.instance_group
        ]
    fold = config["parameters"].get("fold_on_load")
    if fold is not None:
        if fold.lower() not in TRUE | FALSE:
            raise ContractError(f"{PBTXT_FILE}: parameter fold_on_load must be true or false")
        config["fold_on_load"] = fold.lower() in TRUE
    if any(g["kind"] == "KIND_MODEL" for g in config.get("instance_group", [])):
        raise ContractError(f"{PBTXT_FILE}: instance_group kind KIND_MODEL is not supported")
    try:
        return ModelConfig.from_dict(config)
    except ContractError as e:
        raise ContractError(str(e).replace("config.json", PBTXT_FILE, 1)) from None


def _tensor(t: pb.ModelInput | pb.ModelOutput, *, with_format: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "datatype": datatype(t.data_type), "shape": list(t.dims)}
    if with_format and isinstance(t, pb.ModelInput) and t.format != pb.ModelInput.FORMAT_NONE:
        out["format"] = pb.ModelInput.Format.Name(t.format)
    if t.HasField("reshape"):
        out["reshape"] = list(t.reshape.shape)
    if isinstance(t, pb.ModelInput) and t.optional:
        out["optional"] = True
    return out


def _json(message: Message) -> Any:
    """Triton's JSON form of a configuration message (as its backends see it)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _batching(d: pb.ModelDynamicBatching) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": True}
    if d.max_queue_delay_microseconds:
        out["max_queue_delay_ms"] = d.max_queue_delay_microseconds / 1000
    if d.preferred_batch_size:
        out["preferred_batch_size"] = sorted(set(d.preferred_batch_size))
        out.setdefault("max_queue_delay_ms", 0.0)  # Triton's default: no wait
    if d.max_queue_delay_microseconds or d.preferred_batch_size:
        # The file asks for Triton's batching: a batch waits out the delay
        # unless it reaches a preferred size (or the largest batch).
        out["eager"] = False
    if d.preserve_ordering:
        out["preserve_ordering"] = True
    policy = d.default_queue_policy
    if d.HasField("default_queue_policy") and policy.max_queue_size:
        out["max_queue_size"] = policy.max_queue_size
    # DELAY moves an expired request behind the others: bnfold's queue is
    # first in, first out with one priority, so it is served as it comes.
    if policy.timeout_action == pb.ModelQueuePolicy.REJECT and policy.default_timeout_microseconds:
        out["queue_timeout_ms"] = policy.default_timeout_microseconds / 1000
        out["allow_timeout_override"] = policy.allow_timeout_override
    return out


def _policy(p: pb.ModelVersionPolicy) -> dict[str, Any]:
    choice = p.WhichOneof("policy_choice")
    if choice == "latest":
        return {"latest": {"num_versions": p.latest.num_versions}}
    if choice == "specific":
        return {"specific": {"versions": list(p.specific.versions)}}
    return {"all": {}}


def _labels(path: Path, root: Path) -> list[str]:
    try:
        text = read_file(path, root=root, max_bytes=MAX_JSON_BYTES).decode("utf-8")
    except (OSError, ValueError) as e:
        raise ContractError(f"{PBTXT_FILE}: label_filename {path.name!r}: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
