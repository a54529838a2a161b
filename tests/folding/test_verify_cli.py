"""verify_onnx and the fold/verify commands (run in-process through the bnfold CLI)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import pytest
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

from bnfold.cli import app as bnfold_app
from bnfold.converter.verify import ModelRunError, random_inputs, verify_onnx
from bnfold.folding import fold

NET = """
g (float[N, 3, 10, 10] input) => (float[N, 5] logits) {
    c = Conv (input, w1, b1)
    r = Relu (c)
    y = BatchNormalization (r, gamma, beta, mean, var)
    p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (y)
    c2 = Conv (p, w2, b2)
    f = Flatten (c2)
    logits = Gemm <transB = 1> (f, w3, b3)
}"""
SHAPES = {
    "w1": [4, 3, 3, 3],
    "b1": [4],
    "w2": [2, 4, 3, 3],
    "b2": [2],
    "w3": [5, 8],
    "b3": [5],
    **{k: [4] for k in ("gamma", "beta", "mean", "var")},
}


@pytest.fixture
def models(build):
    reference = build(NET, **SHAPES)
    folded, report = fold(reference)
    return reference, folded, report


def broken(folded: onnx.ModelProto) -> onnx.ModelProto:
    """The folded model with the second Conv's weights negated for one output channel."""
    bad = onnx.ModelProto.FromString(folded.SerializeToString())
    conv2 = [n for n in bad.graph.node if n.op_type == "Conv"][1]
    for i, t in enumerate(bad.graph.initializer):
        if t.name == conv2.input[1]:
            w = numpy_helper.to_array(t).copy()
            w[0] *= -1
            bad.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, t.name))
    return bad


def test_verify_passes_on_a_folded_model(models):
    reference, folded, _ = models
    heldout = random_inputs(reference, 8, seed=5)
    result = verify_onnx(reference, folded, heldout, n_random=8, seed=1, per_node=True)
    assert result["passed"] and result["n_samples"] == 16
    assert result["max_rel_error"] < 1e-5 and result["top1_agreement"] == 1.0
    assert set(result["sets"]) == {"heldout", "random"}
    assert result["first_divergence"] is None
    assert {e["tensor"] for e in result["per_node"]} >= {"c", "r", "c2", "f", "logits"}
    json.dumps(result)


def test_verify_names_the_first_diverging_layer(models):
    reference, folded, _ = models
    result = verify_onnx(reference, broken(folded), n_random=8, per_node=True)
    assert not result["passed"]
    first = result["first_divergence"]
    assert first["tensor"] == "c2" and first["node"] == "Conv_4"
    assert next(e for e in result["per_node"] if e["tensor"] == "r")["passed"]


def test_random_inputs_follow_the_signature(models):
    reference, _, _ = models
    feeds = random_inputs(reference, 3, seed=0)
    assert feeds["input"].shape == (3, 3, 10, 10) and feeds["input"].dtype == np.float32


def app() -> typer.Typer:
    return bnfold_app


def test_cli_fold_then_verify(models, tmp_path):
    reference, _, _ = models
    ref_path, out_path, rep_path = tmp_path / "ref.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(reference, ref_path)
    runner = CliRunner()
    result = runner.invoke(app(), ["fold", str(ref_path), str(out_path), "--report", str(rep_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(rep_path.read_text())
    assert report["bn_before"] == 1 and report["bn_after"] == 0
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(out_path).graph.node) == 0
    np.savez(tmp_path / "x.npz", x=random_inputs(reference, 4)["input"])
    args = ["verify", str(ref_path), str(out_path), "--data", f"npz:{tmp_path / 'x.npz'}"]
    result = runner.invoke(app(), [*args, "--per-node", "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p.json").read_text())["n_samples"] == 4 + 16


def test_cli_verify_fails_on_a_broken_model(models, tmp_path):
    reference, folded, _ = models
    onnx.save(reference, tmp_path / "ref.onnx")
    onnx.save(broken(folded), tmp_path / "bad.onnx")
    result = CliRunner().invoke(
        app(), ["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "bad.onnx"), "--per-node"]
    )
    assert result.exit_code == 3  # a parity failure
    assert "FAIL" in result.output and "'c2'" in result.output
    assert "parity failed" in result.output


def test_cli_reports_missing_and_corrupt_files(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app(), ["fold", str(tmp_path / "nope.onnx"), str(tmp_path / "o.onnx")])
    assert result.exit_code == 2 and "no such file" in result.output
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01 this is not protobuf \xff\xfe")
    result = runner.invoke(
        app(), ["verify", str(tmp_path / "junk.onnx"), str(tmp_path / "junk.onnx")]
    )
    assert result.exit_code == 2 and "not an ONNX model" in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_cli_rejects_bad_data_spec(models, tmp_path):
    reference, folded, _ = models
    onnx.save(reference, tmp_path / "ref.onnx")
    onnx.save(folded, tmp_path / "out.onnx")
    result = CliRunner().invoke(
        app(), ["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "out.onnx"), "--data", "csv:x"]
    )
    assert result.exit_code == 2 and "expected npz:PATH" in result.output


OTHER_INPUT = """
g (float[N, 8] x) => (float[N, 5] logits) {
    logits = Gemm <transB = 1> (x, w, b)
}"""


def test_cli_refuses_models_that_take_different_inputs(models, build, tmp_path):
    reference, _, _ = models
    onnx.save(reference, tmp_path / "ref.onnx")
    onnx.save(build(OTHER_INPUT, w=[5, 8], b=[5]), tmp_path / "other.onnx")
    result = CliRunner().invoke(
        app(), ["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "other.onnx")]
    )
    assert result.exit_code == 2, result.output
    assert "the two models take different inputs" in result.output
    assert "'input' float[N, 3, 10, 10]" in result.output and "'x' float[N, 8]" in result.output
    assert "ONNXRuntimeError" not in result.output and "Traceback" not in result.output
    with pytest.raises(ModelRunError, match="different inputs"):
        verify_onnx(reference, build(OTHER_INPUT, w=[5, 8], b=[5]))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 3, 10, 9), np.float32), "cannot take an array of shape (4, 3, 10, 9)"),
        (np.zeros((4, 300), np.float32), "cannot take an array of shape (4, 300)"),
        (np.full((2, 3, 10, 10), "a"), "cannot take an array of <U1"),
    ],
)
def test_cli_names_held_out_data_of_the_wrong_shape(models, tmp_path, array, message):
    reference, folded, _ = models
    onnx.save(reference, tmp_path / "ref.onnx")
    onnx.save(folded, tmp_path / "out.onnx")
    np.savez(tmp_path / "x.npz", x=array)
    args = ["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "out.onnx")]
    result = CliRunner().invoke(app(), [*args, "--data", f"npz:{tmp_path / 'x.npz'}"])
    assert result.exit_code == 2, result.output
    assert f"--data: {tmp_path / 'x.npz'}: input 'input' float[N, 3, 10, 10] {message}" in (
        " ".join(result.output.split())
    )
    assert "ONNXRuntimeError" not in result.output


def test_cli_accepts_integer_pixels_for_a_float_input(models, tmp_path):
    reference, folded, _ = models
    onnx.save(reference, tmp_path / "ref.onnx")
    onnx.save(folded, tmp_path / "out.onnx")
    np.savez(tmp_path / "x.npz", x=np.arange(2 * 300, dtype=np.uint8).reshape(2, 3, 10, 10))
    args = ["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "out.onnx")]
    result = CliRunner().invoke(app(), [*args, "--data", f"npz:{tmp_path / 'x.npz'}"])
    assert result.exit_code == 0, result.output
    assert "PASS 18 samples" in result.output


def test_cli_names_a_missing_external_data_file(models, tmp_path):
    reference, folded, _ = models
    onnx.save(reference, tmp_path / "ref.onnx")
    onnx.save_model(
        folded,
        str(tmp_path / "out.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="out.onnx.data",
        size_threshold=0,
    )
    args = ["verify", str(tmp_path / "ref.onnx"), str(tmp_path / "out.onnx")]
    assert CliRunner().invoke(app(), args).exit_code == 0  # with its data beside it
    (tmp_path / "out.onnx.data").unlink()
    for command in (args, ["fold", str(tmp_path / "out.onnx"), str(tmp_path / "o.onnx")]):
        result = CliRunner().invoke(app(), command)
        assert result.exit_code == 2, result.output
        assert "its external data file 'out.onnx.data' is missing" in result.output
        assert "not an ONNX model" not in result.output
