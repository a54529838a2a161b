"""A user's data that does not fit the network is refused, not silently resampled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnfold.converter.data import DataError, Dataset, fit_to, prepare


def images(n: int = 60) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.random((n, 3, 32, 32), dtype=np.float32) * 255  # raw pixel values
    return Dataset("npz", x, np.arange(n) % 3, ["a", "b", "c"], source="x.npz")


def test_wrong_shape_is_refused_naming_both_shapes() -> None:
    with pytest.raises(DataError, match=r"shape \(3, 32, 32\) but the network takes \(64,\)"):
        prepare(images(), (64,))


def test_resize_is_explicit_and_keeps_the_data_range() -> None:
    splits = prepare(images(), (1, 8, 8), resize=True)
    assert splits.x_train.shape[1:] == (1, 8, 8)
    assert splits.info["sample_shape"] == [3, 32, 32] and splits.info["resized"]
    raw = fit_to(images().x, (1, 8, 8), resize=True)
    assert raw.max() > 1.0  # 0..255 data is not clamped to [0, 1]


def test_reshape_that_keeps_every_value_needs_no_option() -> None:
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)
    assert np.array_equal(fit_to(x, (64,), resize=False), x.reshape(2, 64))


def test_convert_refuses_before_training(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=images().x, y=images().y)
    args = ["convert", "--arch", "mlp", "--data", f"npz:{tmp_path / 'x.npz'}", "--repo", "m"]
    r = subprocess.run(
        [sys.executable, "-m", "bnfold", *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "(3, 32, 32) but the network takes (64,)" in r.stderr and "--resize" in r.stderr
    assert not (tmp_path / "m").exists()
    ok = subprocess.run(
        [sys.executable, "-m", "bnfold", *args, "--resize", "--epochs", "1", "--name", "m"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    manifest = json.loads((tmp_path / "m" / "m" / "1" / "manifest.json").read_text())
    assert manifest["data"]["sample_shape"] == [3, 32, 32] and manifest["data"]["resized"]
