"""Models take the data as the user has it: the input normalisation is the first
affine map of reference.onnx, folded into the first layer like a BN.

Digits go in as scikit-learn stores them (ink counts 0..16), 8-bit images as
0..255; parity is PyTorch eval on the standardised data against both graphs
on the raw data.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bnfold import folding
from bnfold.converter.data import load, prepare, split_indices
from bnfold.converter.errors import EXIT_INPUT
from bnfold.converter.export import export_reference
from bnfold.converter.importer import ImportOptions, import_onnx
from bnfold.converter.input_map import (
    NormalizeError,
    fold_outcome,
    normalize_array,
    parse_normalize,
    parse_range,
    prepend_normalization,
)
from bnfold.converter.models import ArchConfig, bn_modules, build_model
from bnfold.converter.pipeline import ConvertOptions, convert

ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "BatchNormalization"}


def ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def run(path: Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    data = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


LIMIT = 256  # the session's quick digits MLP (tests/trained_models.py), shared with others


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory, converted: Any) -> Path:
    repo = tmp_path_factory.mktemp("raw")
    converted("mlp", epochs=1, limit=LIMIT).write(repo, "d")
    return repo / "d"


def test_digits_model_takes_ink_counts_and_the_map_costs_nothing(digits_mlp: Path) -> None:
    manifest = json.loads((digits_mlp / "1/manifest.json").read_text())
    config = json.loads((digits_mlp / "config.json").read_text())
    prep = config["preprocessing"]
    assert prep == manifest["preprocessing"]
    assert prep["normalized"] is False and prep["input_range"] == [0.0, 16.0]
    assert prep["pixel_scale"] == 16.0 and prep["layout"] == "NC"
    assert (prep["background"], prep["fit"]) == ("dark", "crop-center")
    assert "0..16" in prep["input_meaning"]

    reference = onnx.load(digits_mlp / "1/reference.onnx")
    first = reference.graph.node[:2]
    assert [(n.op_type, n.name) for n in first] == [
        ("Mul", "input_normalization_scale"),
        ("Add", "input_normalization_shift"),
    ]
    consts = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    mean, std = prep["mean"][0], prep["std"][0]
    np.testing.assert_allclose(consts["input_normalization.scale"], 1 / (16 * std), rtol=1e-6)
    np.testing.assert_allclose(consts["input_normalization.shift"], -mean / std, rtol=1e-6)
    assert consts["input_normalization.scale"].shape == (64,)  # per feature: read as a BN

    folded = onnx.load(digits_mlp / "1/model.onnx")
    assert not ELEMENTWISE & set(ops(folded)), ops(folded)  # the map is in the first Gemm
    assert ops(folded) == collections.Counter({"Gemm": 3, "Relu": 2})
    outcome = manifest["folding"]["input_normalization"]
    assert outcome["status"] == "folded" and outcome["residual"] == []
    assert outcome["folded_into"] == [folded.graph.node[0].name]
    assert manifest["folding"]["bn_before"] == 2 and manifest["folding"]["bn_after"] == 0

    parity = manifest["parity"]
    assert parity["passed"] and parity["inputs"] == "raw"
    assert parity["max_rel_error"] <= 1e-5 and parity["top1_agreement"] == 1.0
    assert parity["n_samples"] == manifest["data"]["n_test"] + 64
    for key in ("torch_vs_reference", "reference_vs_folded", "torch_vs_folded"):
        assert parity["comparisons"][key]["passed"], key

    # The test split as scikit-learn stores it, no arithmetic on this side.
    data = load("digits", input_shape=(64,))
    test = split_indices(data, seed=0, limit=LIMIT)["test"]
    counts = data.x[test].reshape(len(test), 64)
    assert counts.max() == 16.0
    accuracy = float(np.mean(run(digits_mlp / "1/model.onnx", counts).argmax(1) == data.y[test]))
    # what PyTorch measured on the standardised test split, to the last digit
    assert accuracy == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-9)


def test_split_indices_are_the_split_prepare_uses() -> None:
    data = load("digits", input_shape=(64,))
    splits = prepare(data, (64,), seed=2, limit=300)
    test = split_indices(data, seed=2, limit=300)["test"]
    assert splits.test_indices is not None and np.array_equal(splits.test_indices, test)
    assert splits.raw_test is not None
    assert np.array_equal(splits.raw_test, data.x[test].reshape(len(test), 64))
    assert np.array_equal(splits.y_test, data.y[test])
    assert splits.preprocessing["input_range"] == [0.0, 16.0]


def test_normalized_input_writes_the_network_as_trained(tmp_path: Path) -> None:
    res = convert(
        ConvertOptions(
            arch="mlp", data="digits", repo=tmp_path, limit=150, epochs=1, normalized_input=True
        )
    )
    reference = onnx.load(res.version_dir / "reference.onnx")
    assert not any(n.name.startswith("input_normalization") for n in reference.graph.node)
    m = res.manifest
    assert m["preprocessing"]["normalized"] is True and m["parity"]["inputs"] == "normalized"
    assert "input_normalization" not in m["folding"] and m["parity"]["passed"]


def trained_like(arch: str, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ArchConfig(arch, shape, 10))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in bn_modules(model):
            bn = model.get_submodule(name)
            n = bn.num_features
            bn.weight.copy_(0.5 + torch.rand(n, generator=g))
            bn.bias.copy_(0.3 * torch.randn(n, generator=g))
            bn.running_mean.copy_(0.3 * torch.randn(n, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "shape", "first_op", "status", "extra_ops"),
    [
        # valid padding, one channel: a BatchNormalization, folded whole into the first Conv
        ("fer-cnn", (1, 48, 48), "BatchNormalization", "folded", {}),
        # the first Conv pads with zeros: its weights take the scale, one Add stays
        ("cifar-cnn", (3, 32, 32), "Mul", "partial", {"Add": 1}),
    ],
)
def test_the_map_folds_into_the_first_conv_where_exact(
    arch: str, shape: tuple[int, ...], first_op: str, status: str, extra_ops: dict[str, int]
) -> None:
    model = trained_like(arch, shape)
    network = export_reference(model, ArchConfig(arch, shape, 10))
    c = shape[0]
    mean, std = [0.5, 0.4, 0.3][:c], [0.25, 0.2, 0.3][:c]
    reference = prepend_normalization(network, pixel_scale=255.0, mean=mean, std=std)
    assert reference.graph.node[0].op_type == first_op
    assert folding.count_bn(reference) == folding.count_bn(network) + 1
    folded, report = folding.fold(reference)
    extra = ops(folded) - ops(folding.fold(network)[0])
    assert extra == collections.Counter(extra_ops)
    outcome = fold_outcome(report.to_dict())
    assert outcome is not None and outcome["status"] == status
    assert outcome["folded_into"] == [n.name for n in folded.graph.node if n.op_type == "Conv"][:1]
    if status == "partial":
        assert len(outcome["residual"]) == 1 and outcome["residual"][0].startswith("Add ")
        reasons = outcome["reasons"]
        assert any("pads with zeros" in r and "cannot enter its bias" in r for r in reasons)
    raw = np.random.default_rng(0).integers(0, 256, (6, *shape)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(normalize_array(raw, 255.0, mean, std, axis=1))).numpy()
    for graph in (reference, folded):
        got = run(graph, raw)
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5
        assert np.array_equal(got.argmax(1), want.argmax(1))


# --------------------------------------------------------------------------- bnfold import


def conv_model(layout: str) -> onnx.ModelProto:
    """Conv (no padding) -> BN -> Relu -> GlobalAveragePool -> Gemm, 3 channels, 8x8;
    NHWC reads the image channels-last and transposes first, as tf2onnx writes it."""
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "gamma": (0.5 + rng.random(4)).astype(np.float32),
        "beta": rng.standard_normal(4).astype(np.float32),
        "mean": rng.standard_normal(4).astype(np.float32),
        "var": (0.5 + rng.random(4)).astype(np.float32),
        "fc_w": rng.standard_normal((4, 5)).astype(np.float32),
        "fc_b": rng.standard_normal(5).astype(np.float32),
    }
    nodes = []
    image = "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], "to_nchw", perm=[0, 3, 1, 2]))
        image = "x_nchw"
    nodes += [
        helper.make_node("Conv", [image, "w", "b"], ["c"], "conv"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], "bn"),
        helper.make_node("Relu", ["n"], ["r"], "relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], "gap"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], "fc"),
    ]
    dims = ["N", 3, 8, 8] if layout == "NCHW" else ["N", 8, 8, 3]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_import_normalize_prepends_and_folds(tmp_path: Path, layout: str) -> None:
    original = conv_model(layout)
    onnx.save(original, tmp_path / "net.onnx")
    opts = ImportOptions(
        model=tmp_path / "net.onnx", repo=tmp_path / "models", name="net", normalize=IMAGENET
    )
    result = import_onnx(opts)
    assert (result.bn_before, result.bn_after) == (1, 0) and result.parity.passed
    folded = onnx.load(result.version_dir / "model.onnx")
    assert not ELEMENTWISE & set(ops(folded)), ops(folded)  # map and BN both in the Conv
    manifest = json.loads((result.version_dir / "manifest.json").read_text())
    assert manifest["folding"]["input_normalization"]["status"] == "folded"
    assert manifest["folding"]["input_normalization"]["folded_into"] == ["conv"]
    check = manifest["parity"]["comparisons"]["original_vs_reference"]["y"]
    assert check["passed"] and check["max_rel_error"] <= 1e-5
    prep = json.loads((tmp_path / "models/net/config.json").read_text())["preprocessing"]
    shape = [3, 8, 8] if layout == "NCHW" else [8, 8, 3]
    assert prep["layout"] == layout and prep["input_shape"] == shape
    assert prep["color"] == "rgb" and prep["normalized"] is False
    assert prep["input_range"] == [0.0, 255.0] and prep["mean"] == list(IMAGENET[0])
    # 8-bit pixels in, the original's answer on the normalised pixels out
    raw = np.random.default_rng(1).integers(0, 256, (4, *shape)).astype(np.float32)
    axis = 1 if layout == "NCHW" else 3
    want = run(original, normalize_array(raw, 255.0, *IMAGENET, axis=axis))
    got = run(result.version_dir / "model.onnx", raw)
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


def test_import_normalize_from_the_command_line(tmp_path: Path) -> None:
    onnx.save(conv_model("NHWC"), tmp_path / "keras.onnx")
    args = [sys.executable, "-m", "bnfold", "import", "keras.onnx", "--repo", "models"]
    r = subprocess.run(
        [*args, "--normalize", "0.485,0.456,0.406/0.229,0.224,0.225"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "input normalisation folded into conv" in r.stderr
    assert r.stdout.strip().endswith("models/keras/1")
    r = subprocess.run(
        [*args, "--normalize", "0.5"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == EXIT_INPUT and "expected MEAN/STD" in r.stderr
    assert not (tmp_path / "models/keras/2").exists()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.5/0.25", ([0.5], [0.25])),
        ("0.485,0.456,0.406/0.229,0.224,0.225", (list(IMAGENET[0]), list(IMAGENET[1]))),
        ("0.5/1,2,4", ([0.5, 0.5, 0.5], [1.0, 2.0, 4.0])),
        (" 1e-1 / 2 ", ([0.1], [2.0])),
    ],
)
def test_parse_normalize(text: str, parsed: tuple[list[float], list[float]]) -> None:
    assert parse_normalize(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5,0.25", "expected MEAN/STD"),
        ("0.5/0.2/0.1", "expected MEAN/STD"),
        ("a/b", "expected MEAN/STD"),
        ("0.1,0.2/0.1,0.2,0.3", "2 means but 3 standard deviations"),
        ("0.5/0", "must be positive"),
    ],
)
def test_parse_normalize_refuses(text: str, message: str) -> None:
    with pytest.raises(NormalizeError, match=message):
        parse_normalize(text)


def test_parse_range_and_a_map_that_does_not_fit() -> None:
    assert parse_range("0,16") == (0.0, 16.0)
    with pytest.raises(NormalizeError, match="LOW must be below HIGH"):
        parse_range("255,0")
    with pytest.raises(NormalizeError, match="2 channels of mean/std but input 'x' has 3"):
        prepend_normalization(conv_model("NCHW"), pixel_scale=1, mean=[0, 0], std=[1, 1])
