"""The converter's own architectures, exported by torch's dynamo exporter, fold exactly."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bnfold.converter.export import export_reference  # noqa: E402
from bnfold.converter.models import DEFAULT_INPUT_SHAPES, ArchConfig, bn_modules, build_model  # noqa: E402
from bnfold.converter.verify import random_inputs, verify_onnx  # noqa: E402
from bnfold.folding import fold  # noqa: E402


def exported(arch: str, positive: bool, seed: int = 0):
    """``arch`` with random BN statistics (gamma mixed-sign unless ``positive``), exported."""
    torch.manual_seed(seed)
    config = ArchConfig(arch, DEFAULT_INPUT_SHAPES[arch], 7)
    model = build_model(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in bn_modules(model):
            bn = model.get_submodule(name)
            n = bn.num_features
            sign = (
                torch.ones(n)
                if positive
                else torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
            )
            bn.weight.copy_(sign * (0.5 + torch.rand(n, generator=gen)))
            bn.bias.copy_(torch.randn(n, generator=gen))
            bn.running_mean.copy_(0.5 * torch.randn(n, generator=gen))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
    return export_reference(model, config)


def bn_nodes(model) -> int:
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node)


@pytest.mark.parametrize("arch", ["mlp", "cifar-cnn", "resnet"])
def test_architecture_folds_to_zero_bn(arch):
    reference = exported(arch, positive=False)
    folded, report = fold(reference)
    assert bn_nodes(reference) == report.bn_before > 0
    assert bn_nodes(folded) == 0 and report.bn_after == 0 and report.residual_ops == 0
    assert all(b.status == "folded" for b in report.bns)
    parity = verify_onnx(reference, folded, random_inputs(reference, 16, seed=3), n_random=0)
    assert parity["passed"] and parity["max_rel_error"] <= 1e-5


def test_fer_cnn_positive_gamma_folds_completely():
    reference = exported("fer-cnn", positive=True)
    folded, report = fold(reference)
    assert report.bn_before == 3 and report.bn_after == 0 and report.residual_ops == 0
    assert len(folded.graph.node) == len(reference.graph.node) - 3
    assert verify_onnx(reference, folded, n_random=16)["passed"]


def test_fer_cnn_mixed_gamma_leaves_one_mul_and_says_why():
    reference = exported("fer-cnn", positive=False)
    folded, report = fold(reference)
    assert report.bn_after == 0 and report.residual_ops == 1
    statuses = [b.status for b in report.bns]
    assert statuses == ["partial", "folded", "folded"]
    first = report.bns[0]
    assert first.residual and first.residual[0].startswith("Mul ")
    assert any("MaxPool" in r and "sign flip" in r for r in first.reasons)
    ops = [n.op_type for n in folded.graph.node]
    assert ops.count("Mul") == 1 and len(ops) == len(reference.graph.node) - 2
    parity = verify_onnx(reference, folded, n_random=16, per_node=True)
    assert parity["passed"] and parity["first_divergence"] is None
    assert np.isfinite(parity["max_rel_error"])
