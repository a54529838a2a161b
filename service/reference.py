"""A version's stored ``reference.onnx``, opened for ``POST .../parity``
under the same checks and limits as a version's load (service/model.py's
``open_version``), because its bytes are repository bytes like any other:

- read from inside the repository only, up to the model-size limit, and
  against the manifest's sha256 (``read_reference``);
- its external data checked against the declared shapes and read in from
  inside the version's folder (``external_data_files``,
  ``embed_external_data``): ONNX Runtime opens no file by name;
- the tensors ONNX Runtime would make dense or compute at load counted
  against the model-size limit (service/model_limits.py);
- with a model memory limit (``BNFOLD_MODEL_MEMORY_LIMIT``), built first in
  a child process held to it (service/memory_budget.py);
- then a session on the serving device that must take the served
  signature's inputs and give its outputs.

A refusal is :class:`~.errors.LoadFailed` (400, as a refused load is), its
message the reason; the server serves on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnfold.contract import REFERENCE_FILE

from . import memory_budget, model_limits
from .errors import LoadFailed, NotFound, first_line
from .files import embed_external_data
from .runtime import Runtime, external_data_files

if TYPE_CHECKING:
    from .model import ServedModel
    from .settings import Settings


def open_reference(served: ServedModel, settings: Settings) -> Runtime:
    """``served``'s reference.onnx on its device (blocking: run in a thread)."""
    manifest = served.manifest
    if manifest is None or REFERENCE_FILE not in manifest.files:
        raise NotFound(
            f"no {REFERENCE_FILE} is stored for model {served.name!r} version "
            f"{served.version}: nothing to compare with (bnfold import or "
            "--fold-on-load gives it one)"
        )
    try:
        return _open(served, settings)
    except LoadFailed:
        raise
    except (ValueError, RuntimeError, OSError) as e:  # what a load's refusals raise
        raise LoadFailed(
            f"{REFERENCE_FILE} of model {served.name!r} version {served.version} refused: "
            f"{first_line(e)}"
        ) from None


def _open(served: ServedModel, settings: Settings) -> Runtime:
    from .loading import BuildPlan, LoadOptions, device_options, read_reference, runtime_options

    assert served.manifest is not None
    version_dir = served.path
    root = version_dir.parents[1]
    options = device_options(runtime_options(settings), served.config)
    limit = options.max_model_bytes
    data = read_reference(version_dir, served.manifest, limit, root)
    external = external_data_files(data, version_dir, limit)
    model_limits.check(data, limit)  # sparse and computed constants too
    source = embed_external_data(data, version_dir, root) if external else data
    label = f"{served.name}/{served.version}/reference"
    if settings.model_memory_limit:  # built first where it cannot take more
        load = LoadOptions(
            runtime=options,
            warmup=settings.warmup,
            fold_on_load=False,
            default_max_batch_size=settings.default_max_batch_size,
            memory_limit=settings.model_memory_limit,
        )
        plan = BuildPlan(
            options, load, label, version_dir.parent, served.config, served.config_source
        )
        memory_budget.trial(source, plan, settings.model_memory_limit)
    try:
        reference = Runtime(source, options, label=label)
    except Exception as e:
        raise ValueError(f"ONNX Runtime cannot load it: {first_line(e)}") from None
    _check_signature(reference, served)
    reference.adopt(served.signature)  # fed the same wire shapes as the served graph
    return reference


def _check_signature(reference: Runtime, served: ServedModel) -> None:
    """The reference takes every input the served graph is fed and gives
    every output it answers (else running it fails on the request's path)."""
    inputs = {name for name, _, _ in reference.inputs} | {n for n, _, _ in reference.defaults}
    outputs = {name for name, _, _ in reference.outputs}
    missing_in = [s.name for s in served.signature.inputs if s.name not in inputs]
    missing_out = [n for n in served.signature.output_names() if n not in outputs]
    if missing_in or missing_out:
        reference.close()
        what = [f"input {n!r}" for n in missing_in] + [f"output {n!r}" for n in missing_out]
        raise ValueError(f"it has no {', '.join(what)} of the served model")
