"""Bring your own model: an ONNX file (bnfold import) or a PyTorch module
(bnfold.convert_module) becomes a served, folded, proven version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as triton
from torch import nn

import bnfold
from bnfold.converter.errors import EXIT_INPUT, EXIT_OK, ParityFailure
from bnfold.converter.importer import NO_BN_HINT, ImportOptions, import_onnx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_harness import base_settings, run_server  # noqa: E402


class PoolNet(nn.Module):
    """BNs where other tools leave them: after ReLU, after MaxPool, after Flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)  # after ReLU
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)  # after MaxPool
        self.bn3 = nn.BatchNorm1d(8 * 3 * 3)  # after Flatten
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(torch.relu(self.conv1(x)))  # (N, 8, 6, 6)
        x = self.bn2(nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2))  # (N, 8, 3, 3)
        return self.fc(self.bn3(torch.flatten(x, 1)))


def trained_like(module: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters as training leaves them:
    far from the defaults, some gamma negative."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
    return module.eval()


def export(module: nn.Module, path: Path, *, optimize: bool) -> None:
    example = torch.randn(2, 1, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        optimize=optimize,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
    )
    assert program is not None
    program.save(str(path))


def count(model_path: Path, op: str) -> int:
    return sum(1 for n in onnx.load(str(model_path)).graph.node if n.op_type == op)


def bnfold_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "poolnet.onnx"
    export(trained_like(PoolNet()), path, optimize=False)
    assert count(path, "BatchNormalization") == 3
    return path


def test_import_serve_and_infer_with_tritonclient(exported: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    r = bnfold_cli("import", str(exported), "--repo", str(repo), "--name", "poolnet", cwd=tmp_path)
    assert r.returncode == EXIT_OK, r.stderr
    version = repo / "poolnet" / "1"
    assert count(version / "model.onnx", "BatchNormalization") == 0
    assert count(version / "reference.onnx", "BatchNormalization") == 3
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["folding"]["bn_before"] == 3 and manifest["folding"]["bn_after"] == 0
    assert manifest["parity"]["passed"] and manifest["parity"]["max_rel_error"] <= 1e-5
    config = json.loads((repo / "poolnet" / "config.json").read_text())
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "image", "datatype": "FP32", "shape": [1, 8, 8]}]
    assert config["output"] == [{"name": "logits", "datatype": "FP32", "shape": [10]}]

    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    original = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (want,) = original.run(["logits"], {"image": x})
    with run_server(base_settings(repo)) as server:
        client = triton.InferenceServerClient(server.host_port)
        assert client.is_server_ready() and client.is_model_ready("poolnet")
        inp = triton.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("poolnet", [inp]).as_numpy("logits")
        client.close()
    assert got is not None and got.shape == (5, 10)
    assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) <= 1e-5


def test_import_refuses_an_existing_version_before_any_work(exported: Path, tmp_path: Path) -> None:
    args = ("import", str(exported), "--repo", "models", "--name", "p", "--version", "1")
    assert bnfold_cli(*args, cwd=tmp_path).returncode == EXIT_OK
    again = bnfold_cli(*args, cwd=tmp_path)
    assert again.returncode == EXIT_INPUT
    assert "already exists" in again.stderr and "Traceback" not in again.stderr


def test_import_on_given_data(exported: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((7, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "held_out.npz", x=x)
    result = import_onnx(
        ImportOptions(
            exported, tmp_path / "models", "p", data=f"npz:{tmp_path / 'held_out.npz'}", n_random=0
        )
    )
    assert result.parity.n_samples == 7 and result.parity.passed
    bad = tmp_path / "wrong.npz"
    np.savez(bad, pixels=x, y=np.zeros(7))
    with pytest.raises(ValueError, match=r"has arrays \['pixels', 'y'\]; the model needs"):
        import_onnx(ImportOptions(exported, tmp_path / "models", "p", data=f"npz:{bad}"))


class ConvBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def test_a_graph_without_bn_says_what_may_have_happened(tmp_path: Path) -> None:
    merged = tmp_path / "merged.onnx"
    export(trained_like(ConvBNNet()), merged, optimize=True)  # torch's default fuses Conv+BN
    assert count(merged, "BatchNormalization") == 0
    said: list[str] = []
    result = import_onnx(ImportOptions(merged, tmp_path / "models", "m"), log=said.append)
    assert NO_BN_HINT in said and "optimize=False" in NO_BN_HINT
    assert (result.bn_before, result.bn_after) == (0, 0) and result.parity.passed
    assert (tmp_path / "models" / "m" / "1" / "model.onnx").is_file()


def test_convert_module_proves_pytorch_vs_both_graphs(tmp_path: Path) -> None:
    module = trained_like(PoolNet(), seed=3)
    data = np.random.default_rng(4).standard_normal((9, 1, 8, 8)).astype(np.float32)
    result = bnfold.convert_module(
        module, torch.zeros(1, 1, 8, 8), repo=tmp_path, name="mine", data=data, log=lambda _: None
    )
    assert (result.bn_before, result.bn_after) == (3, 0)
    comparisons = result.manifest["parity"]["comparisons"]
    torch_vs_ref = comparisons["pytorch_vs_reference"]["logits"]
    assert torch_vs_ref["passed"] and torch_vs_ref["n_samples"] == 9 + 64
    assert comparisons["reference_vs_folded"]["logits"]["max_rel_error"] <= 1e-5
    assert result.manifest["source"]["module"].endswith("PoolNet")
    assert (tmp_path / "mine" / "1" / "model.onnx").is_file()


def test_convert_module_gives_the_module_back_in_its_mode(tmp_path: Path) -> None:
    """Issue 20: the caller's module was left in eval mode. A module in
    training with one frozen layer comes back so, also after a failed proof,
    and its BN statistics are untouched (exported and run in eval mode)."""
    module = trained_like(PoolNet(), seed=5).train()
    module.bn2.eval()  # a frozen layer inside a module in training
    modes = {name: m.training for name, m in module.named_modules()}
    stats = {k: v.clone() for k, v in module.state_dict().items()}
    result = bnfold.convert_module(
        module, torch.zeros(1, 1, 8, 8), repo=tmp_path, name="m", log=lambda _: None
    )
    assert result.parity.passed
    assert {name: m.training for name, m in module.named_modules()} == modes
    assert module.training and module.bn1.training and not module.bn2.training
    assert all(torch.equal(v, stats[k]) for k, v in module.state_dict().items())
    with pytest.raises(ParityFailure):  # rtol 0: float32 rounding alone fails it
        bnfold.convert_module(
            module, torch.zeros(1, 1, 8, 8), repo=tmp_path, name="m0", rtol=0.0,
            log=lambda _: None,
        )  # fmt: skip
    assert {name: m.training for name, m in module.named_modules()} == modes


def test_convert_module_records_the_data_it_was_given(tmp_path: Path) -> None:
    """Issue 20: ``"data": "generated"`` was recorded when ``data=`` was given."""
    module = trained_like(PoolNet(), seed=6)
    data = np.random.default_rng(7).standard_normal((9, 1, 8, 8)).astype(np.float32)
    given = bnfold.convert_module(
        module, torch.zeros(1, 1, 8, 8), repo=tmp_path, name="given", data=data, n_random=5,
        log=lambda _: None,
    )  # fmt: skip
    assert given.manifest["parity"]["data"] == "data= (9 rows)"
    assert given.manifest["parity"]["rows"] == 9 + 5
    alone = bnfold.convert_module(
        module, torch.zeros(1, 1, 8, 8), repo=tmp_path, name="alone", log=lambda _: None
    )
    assert alone.manifest["parity"]["data"] == "generated"
    assert alone.manifest["parity"]["rows"] == 64


def test_a_fixed_batch_of_one_is_warned_about(exported: Path, tmp_path: Path) -> None:
    """Issue 20: an export traced with one example and no dynamic batch was
    "proven on 1 rows" without a word; now the log says so and how to fix it."""
    fixed = tmp_path / "fixed.onnx"
    program = torch.onnx.export(
        trained_like(PoolNet(), seed=8), (torch.randn(1, 1, 8, 8),), dynamo=True,
        optimize=False, input_names=["image"], output_names=["logits"],
    )  # fmt: skip
    assert program is not None
    program.save(str(fixed))
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1  # the batch axis is fixed at 1
    said: list[str] = []
    result = import_onnx(ImportOptions(fixed, tmp_path / "models", "fixed"), log=said.append)
    warning = [line for line in said if line.startswith("warning: the graph's batch axis")]
    assert warning == [
        "warning: the graph's batch axis has a fixed size, so parity is proven on 1 row only; "
        "export with a dynamic batch axis to prove it on more: torch.onnx.export(model, (x,), "
        "dynamo=True, optimize=False, dynamic_shapes=({0: torch.export.Dim('batch')},)), or "
        "dynamic_axes={'input': {0: 'batch'}} with the TorchScript exporter"
    ]
    assert "verifying reference.onnx vs model.onnx on 1 row" in said
    assert result.manifest["parity"]["rows"] == 1

    said.clear()  # a dynamic batch axis: no warning, the 64 generated rows
    import_onnx(ImportOptions(exported, tmp_path / "models", "dynamic"), log=said.append)
    assert not [line for line in said if "batch axis" in line]
    assert "verifying reference.onnx vs model.onnx on 64 rows" in said
