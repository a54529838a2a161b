"""BN running-statistics health: stale or never-updated statistics are flagged."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bnfold.converter.bn_health import bn_health  # noqa: E402


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 4),
    )


def data(shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(0).normal(shift, 1.0, (64, 3, 8, 8)).astype(np.float32)


def calibrated(x: np.ndarray) -> torch.nn.Module:
    """Running statistics set from ``x`` itself, as a converged training run would."""
    model = net()
    bn = model[1]
    bn.momentum = None  # cumulative average: after one pass, exactly x's statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    return model.eval()


def test_never_updated_statistics_are_flagged():
    report = bn_health(net(), data())
    assert report["n_bn"] == 1 and not report["healthy"]
    assert report["layers"][0]["never_updated"] is True
    assert any("never updated" in w for w in report["warnings"])


def test_statistics_of_the_data_are_healthy():
    x = data()
    report = bn_health(calibrated(x), x)
    layer = report["layers"][0]
    assert report["healthy"], report["warnings"]
    assert layer["mean_shift"] < 1e-6 and abs(layer["var_ratio_max"] - 1.0) < 0.05
    assert report["eval_vs_batch_stats"]["max_rel_error"] < 0.05


def test_stale_statistics_show_a_train_eval_gap():
    report = bn_health(calibrated(data()), data(shift=3.0))
    assert not report["healthy"]
    assert report["layers"][0]["mean_shift"] > 1.0
    assert any("train/eval gap" in w for w in report["warnings"])


def test_model_is_not_changed():
    model = calibrated(data())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_health(model, data(shift=1.0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_a_channel_dead_in_training_and_here_is_not_a_warning():
    import torch
    from torch import nn

    from bnfold.converter.bn_health import bn_health

    bn = nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 1e-9]))  # channel 2: dead after a ReLU
        bn.num_batches_tracked.fill_(100)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g) * torch.tensor([1.0, 2.0, 0.0]) + torch.tensor(
        [0.5, -1.0, 0.0]
    )
    report = bn_health(nn.Sequential(bn), x.numpy())
    layer = report["layers"][0]
    assert layer["dead_channels"] == 1
    assert 0.8 < layer["var_ratio_min"] <= layer["var_ratio_max"] < 1.2
    assert report["healthy"], report["warnings"]
