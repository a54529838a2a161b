"""One fold summary: ``bnfold fold``, ``bnfold import``, the manifest and
``/parity`` give the same numbers for one graph (issue 20), and a graph with
fewer BNs than it should have is warned about, not refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from bnfold.converter.importer import ImportOptions, import_onnx
from bnfold.folding.report import FoldSummary
from bnfold.service.app import create_app

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_harness import base_settings, wait_until  # noqa: E402

WARNING = (
    "1 BatchNormalization nodes found; torch's default optimizer may have fused others: "
    "export with optimize=False"
)


def relu_bn_pool(path: Path) -> Path:
    """Conv -> Relu -> BN (two negative gammas) -> MaxPool -> Conv: the BN
    cannot pass the Relu backward, and only the positive part of its scale
    passes the MaxPool forward, so a Mul by +-1 stays: one BN, partly
    folded, one op left (and no BatchNormalization node left)."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((4, 3, 3, 3)),
        "b1": rng.standard_normal(4),
        "gamma": np.array([1.5, -0.7, 0.9, -1.2]),
        "beta": rng.standard_normal(4),
        "mean": rng.standard_normal(4),
        "var": rng.random(4) + 0.5,
        "w2": rng.standard_normal((5, 4, 1, 1)),
        "b2": rng.standard_normal(5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node(
            "BatchNormalization", ["r1", "gamma", "beta", "mean", "var"], ["n1"], "bn1"
        ),
        helper.make_node("MaxPool", ["n1"], ["p1"], "pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["y"], "conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "relu_bn_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 4, 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def bnfold(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_fold_import_the_manifest_and_parity_give_one_op_count(tmp_path: Path) -> None:
    model = relu_bn_pool(tmp_path / "net.onnx")
    expected = FoldSummary(bns=1, folded=0, partial=1, kept=0, ops_left=1)
    line = expected.describe()
    assert line == "1 BN: 0 folded, 1 partial, 0 kept; 1 op left by BNs"

    folded = bnfold("fold", str(model), str(tmp_path / "folded.onnx"), "--report", "r.json",
                    cwd=tmp_path)  # fmt: skip
    assert folded.returncode == 0, folded.stderr
    assert f"wrote {tmp_path / 'folded.onnx'} ({line})" in folded.stderr.splitlines()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["residual_ops"] == 1  # what the page shows as "ops left by BNs"

    repo = tmp_path / "models"
    imported = bnfold("import", str(model), "--repo", str(repo), "--name", "m", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    out = imported.stdout + imported.stderr
    assert line in out and "folded away" not in out
    assert f"warning: {WARNING}" in out  # 1 BN beside 2 convolutions

    manifest = json.loads((repo / "m" / "1" / "manifest.json").read_text())
    assert manifest["folding"]["summary"] == expected.to_dict()
    assert manifest["folding"]["report"]["residual_ops"] == 1
    assert FoldSummary.of(manifest["folding"]["report"]) == expected

    with TestClient(create_app(base_settings(repo))) as http:
        wait_until(lambda: http.get("/v2/models/m/ready").status_code == 200, "m ready")
        stored = http.get("/v2/models/m/parity").json()
    assert stored["folding"]["summary"] == expected.to_dict()
    assert stored["parity"]["passed"] is True and stored["parity"]["n_samples"] == 64


def test_parity_summarises_a_manifest_written_before_the_summary(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    import_onnx(ImportOptions(model=relu_bn_pool(tmp_path / "net.onnx"), repo=repo, name="m"))
    path = repo / "m" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["folding"]["summary"]  # as format 1 manifests were written
    path.write_text(json.dumps(manifest))
    files = manifest["files"]  # only the graphs are hashed: the manifest may change
    assert set(files) == {"model.onnx", "reference.onnx"}
    with TestClient(create_app(base_settings(repo))) as http:
        wait_until(lambda: http.get("/v2/models/m/ready").status_code == 200, "m ready")
        stored = http.get("/v2/models/m/parity").json()
    assert stored["folding"]["summary"] == {
        "bns": 1, "folded": 0, "partial": 1, "kept": 0, "ops_left": 1
    }  # fmt: skip


def test_no_warning_when_every_convolution_has_its_bn(tmp_path: Path) -> None:
    lines: list[str] = []
    model = onnx.load(relu_bn_pool(tmp_path / "net.onnx"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    model.graph.node.remove(convs[1])  # one Conv, one BN: y is the pool's output now
    model.graph.node[-1].output[0] = "y"
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
    onnx.save(model, tmp_path / "one.onnx")
    result = import_onnx(
        ImportOptions(model=tmp_path / "one.onnx", repo=tmp_path / "models", name="m"),
        log=lines.append,
    )
    assert result.summary.bns == 1  # the BN cannot leave: the pool's output is the graph's
    assert result.manifest["folding"]["summary"] == result.summary.to_dict()
    assert not [x for x in lines if x.startswith("warning")]


def test_convert_module_warns_when_the_graph_has_fewer_bns_than_the_module(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from bnfold.converter.module import convert_module

    class SpareBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.spare = nn.BatchNorm2d(4)  # a layer forward never calls
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.bn(self.conv(x)), 1))

    lines: list[str] = []
    result = convert_module(
        SpareBN().eval(),
        torch.zeros(2, 1, 8, 8),
        repo=tmp_path / "models",
        name="spare",
        log=lines.append,
    )
    assert f"warning: {WARNING}" in lines
    assert result.summary == FoldSummary(bns=1, folded=1, partial=0, kept=0, ops_left=0)
    assert result.manifest["folding"]["summary"] == result.summary.to_dict()
    assert result.parity.passed
