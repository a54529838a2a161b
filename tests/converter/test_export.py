"""reference.onnx keeps every BN and computes what PyTorch eval computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bnfold.contract import compare
from bnfold.converter.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    count_batchnorm_nodes,
    export_reference,
    torch_logits,
)
from bnfold.converter.models import DEFAULT_INPUT_SHAPES, ArchConfig, bn_modules, build_model


def randomise_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics and mixed-sign gamma, as after real training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


@pytest.mark.parametrize("arch", sorted(DEFAULT_INPUT_SHAPES))
def test_export_keeps_every_bn_and_matches_torch(arch: str) -> None:
    shape = DEFAULT_INPUT_SHAPES[arch]
    torch.manual_seed(0)
    model = build_model(ArchConfig(arch, shape, 10)).eval()
    randomise_bn(model, seed=1)
    proto = export_reference(model, ArchConfig(arch, shape, 10))

    assert count_batchnorm_nodes(proto) == len(bn_modules(model)) > 0
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert proto.opset_import[0].version >= 18

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # the batch axis is dynamic
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        got = sess.run(None, {INPUT_NAME: x})[0]
        p = compare(torch_logits(model, x), got, rtol=1e-5)
        assert got.shape == (batch, 10)
        assert p.max_rel_error <= 1e-5, p


def test_no_bn_twin_exports_with_zero_bn() -> None:
    arch = ArchConfig("mlp", (64,), 10, bn=False)
    proto = export_reference(build_model(arch).eval(), arch)
    assert count_batchnorm_nodes(proto) == 0
    onnx.checker.check_model(proto)
