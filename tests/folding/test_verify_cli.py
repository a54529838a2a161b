"""verify_onnx and the fold/verify commands."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

from bnfold.converter import cli_fold
from bnfold.converter.folding import fold
from bnfold.converter.verify import random_inputs, verify_onnx

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
    cli = typer.Typer()
    cli.command()(cli_fold.fold)
    cli.command()(cli_fold.verify)
    return cli


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
    assert result.exit_code == 1
    assert "FAIL" in result.output and "'c2'" in result.output


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
