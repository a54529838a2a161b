"""Export a trained network to ONNX with every BatchNormalization kept.

torch's dynamo exporter runs onnxscript's optimizer by default, and that
optimizer fuses Conv+BN itself; ``optimize=False`` keeps the graph as traced,
so ``reference.onnx`` is the network as trained, BN for BN. The export is
checked: its BatchNormalization count must equal the network's BN modules.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import torch
from torch import nn

from bnfold.converter.errors import ParityFailure
from bnfold.converter.models import ArchConfig, bn_modules

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 20


class ExportError(ParityFailure, RuntimeError):
    """The exported graph is not the network it was exported from (exit 3, as parity)."""


def export_reference(model: nn.Module, arch: ArchConfig) -> onnx.ModelProto:
    """Trace ``model`` in eval mode to ONNX: dynamic batch, named input and output."""
    return export_module(model, torch.zeros(2, *arch.input_shape))


def export_module(
    model: nn.Module,
    example: torch.Tensor,
    *,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    strict_bn_count: bool = True,
) -> onnx.ModelProto:
    """Any ``nn.Module`` of one tensor input, traced in eval mode with every
    BN kept and a dynamic first (batch) axis; its BatchNormalization count
    is checked against the module's BN layers (``strict_bn_count``: an
    error; otherwise fewer is the caller's to warn about, as a module may
    hold BN layers its forward never calls)."""
    model = model.eval()
    if example.dim() == 0:
        raise ExportError("the example input needs a batch axis")
    if example.shape[0] < 2:  # a batch of 1 lets the exporter specialise the axis
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_loggers():
        warnings.simplefilter("ignore")
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
