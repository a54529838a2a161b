from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bnfold.converter.data import load, prepare
from bnfold.converter.models import ArchConfig
from bnfold.converter.train import RunError, TrainConfig, load_run, save_run, train


@pytest.fixture(scope="module")
def digits_splits():
    return prepare(load("digits", input_shape=(64,)), (64,))


def test_same_seed_same_weights_other_seed_other_weights(digits_splits) -> None:
    arch = ArchConfig("mlp", (64,), 10)
    a = train(arch, digits_splits, TrainConfig(epochs=2, seed=7))
    b = train(arch, digits_splits, TrainConfig(epochs=2, seed=7))
    c = train(arch, digits_splits, TrainConfig(epochs=2, seed=8))
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.history == [{**r, "seconds": a.history[i]["seconds"]} for i, r in enumerate(b.history)]


def test_cnn_training_is_deterministic_too(digits_splits) -> None:
    splits = prepare(load("digits", input_shape=(1, 16, 16)), (1, 16, 16), limit=120)
    arch = ArchConfig("resnet", (1, 16, 16), 10)
    a = train(arch, splits, TrainConfig(epochs=1, seed=1))
    b = train(arch, splits, TrainConfig(epochs=1, seed=1))
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_mlp_learns_digits(digits_splits) -> None:
    r = train(ArchConfig("mlp", (64,), 10), digits_splits, TrainConfig())
    assert r.metrics["test_accuracy"] >= 0.95
    assert len(r.history) == TrainConfig().epochs
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


def test_run_folder_round_trip(tmp_path: Path, digits_splits) -> None:
    cfg = TrainConfig(epochs=2)
    r = train(ArchConfig("mlp", (64,), 10), digits_splits, cfg)
    save_run(tmp_path, r, cfg, digits_splits)
    assert (tmp_path / "checkpoint.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # no pickle
    run = json.loads((tmp_path / "run.json").read_text())
    assert (
        run["arch"]["name"] == "mlp"
        and run["metrics"]["test_accuracy"] == r.metrics["test_accuracy"]
    )
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 2
    loaded = load_run(tmp_path)
    x = torch.from_numpy(digits_splits.x_test)
    with torch.no_grad():
        assert np.array_equal(loaded.model(x).numpy(), r.model.eval()(x).numpy())


def test_load_run_errors(tmp_path: Path, digits_splits) -> None:
    with pytest.raises(RunError, match=r"run\.json is missing"):
        load_run(tmp_path)
    cfg = TrainConfig(epochs=1)
    r = train(ArchConfig("mlp", (64,), 10), digits_splits, cfg)
    save_run(tmp_path, r, cfg, digits_splits)
    run = json.loads((tmp_path / "run.json").read_text())
    run["arch"]["num_classes"] = 7
    (tmp_path / "run.json").write_text(json.dumps(run))
    with pytest.raises(RunError, match="does not match architecture mlp"):
        load_run(tmp_path)
