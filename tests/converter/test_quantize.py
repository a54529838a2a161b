"""Fold, then quantize (issue 22): int8 and fp16 versions behind their gate,
written as versions the service serves, refused (exit 3) when they fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from trained_models import Converted, ConvertOnce

from bnfold.contract import ContractError, Manifest
from bnfold.converter.errors import EXIT_OK, EXIT_PARITY
from bnfold.converter.importer import ImportOptions, import_onnx
from bnfold.converter.quantize import (
    DEFAULT_THRESHOLDS,
    FP16_FLOAT32_OPS,
    MIN_CALIBRATION_ROWS,
    Float16Overflow,
    QuantizeOptions,
    converter_data,
    quantize_version,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_harness import TOKEN, base_settings, run_server  # noqa: E402

# The digits MLP the image tests share (full data: 359 test rows, so that 99%
# agreement allows 3 rows to change and 1 accuracy point is 3.6 rows).
MLP = {"epochs": 3}
CNN = {"epochs": 2, "limit": 600}  # the session's CNNs (test_pipeline, the service tests)


def bnfold_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )


def ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def manifest_of(version_dir: Path) -> dict:
    return json.loads((version_dir / "manifest.json").read_text())


def copy_of(model: Converted, tmp_path: Path, name: str) -> Path:
    repo = tmp_path / "models"
    model.write(repo, name, version=1)
    return repo


def check_int8_version(version_dir: Path, source: dict) -> dict:
    m = manifest_of(version_dir)
    q = m["quantization"]
    gate = q["gate"]
    assert m["precision"] == "int8" == q["precision"]
    assert gate["passed"] and gate["failures"] == []
    assert gate["thresholds"] == {"min_agreement": 0.99, "max_accuracy_drop": 1.0,
                                  "max_rel_error": 0.1}  # fmt: skip
    assert gate["top1_agreement"] >= 0.99 and gate["max_rel_error"] <= 0.1
    assert gate["accuracy_drop_points"] <= 1.0
    assert gate["accuracy_float32"] == pytest.approx(source["metrics"]["test_accuracy"], abs=1e-9)
    assert gate["n_samples"] == source["data"]["n_test"]
    assert {"float32_vs_as_written:logits", "float32_vs_as_served:logits"} <= set(
        gate["comparisons"]
    )
    assert q["calibration"]["method"] == "minmax"
    assert MIN_CALIBRATION_ROWS <= q["calibration"]["rows"] <= 512
    assert q["calibration"]["rows"] <= source["data"]["n_train"]
    assert m["parity"]["passed"] and m["parity"]["against"] == "the float32 folded graph"
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(version_dir / "model.onnx")
    assert "BatchNormalization" not in ops(version_dir / "model.onnx")
    assert q["bytes"]["int8"] < q["bytes"]["float32"]
    return m


def test_int8_digits_mlp_is_written_gated_and_served(
    converted: ConvertOnce, tmp_path: Path
) -> None:
    source = converted("mlp", **MLP)
    repo = copy_of(source, tmp_path, "digits")
    said: list[str] = []
    result = quantize_version(repo, "digits", QuantizeOptions("int8"), log=said.append)
    assert result.version_dir == repo / "digits" / "2"
    m = check_int8_version(result.version_dir, source.manifest)
    assert m["quantization"]["source"]["version"] == 1
    assert m["quantization"]["source"]["parity"] == source.manifest["parity"]
    # reference.onnx stays the network with its BNs; the config is the model's
    v1, v2 = repo / "digits" / "1", result.version_dir
    assert (v1 / "reference.onnx").read_bytes() == (v2 / "reference.onnx").read_bytes()
    assert any("int8 gate passed" in line for line in said)

    # served like any version: the service loads it and answers as ONNX Runtime does
    heldout, _ = converter_data(source.manifest, onnx.load(str(v1 / "model.onnx")))
    x = heldout.feeds["input"][:64]
    sess = ort.InferenceSession(str(v2 / "model.onnx"), providers=["CPUExecutionProvider"])
    (want,) = sess.run(["logits"], {"input": x})
    with run_server(base_settings(repo)) as server, httpx.Client(base_url=server.url) as http:
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}  # fmt: skip
        r = http.post("/v2/models/digits/versions/2/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(want.shape)
        stored = http.get("/v2/models/digits/versions/2/parity", timeout=60).json()
        measured = http.post(
            "/v2/models/digits/versions/2/parity",
            json={"inputs": body["inputs"]},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        ).json()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.mean(got.argmax(1) == heldout.labels[:64]) >= 0.9
    assert stored["precision"] == "int8"
    assert (
        stored["quantization"]["gate"]["top1_agreement"]
        == m["quantization"]["gate"]["top1_agreement"]
    )
    assert stored["parity"]["rtol"] == 0.1
    # recomputed on the serving device against reference.onnx, at the gate's thresholds
    assert measured["passed"], measured
    assert measured["outputs"]["logits"]["rtol"] == 0.1
    assert measured["outputs"]["logits"]["min_top1"] == 0.99


def test_a_quantized_version_is_not_quantized_again(converted: ConvertOnce, tmp_path: Path) -> None:
    repo = copy_of(converted("mlp", **MLP), tmp_path, "d")
    quantize_version(repo, "d", QuantizeOptions("fp16"))
    with pytest.raises(ValueError, match=r"d/2 is fp16; quantize a float32 version"):
        quantize_version(repo, "d", QuantizeOptions("int8"))
    assert (
        quantize_version(repo, "d", QuantizeOptions("int8"), source_version=1).version_dir.name
        == "3"
    )


def test_a_failed_gate_exits_3_names_the_layer_and_writes_nothing(
    converted: ConvertOnce, tmp_path: Path
) -> None:
    repo = copy_of(converted("mlp", **MLP), tmp_path, "d")
    r = bnfold_cli(
        "quantize", "d", "--repo", str(repo), "--max-rel-error", "1e-6", "--min-agreement", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == EXIT_PARITY, r.stderr
    assert "int8 gate failed" in r.stderr and "max rel error" in r.stderr
    assert "first diverging layer 'node_linear" in r.stderr
    assert "nothing was written" in r.stderr and "Traceback" not in r.stderr
    assert not (repo / "d" / "2").exists()
    assert not [p for p in (repo / "d").iterdir() if p.name.startswith(".tmp")]


def test_import_int8_calibrates_on_half_of_the_data_and_holds_out_the_rest(
    converted: ConvertOnce, tmp_path: Path
) -> None:
    from sklearn.datasets import load_digits

    reference = converted("mlp", **MLP).version_dir / "reference.onnx"
    digits = load_digits()  # ink counts 0..16, as the MLP's reference.onnx takes them
    x, y = digits.images.reshape(-1, 64)[:600].astype(np.float32), digits.target[:600]
    np.savez(tmp_path / "rows.npz", x=x, y=y)
    result = import_onnx(
        ImportOptions(
            reference, tmp_path / "models", "imp", data=f"npz:{tmp_path / 'rows.npz'}",
            quantize=QuantizeOptions("int8", "percentile"),
        )
    )  # fmt: skip
    m = manifest_of(result.version_dir)
    q = m["quantization"]
    assert m["precision"] == "int8" and q["calibration"]["method"] == "percentile"
    # 300 rows calibrate in whole batches of 32; the other 300 are held out
    assert q["calibration"]["rows"] == 288 and q["gate"]["n_samples"] == 300
    assert q["gate"]["passed"] and q["gate"]["accuracy"] is not None
    # its 2 BNs and the input normalisation in front of them, folded
    assert m["folding"]["bn_before"] == 3 and m["folding"]["bn_after"] == 0
    assert m["source"]["file"] == "reference.onnx"
    too_few = tmp_path / "few.npz"
    np.savez(too_few, x=x[:100])
    with pytest.raises(ValueError, match="int8 needs at least 128"):
        import_onnx(
            ImportOptions(reference, tmp_path / "models", "imp", data=f"npz:{too_few}",
                          quantize=QuantizeOptions("int8"))
        )  # fmt: skip


def tiny_bn_graph(var_channel_1: float, eps: float) -> onnx.ModelProto:
    """Conv -> BN -> ReLU -> global pool -> Gemm; BN channel 1's running
    variance is ``var_channel_1`` and its epsilon ``eps``."""
    rng = np.random.default_rng(0)
    inits = {
        "W": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "B": np.zeros(4, np.float32),
        "gamma": np.ones(4, np.float32),
        "beta": np.zeros(4, np.float32),
        "mean": np.zeros(4, np.float32),
        "var": np.array([1.0, var_channel_1, 1.0, 1.0], np.float32),
        "Wfc": rng.standard_normal((3, 4)).astype(np.float32),
        "Bfc": np.zeros(3, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv1"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"],
                         name="bn1", epsilon=eps),
        helper.make_node("Relu", ["b"], ["r"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "Wfc", "Bfc"], ["y"], name="fc", transB=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime reads
    return model


def test_fp16_is_refused_naming_the_layer_a_near_zero_variance_bn_overflows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_bn_graph(var_channel_1=1e-14, eps=1e-14), str(path))
    with pytest.raises(Float16Overflow, match=r"layer 'conv1' has .* beyond float16") as e:
        import_onnx(ImportOptions(path, tmp_path / "models", "t",
                                  quantize=QuantizeOptions("fp16")))  # fmt: skip
    assert "BN 'bn1' folded into it" in str(e.value)
    assert not (tmp_path / "models" / "t" / "1").exists()
    r = bnfold_cli("import", str(path), "--repo", "models", "--precision", "fp16", cwd=tmp_path)
    assert r.returncode == EXIT_PARITY and "layer 'conv1'" in r.stderr
    # the same graph with a healthy variance converts, keeps float32 at its edges
    onnx.save(tiny_bn_graph(var_channel_1=0.5, eps=1e-5), str(path))
    r = bnfold_cli("import", str(path), "--repo", "models", "--name", "ok", "--precision",
                   "fp16", cwd=tmp_path)  # fmt: skip
    assert r.returncode == EXIT_OK, r.stderr
    version = tmp_path / "models" / "ok" / "1"
    m = manifest_of(version)
    assert m["precision"] == "fp16" and m["quantization"]["gate"]["passed"]
    assert m["quantization"]["gate"]["thresholds"]["max_rel_error"] == 1e-2
    model = onnx.load(str(version / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves and not [t for t in model.graph.initializer if t.name == "W"]


def test_a_bare_triton_model_is_folded_then_converted(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / "t" / "1").mkdir(parents=True)
    original = tiny_bn_graph(var_channel_1=0.5, eps=1e-5)
    onnx.save(original, str(repo / "t" / "1" / "model.onnx"))  # no manifest, no config
    result = quantize_version(repo, "t", QuantizeOptions("fp16"))
    m = manifest_of(result.version_dir)
    assert m["precision"] == "fp16" and m["folding"]["bn_before"] == 1
    assert m["folding"]["bn_after"] == 0 and m["quantization"]["gate"]["n_samples"] == 64
    assert (result.version_dir / "reference.onnx").read_bytes() == original.SerializeToString()
    config = json.loads((repo / "t" / "config.json").read_text())
    assert config["max_batch_size"] == 64 and config["input"][0]["datatype"] == "FP32"
    with pytest.raises(ValueError, match="give --data npz:PATH"):
        quantize_version(repo, "t", QuantizeOptions("int8"), source_version=1)


@pytest.mark.parametrize(
    "arch",
    ["mlp", pytest.param("cifar-cnn", marks=pytest.mark.slow),
     pytest.param("fer-cnn", marks=pytest.mark.slow),
     pytest.param("resnet", marks=pytest.mark.slow)],
)  # fmt: skip
def test_fp16_passes_its_gate_on_every_converter_architecture(
    converted: ConvertOnce, tmp_path: Path, arch: str
) -> None:
    options = {"mlp": MLP, "resnet": {"epochs": 3, "limit": 600}}.get(arch, CNN)
    source = converted(arch, **options)
    repo = copy_of(source, tmp_path, arch)
    result = quantize_version(repo, arch, QuantizeOptions("fp16"))
    gate = result.record["gate"]
    assert gate["passed"] and gate["max_rel_error"] <= 1e-2
    assert gate["top1_agreement"] >= 0.999 and gate["accuracy_drop_points"] <= 0.1
    assert result.record["bytes"]["fp16"] < 0.7 * result.record["bytes"]["float32"]
    assert manifest_of(result.version_dir)["precision"] == "fp16"


@pytest.mark.slow
def test_int8_on_a_small_cnn(converted: ConvertOnce, tmp_path: Path) -> None:
    source = converted("cifar-cnn", **CNN)
    repo = copy_of(source, tmp_path, "cnn")
    result = quantize_version(repo, "cnn", QuantizeOptions("int8", "entropy"))
    m = manifest_of(result.version_dir)
    assert m["quantization"]["calibration"]["method"] == "entropy"
    assert m["quantization"]["gate"]["passed"]
    assert m["quantization"]["bytes"]["int8"] < 0.35 * m["quantization"]["bytes"]["float32"]
    with run_server(base_settings(repo)) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/v2/models/cnn/versions/2/ready", timeout=60).status_code == 200


@pytest.mark.slow
def test_convert_precision_int8_gates_against_pytorch_too(tmp_path: Path) -> None:
    r = bnfold_cli(
        "convert", "--arch", "mlp", "--epochs", "3", "--repo", "models", "--name", "q",
        "--precision", "int8",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == EXIT_OK, r.stderr
    m = manifest_of(tmp_path / "models" / "q" / "1")
    gate = m["quantization"]["gate"]
    assert m["precision"] == "int8" and gate["passed"]
    assert gate["comparisons"]["torch_vs_as_served:logits"]["top1_agreement"] >= 0.99
    assert "training split" in m["quantization"]["calibration"]["data"]
    assert abs(gate["accuracy"] - m["metrics"]["test_accuracy"]) <= 0.01


def test_manifest_precision_fields_are_optional_and_checked() -> None:
    sha = {"sha256": "0" * 64, "bytes": 1}
    old = {"name": "m", "version": 1, "files": {"model.onnx": sha}}
    assert Manifest.from_dict(old).precision is None  # manifests from before load as they are
    assert "precision" not in Manifest.from_dict(old).to_dict()
    new = Manifest.from_dict({**old, "precision": "int8", "quantization": {"gate": {}}})
    assert new.precision == "int8" and new.to_dict()["quantization"] == {"gate": {}}
    with pytest.raises(ContractError, match="precision: must be one of"):
        Manifest.from_dict({**old, "precision": "int4"})


def test_options_and_help(tmp_path: Path) -> None:
    assert DEFAULT_THRESHOLDS["fp16"].max_rel_error == 1e-2
    assert QuantizeOptions("int8", max_rel_error=0.5).thresholds.max_rel_error == 0.5
    assert QuantizeOptions("int8").thresholds.min_agreement == 0.99
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    assert set(DEFAULT_OP_BLOCK_LIST) <= set(FP16_FLOAT32_OPS)
    with pytest.raises(ValueError, match="--calibration 'kl'"):
        QuantizeOptions("int8", "kl")
    r = bnfold_cli("quantize", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for option in (
        "--precision",
        "--calibration",
        "--data",
        "--min-agreement",
        "--max-accuracy-drop",
        "--max-rel-error",
        "--reduce-range",
        "--from-version",
    ):
        assert option in r.stdout, option  # fmt: skip
    assert "int8 0.99, fp16 0.999" in r.stdout
    assert "quantize" in bnfold_cli("--help", cwd=tmp_path).stdout
    for command in ("convert", "import"):
        out = bnfold_cli(command, "--help", cwd=tmp_path).stdout
        assert "--precision" in out and "fp32|int8|fp16" in out
    bad = bnfold_cli("quantize", "m", "--precision", "int4", cwd=tmp_path)
    assert bad.returncode == 2
