"""Each loader on a small file written here in its real format, good and bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnfold.converter.data import (
    DataError,
    fit_to,
    load,
    load_cifar10,
    load_fer2013,
    load_npz,
    prepare,
)


def write_cifar_batch(path: Path, labels: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
    records.tofile(path)
    return pixels


def write_fer_csv(path: Path, rows: list[tuple[int, list[int], str]]) -> None:
    lines = ["emotion,pixels,Usage"]
    lines += [f"{e},{' '.join(map(str, px))},{u}" for e, px, u in rows]
    path.write_text("\n".join(lines) + "\n")


def test_digits_is_embedded_and_raw() -> None:
    d = load("digits", input_shape=(64,))
    assert d.x.shape == (1797, 1, 8, 8)
    assert d.x.dtype == np.float32
    # ink counts as scikit-learn stores them, not scaled
    assert d.x.min() == 0.0 and d.x.max() == 16.0 and np.array_equal(d.x, np.round(d.x))
    assert d.input_range == (0.0, 16.0) and d.pixel_scale == 16.0
    assert sorted(set(d.y.tolist())) == list(range(10))


def test_synthetic_is_seeded() -> None:
    a = load("synthetic", input_shape=(1, 8, 8), num_classes=3, seed=5)
    b = load("synthetic", input_shape=(1, 8, 8), num_classes=3, seed=5)
    c = load("synthetic", input_shape=(1, 8, 8), num_classes=3, seed=6)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert a.x.shape == (2000, 1, 8, 8) and set(a.y.tolist()) == {0, 1, 2}


def test_npz_nhwc_uint8_is_transposed_and_kept_raw(tmp_path: Path) -> None:
    x = np.zeros((6, 5, 5, 3), dtype=np.uint8)
    x[..., 0] = 255
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]))
    d = load(f"npz:{tmp_path / 'd.npz'}", input_shape=(3, 5, 5))
    assert d.x.shape == (6, 3, 5, 5)
    assert d.x[:, 0].min() == 255.0 and d.x[:, 1:].max() == 0.0
    assert d.input_range == (0.0, 255.0) and d.pixel_scale == 255.0
    assert d.labels == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 3))}, r"lacks array\(s\) \['y'\]"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4)}, "integer class labels"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(5, dtype=int)}, "4 samples but y has 5"),
        ({"x": np.zeros((4, 3)), "y": np.zeros((4, 1), dtype=int)}, "must be 1-D"),
        ({"x": np.array(["a"] * 4), "y": np.arange(4)}, "must be numeric"),
        ({"x": np.full((4, 3), np.nan), "y": np.arange(4)}, "NaN"),
        ({"x": np.zeros((4, 3)), "y": np.array([0, -1, 1, 0])}, "negative class label"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4, dtype=int)}, "at least 2 classes"),
        ({"x": np.zeros(4), "y": np.arange(4)}, "x must be"),
    ],
)
def test_npz_bad_input_names_the_problem(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_npz_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_npz(tmp_path / "junk.npz")


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    pixels = write_cifar_batch(tmp_path / "data_batch_1.bin", [0, 1, 2, 3])
    write_cifar_batch(tmp_path / "test_batch.bin", [9, 8], seed=1)
    d = load(f"cifar10:{tmp_path}", input_shape=(3, 32, 32))
    assert d.x.shape == (6, 3, 32, 32)
    assert d.y.tolist() == [0, 1, 2, 3, 9, 8]
    # Record layout: 1024 red, 1024 green, 1024 blue, row-major.
    assert d.x[0, 1, 0, 0] == pixels[0, 1024]
    assert d.split is not None and d.split.tolist() == [-1, -1, -1, -1, 2, 2]
    assert d.labels[0] == "airplane"


def test_cifar10_bad_input(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        load_cifar10(tmp_path)
    write_cifar_batch(tmp_path / "data_batch_1.bin", [0, 12])
    with pytest.raises(DataError, match="label byte 12 out of range"):
        load_cifar10(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data_batch"):
        load_cifar10(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file or folder"):
        load_cifar10(tmp_path / "nope")


def test_fer2013_csv_uses_its_usage_column(tmp_path: Path) -> None:
    px = list(range(0, 2304 * 1))
    px = [v % 256 for v in px]
    write_fer_csv(
        tmp_path / "fer.csv", [(3, px, "Training"), (6, px, "PublicTest"), (0, px, "PrivateTest")]
    )
    d = load(f"fer2013:{tmp_path / 'fer.csv'}", input_shape=(1, 48, 48))
    assert d.x.shape == (3, 1, 48, 48)
    assert d.y.tolist() == [3, 6, 0]
    assert d.split is not None and d.split.tolist() == [0, 1, 2]
    assert d.x[0, 0, 0, 5] == 5
    assert d.labels[3] == "happy"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("7," + " ".join(["0"] * 2304) + ",Training", "emotion 7 out of range"),
        ("1," + " ".join(["0"] * 100) + ",Training", "100 pixels, expected 2304"),
        ("1," + " ".join(["300"] * 2304) + ",Training", "0..255"),
        ("x," + " ".join(["0"] * 2304) + ",Training", "not numeric"),
        ("1," + " ".join(["0"] * 2304) + ",Validation", "unknown Usage"),
    ],
)
def test_fer2013_bad_rows_name_the_line(tmp_path: Path, row: str, message: str) -> None:
    (tmp_path / "fer.csv").write_text("emotion,pixels,Usage\n" + row + "\n")
    with pytest.raises(DataError, match=f"line 2: .*{message}"):
        load_fer2013(tmp_path / "fer.csv")


def test_fer2013_bad_header(tmp_path: Path) -> None:
    (tmp_path / "fer.csv").write_text("label,image\n1,0 0\n")
    with pytest.raises(DataError, match="emotion,pixels"):
        load_fer2013(tmp_path / "fer.csv")


def test_unknown_spec_and_missing_path() -> None:
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        load("mnist", input_shape=(64,))
    with pytest.raises(DataError, match="needs a path"):
        load("npz:", input_shape=(64,))


def test_fit_to_resizes_and_maps_channels() -> None:
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    assert fit_to(x, (64,)).shape == (5, 64)
    assert np.array_equal(fit_to(x, (64,)), x.reshape(5, 64))
    big = fit_to(x, (3, 32, 32))
    assert big.shape == (5, 3, 32, 32)
    assert np.array_equal(big[:, 0], big[:, 2])
    assert big.min() >= 0 and big.max() <= 1
    with pytest.raises(DataError, match="not a square"):
        fit_to(x, (50,))
    with pytest.raises(DataError, match="cannot map 2 channels"):
        fit_to(np.zeros((2, 2, 4, 4), np.float32), (3, 4, 4))


def test_split_is_deterministic_stratified_and_normalised_on_train_only() -> None:
    d = load("digits", input_shape=(64,))
    a = prepare(d, (64,), seed=3)
    b = prepare(d, (64,), seed=3)
    c = prepare(d, (64,), seed=4)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    # Every class in every split; test ~20% of each class.
    for ys in (a.y_train, a.y_val, a.y_test):
        assert set(ys.tolist()) == set(range(10))
    assert abs(len(a.y_test) / 1797 - 0.2) < 0.01
    # Training split standardised exactly; the others with the same statistics.
    assert abs(float(a.x_train.mean())) < 1e-5
    assert abs(float(a.x_train.std()) - 1) < 1e-4
    # Undoing the train statistics on the test split gives digits' raw k/16 values back.
    mean, std = a.preprocessing["mean"][0], a.preprocessing["std"][0]
    assert a.preprocessing["layout"] == "NC"
    raw = a.x_test.astype(np.float64) * std + mean
    assert np.abs(raw * 16 - np.round(raw * 16)).max() < 1e-4
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5
    assert a.info["n_test"] == len(a.y_test)


def test_limit_keeps_every_class() -> None:
    d = load("digits", input_shape=(64,))
    s = prepare(d, (64,), limit=100)
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 100
    assert set(s.y_train.tolist()) == set(range(10))


def test_preset_test_split_is_respected(tmp_path: Path) -> None:
    write_cifar_batch(tmp_path / "data_batch_1.bin", [i % 2 for i in range(40)])
    write_cifar_batch(tmp_path / "test_batch.bin", [0, 1, 0, 1], seed=2)
    s = prepare(load(f"cifar10:{tmp_path}", input_shape=(3, 32, 32)), (3, 32, 32))
    assert len(s.y_test) == 4
    assert s.preprocessing["layout"] == "NCHW" and len(s.preprocessing["mean"]) == 3
