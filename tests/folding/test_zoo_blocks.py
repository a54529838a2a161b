"""The zoo's hand-written blocks, exported by torch's dynamo exporter, fold as the zoo reports.

Each network (``bench/zoo/blocks.py``) is exported with every BN kept and
beside its BN-deleted twin; folded, it has no more ops than the twin has
(fewer where the identity branch's Add goes, or where a moved Reshape no
longer needs its computed shape) and matches the unfolded export within
1e-5 relative error in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench.zoo.blocks import BLOCKS  # noqa: E402
from bench.zoo.run import calibrate, export, rel_error, run, twin  # noqa: E402
from bnfold.folding import fold  # noqa: E402

SIZE = 32


def exported(name: str):
    torch.manual_seed(0)
    model = BLOCKS[name]()
    calibrate(model, SIZE)
    return export(model, SIZE), export(twin(model), SIZE)


@pytest.mark.parametrize(
    ("name", "saved"),
    [("levit-mlp", 0), ("linear-3d", 0), ("repvgg", 3), ("repvgg-timm", 3), ("cnn-mean-head", 0)],
)
def test_block_costs_nothing_once_folded(name, saved):
    with_bn, deleted = exported(name)
    folded, report = fold(with_bn)
    assert report.residual_ops == 0 and report.bn_after == 0
    assert all(b.status == "folded" for b in report.bns)
    extra = len(folded.graph.node) - len(fold(deleted)[0].graph.node)
    assert extra <= -saved
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    assert rel_error(run(with_bn, x), run(folded, x)) <= 1e-5


def test_preact_resnet_says_why_its_bns_stay():
    with_bn, _ = exported("preact-resnet")
    _, report = fold(with_bn)
    assert report.residual_ops > 0
    reasons = [r for b in report.bns for r in b.reasons]
    assert any("is a residual stream" in r for r in reasons)
