"""Export a trained network to ONNX with every BatchNormalization kept.

torch's dynamo exporter runs onnxscript's optimizer by default, and that
optimizer fuses Conv+BN itself; ``optimize=False`` keeps the graph as traced,
so ``reference.onnx`` is the network as trained, BN for BN. The export is
checked: its BatchNormalization count must equal the network's BN modules.

A network the exporter cannot trace (data-dependent control flow, an op
without an ONNX translation: some of timm's models) is an input error
(exit 2, :class:`ExportFailed`): one line naming the network and the
exporter's step that failed, not torch's traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import torch
from torch import nn

from bnfold.converter.errors import InputError, ParityFailure
from bnfold.converter.models import ArchConfig, bn_modules

INPUT_NAME = "input"
MAX_REASON = 400  # characters of an export failure's reason: one line
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours its exporter's messages
_STEP = re.compile(r"This is step (\d+/\d+)")
OUTPUT_NAME = "logits"
OPSET = 20


class ExportError(ParityFailure, RuntimeError):
    """The exported graph is not the network it was exported from (exit 3, as parity)."""


class ExportFailed(InputError):
    """torch's exporter cannot export the network: a model that does not fit (exit 2)."""


def export_reference(model: nn.Module, arch: ArchConfig) -> onnx.ModelProto:
    """Trace ``model`` in eval mode to ONNX: dynamic batch, named input and output."""
    return export_module(model, torch.zeros(2, *arch.input_shape), label=arch.name)


def _export_failed(label: str, error: Exception) -> ExportFailed:
    """One line: the network, the exporter's step that failed and the first
    cause (torch's message opens with "Failed to ... This is step N/3 of
    exporting the model to ONNX", then pages of advice; the cause is the
    innermost exception it chains)."""
    text = _ANSI.sub("", str(error)).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    step = _STEP.search(first)
    root: BaseException = error
    while root.__cause__ is not None:
        root = root.__cause__
    cause = ""
    if root is not error:
        lines = _ANSI.sub("", str(root)).strip().splitlines()
        cause = f"{type(root).__name__}: {lines[0] if lines else ''}"
    if step is not None:
        what = first[: step.start()].strip().rstrip(".")
        reason = f"step {step.group(1)} failed: {what}" + (f": {cause}" if cause else "")
    else:
        reason = f"failed: {type(error).__name__}: {first}" + (f" ({cause})" if cause else "")
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON] + "..."
    return ExportFailed(f"cannot export {label} to ONNX: torch.onnx.export (dynamo) {reason}")


def export_module(
    model: nn.Module,
    example: torch.Tensor,
    *,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    strict_bn_count: bool = True,
    label: str | None = None,
) -> onnx.ModelProto:
    """Any ``nn.Module`` of one tensor input, traced in eval mode with every
    BN kept and a dynamic first (batch) axis; its BatchNormalization count
    is checked against the module's BN layers (``strict_bn_count``: an
    error; otherwise fewer is the caller's to warn about, as a module may
    hold BN layers its forward never calls). ``label`` names the network in
    an error (its class name by default)."""
    label = label or type(model).__name__
    model = model.eval()
    if example.dim() == 0:
        raise ExportError("the example input needs a batch axis")
    if example.shape[0] < 2:  # a batch of 1 lets the exporter specialise the axis
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_loggers():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                optimize=False,
                opset_version=OPSET,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        except Exception as e:  # the network's, not ours: what torch could not trace
            raise _export_failed(label, e) from e
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    proto.producer_name = "bnfold"
    onnx.checker.check_model(proto, full_check=True)
    expected, found = len(bn_modules(model)), count_batchnorm_nodes(proto)
    if expected != found and (strict_bn_count or found > expected):
        raise ExportError(
            f"export kept {found} BatchNormalization nodes but the network has {expected} "
            "BN modules; the exporter fused some away"
        )
    return proto


def count_batchnorm_nodes(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "BatchNormalization")


def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(x[i : i + batch_size])).numpy())
    return np.concatenate(outs)


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    names = ["torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx"]
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
