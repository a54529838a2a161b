"""A new version's ``manifest.json`` and ``config.json``, built here once for
``bnfold convert``, ``bnfold import`` and ``bnfold.convert_module``.

Each is the contract's type (:class:`~bnfold.contract.Manifest`,
:class:`~bnfold.contract.ModelConfig`), checked as it is made, and handed
typed to :func:`bnfold.converter.repository.write`, which fills in the
manifest's name, version and sha256 and returns what it wrote. The
signature (inputs, outputs, ``max_batch_size``) always comes from the
folded graph as ONNX Runtime reads it, as the service will. No torch.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import onnx
import onnxruntime

import bnfold
from bnfold.contract import (
    ONNX_DATATYPES,
    DynamicBatching,
    GraphTensor,
    Manifest,
    ModelConfig,
    ParityReport,
    Preprocessing,
    complete_config,
)
from bnfold.converter.verify import session
from bnfold.folding.report import FoldReport

# What bnfold convert writes for a network it trained: batches leave after
# 1 ms at most; bnfold import leaves dynamic_batching to the server.
CONVERT_BATCHING = DynamicBatching(enabled=True, max_queue_delay_ms=1.0, max_queue_size=1024)
# The exporter's warning when a graph holds fewer BNs than it should have.
FUSED_HINT = (
    "{found} BatchNormalization nodes found; torch's default optimizer may have fused "
    "others: export with optimize=False"
)


def graph_signature(model: onnx.ModelProto) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """(inputs, outputs) of ``model`` as ONNX Runtime reads them."""
    sess = session(model)
    return (
        [(a.name, a.type, list(a.shape)) for a in sess.get_inputs()],
        [(a.name, a.type, list(a.shape)) for a in sess.get_outputs()],
    )


def described(tensor: GraphTensor) -> dict[str, Any]:
    """An input or output as the manifest lists it: batch axis and every
    symbolic dimension as -1."""
    name, onnx_type, shape = tensor
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    return {"name": name, "datatype": ONNX_DATATYPES.get(onnx_type, onnx_type), "shape": dims}


def library_versions(*, with_torch: bool = False) -> dict[str, str]:
    versions = {"bnfold": bnfold.__version__}
    if with_torch:
        import torch

        versions["torch"] = torch.__version__
    return versions | {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def fused_warning(found: int, expected: int) -> str | None:
    """The warning for a graph with fewer BNs (``found``) than it should
    have (``expected``: the module's BN layers, or the graph's convolutions);
    None when nothing is missing or no BN is left at all (that case has its
    own explanation)."""
    if 0 < found < expected:
        return FUSED_HINT.format(found=found)
    return None


def count_convolutions(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose"))


def folding_record(report: FoldReport, *, bn_before: int, **extra: Any) -> dict[str, Any]:
    """The manifest's ``folding``: the BN counts, the one summary every tool
    shows (:class:`bnfold.folding.FoldSummary`), the full report, and
    ``extra`` (``bn_health``, ``input_normalization``) where given."""
    return {
        "folded": report.bn_after < bn_before,
        "bn_before": bn_before,
        "bn_after": report.bn_after,
        "summary": report.summary().to_dict(),
        "report": report.to_dict(),
        **{k: v for k, v in extra.items() if v is not None},
    }


def serving_config(
    name: str,
    folded: onnx.ModelProto,
    *,
    max_batch_size: int,
    labels: Sequence[str] = (),
    preprocessing: dict[str, Any] | None = None,
    dynamic_batching: DynamicBatching | None = None,
) -> ModelConfig:
    """config.json for ``folded``: its signature completed as the service
    completes a graph without configuration (``max_batch_size`` when every
    first axis is dynamic, else 0), with the serving settings given."""
    inputs, outputs = graph_signature(folded)
    config = complete_config(None, name, inputs, outputs, default_max_batch_size=max_batch_size)
    config.labels = list(labels)
    if preprocessing is not None:
        config.preprocessing = Preprocessing(**preprocessing)
    if config.max_batch_size > 0:
        config.dynamic_batching = dynamic_batching
    return config


def new_manifest(
    name: str,
    folded: onnx.ModelProto,
    *,
    fold: dict[str, Any],
    parity: ParityReport,
    parity_extra: dict[str, Any] | None = None,
    labels: Sequence[str] = (),
    preprocessing: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    arch: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    with_torch: bool = False,
) -> Manifest:
    """The manifest of a version of ``folded``: ``parity``'s verdict plus
    ``parity_extra`` (the comparisons, what the rows were). Name, version and
    files are the writer's to fill in (version 1 stands in until then)."""
    inputs, outputs = graph_signature(folded)
    return Manifest(
        name=name,
        version=1,
        files={},
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        source=source,
        arch=arch,
        data=data,
        training=training,
        metrics=metrics,
        labels=list(labels),
        preprocessing=Preprocessing(**preprocessing) if preprocessing else None,
        inputs=[described(t) for t in inputs],
        outputs=[described(t) for t in outputs],
        folding=fold,
        parity=parity.summary() | (parity_extra or {}),
        versions=library_versions(with_torch=with_torch),
    )
