"""Loading one model version from disk: the blocking part of a load.

``open_version`` reads and verifies the files, creates the session and
warms it up; it runs in a thread of its own (service/load_thread.py). Its
session part, ``build_version``, runs first in a child process held to the
model memory limit when one is set (service/memory_budget.py). What it
opens serves as a ``ServedModel`` (service/model.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bnfold.contract import (
    CONFIG_FILE,
    DEFAULT_RTOL,
    MANIFEST_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    Manifest,
    ModelConfig,
    complete_config,
    parse_json,
)

from . import memory_budget, model_limits
from .errors import first_line
from .files import MAX_JSON_BYTES, embed_external_data, inside, present, read_file
from .fold_on_load import FoldOutcome, fold_on_load
from .images import preprocessing_problem
from .model_config import label_file, read_model_config
from .ort_settings import read_ort_settings
from .runtime import Runtime, RuntimeOptions, external_data_files, read_model
from .settings import Settings
from .signature import Signature, build_signature
from .warmup import warmup_samples


def runtime_options(settings: Settings) -> RuntimeOptions:
    return RuntimeOptions(
        device=settings.device,
        device_id=settings.device_id,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        spinning=settings.ort_spinning,
        max_model_bytes=settings.max_model_bytes,
        warmup_max_batch=settings.warmup_max_batch,
    )


@dataclass(frozen=True)
class OpenedVersion:
    """Everything loaded from disk for one version, before it serves."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    manifest: Manifest | None
    runtime: Runtime
    signature: Signature
    config_source: str = CONFIG_FILE
    notes: tuple[str, ...] = ()  # said in the index beside READY
    folding: FoldOutcome | None = None  # fold on load, when it ran
    reference: Runtime | None = None  # the original graph, when fold on load folded it
    labels_file: str | None = None  # the labels file /config names, when there is one
    original: bytes | None = None  # its bytes, for shadow parity (LoadOptions.keep_original)


def read_manifest(version_dir: Path, root: Path | None = None) -> Manifest:
    raw = read_file(
        version_dir / MANIFEST_FILE,
        root=version_dir if root is None else root,
        max_bytes=MAX_JSON_BYTES,
    )
    return Manifest.from_dict(parse_json(raw, MANIFEST_FILE))


def read_reference(
    version_dir: Path, manifest: Manifest, max_bytes: int, root: Path | None = None
) -> bytes:
    """reference.onnx, verified against the manifest."""
    sha = manifest.sha256(REFERENCE_FILE)
    return read_model(version_dir / REFERENCE_FILE, sha256=sha, max_bytes=max_bytes, root=root)


@dataclass(frozen=True)
class LoadOptions:
    """How a version loads, beyond ONNX Runtime's options."""

    runtime: RuntimeOptions
    warmup: bool = True
    fold_on_load: bool = False  # the server's default; the model's configuration may override
    fold_rtol: float = DEFAULT_RTOL
    default_max_batch_size: int = 64
    memory_limit: int = 0  # bytes a load may take (a trial load in a child process); 0: none
    keep_original: bool = False  # shadow parity compares a version folded on load with it


def device_options(options: RuntimeOptions, config: ModelConfig | None) -> RuntimeOptions:
    """The model's ``instance_group`` kind over the server's device."""
    kind = config.device_kind if config is not None else "KIND_AUTO"
    if kind == "KIND_CPU":
        return replace(options, device="cpu")
    if kind == "KIND_GPU":
        gpus = config.instance_group[0].gpus if config is not None else []
        return replace(options, device="cuda", device_id=gpus[0] if gpus else options.device_id)
    return options


def open_version(
    model_dir: Path,
    version: int,
    load: LoadOptions,
    *,
    configured: tuple[ModelConfig | None, str] | None = None,
    run_options: Any = None,
) -> OpenedVersion:
    """Load one version (blocking); raises ``ValueError``/``RuntimeError``
    whose message is the reason shown in the repository index.

    ``configured`` is the model's configuration and where it came from, as
    :func:`read_model_config` gives them (read here when not given; None:
    completed from the graph). Without a ``manifest.json`` the files are served unchecked and
    the notes say so. Nothing outside the repository (``model_dir``'s
    parent) is read: a model or version folder, or any file in them, that
    resolves outside is refused before it is opened (service/files.py).
    ``run_options`` (ONNX Runtime's ``RunOptions``) runs the warm-up: its
    ``terminate`` flag stops it from another thread."""
    root = model_dir.parent
    version_dir = model_dir / str(version)
    for folder in (model_dir, version_dir):
        if not inside(folder, root):
            raise ValueError(f"{folder.name}/ is a link out of the model repository; refused")
    config, config_source = configured or read_model_config(model_dir, root)
    options = device_options(load.runtime, config)
    if config is not None:  # Triton's ONNX Runtime settings (optimization, parameters)
        options = replace(options, ort=read_ort_settings(config, model_dir))
    notes: list[str] = []
    manifest: Manifest | None = None
    if present(version_dir / MANIFEST_FILE):
        manifest = read_manifest(version_dir, root)
    else:
        notes.append(f"no {MANIFEST_FILE}: files not checked against a sha256")
    data = read_model(
        version_dir / MODEL_FILE,
        sha256=manifest.sha256(MODEL_FILE) if manifest else None,
        max_bytes=options.max_model_bytes,
        root=root,
    )
    if manifest is not None and REFERENCE_FILE in manifest.files:
        read_reference(version_dir, manifest, options.max_model_bytes, root)  # refuse tampering
    external = external_data_files(data, version_dir, options.max_model_bytes)
    model_limits.check(data, options.max_model_bytes)  # sparse and folded constants too
    label = f"{model_dir.name}/{version}"
    # external data read through service/files.py: ONNX Runtime opens no file by name
    source = embed_external_data(data, version_dir, root) if external else data
    plan = BuildPlan(options, load, label, model_dir, config, config_source)
    if load.memory_limit:  # the same build first, in a child process held to the budget
        memory_budget.trial(source, plan, load.memory_limit, stop=run_options)
    built = build_version(source, plan, run_options)
    return OpenedVersion(
        model_dir.name,
        version,
        version_dir,
        built.config,
        manifest,
        built.runtime,
        built.signature,
        config_source=config_source,
        notes=(*notes, *built.notes),
        folding=built.folding,
        reference=built.reference,
        labels_file=label_file(model_dir) if built.config.labels else None,
        original=source if built.reference is not None and load.keep_original else None,
    )


@dataclass(frozen=True)
class BuildPlan:
    """Everything :func:`build_version` needs but the graph's bytes
    (picklable: the trial load hands it to its child process)."""

    options: RuntimeOptions
    load: LoadOptions
    label: str
    model_dir: Path
    config: ModelConfig | None
    config_source: str


@dataclass(frozen=True)
class BuiltVersion:
    """What :func:`build_version` makes of a graph's bytes."""

    runtime: Runtime
    config: ModelConfig
    signature: Signature
    notes: tuple[str, ...] = ()
    folding: FoldOutcome | None = None
    reference: Runtime | None = None


def build_version(source: bytes, plan: BuildPlan, run_options: Any = None) -> BuiltVersion:
    """The part of a load that costs memory: the session from the graph's
    bytes (checked and read by :func:`open_version`), the configuration
    completed from it, fold on load, the warm-up. Run as it is in the
    trial load's child process (service/memory_budget.py)."""
    options, load, label, config_source = plan.options, plan.load, plan.label, plan.config_source
    try:
        runtime = Runtime(source, options, label=label)
    except Exception as e:
        raise ValueError(f"ONNX Runtime cannot load {MODEL_FILE}: {first_line(e)}") from None
    config = complete_config(
        plan.config,
        plan.model_dir.name,
        runtime.inputs,
        runtime.outputs,
        default_max_batch_size=load.default_max_batch_size,
    )
    signature = build_signature(
        config, runtime.inputs, runtime.outputs, source=config_source, defaults=runtime.defaults
    )
    runtime.adopt(signature)  # Triton's reshape: wire shapes in and out
    if config.preprocessing is not None:  # refused here, not on every /classify request
        problem = preprocessing_problem(config.preprocessing, signature)
        if problem:
            raise ValueError(f"{config_source} {problem}")
    notes: list[str] = []
    folding: FoldOutcome | None = None
    reference: Runtime | None = None
    wants_fold = load.fold_on_load if config.fold_on_load is None else config.fold_on_load
    if wants_fold:
        folded, folding = fold_on_load(
            source,
            runtime,
            signature,
            options,
            label=label,
            rtol=load.fold_rtol,
        )
        if folded is not None:
            reference, runtime = runtime, folded
        notes.append(folding.note())
    # The model's own model_warmup always runs, as in Triton; zeros when asked.
    samples = warmup_samples(config, signature, plan.model_dir, max_bytes=options.max_model_bytes)
    if load.warmup or samples:
        try:
            runtime.warmup(signature, samples, run_options)
        except Exception as e:
            raise ValueError(f"warm-up failed: {first_line(e)}") from None
    return BuiltVersion(runtime, config, signature, tuple(notes), folding, reference)
