"""``bnfold convert --arch timm:NAME``: timm's BatchNorm models, trained on the
embedded digits, exported with every BN kept, folded, proven and served;
nothing downloaded (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from bnfold.converter.errors import EXIT_INPUT

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_harness import base_settings, run_server  # noqa: E402

# Two small BatchNorm networks of timm's registry: a ResNet with a deep stem
# (Conv-BN-ReLU everywhere, BN in the shortcut) and a MobileNetV3 (BN fused
# with its activation in timm's BatchNormAct2d, squeeze-excite, hard-swish).
ARCHS = ["resnet10t", "mobilenetv3_small_050"]


def bnfold(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        # no proxy and the hub offline: a download attempt would fail the run
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", **env},
    )


def count(path: Path, op: str) -> int:
    return sum(n.op_type == op for n in onnx.load(str(path)).graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_a_timm_model_converts_and_serves_with_parity(arch: str, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    r = bnfold(
        "convert", "--arch", f"timm:{arch}", "--repo", str(repo), "--epochs", "1",
        "--limit", "120", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    name = f"digits-{arch}"
    version = repo / name / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["arch"]["name"] == f"timm:{arch}"
    assert manifest["arch"]["input_shape"] == [3, 32, 32]
    assert manifest["arch"]["extra"]["timm"].startswith("1.")
    bns = manifest["arch"]["bn_count"]
    assert bns > 10 and count(version / "reference.onnx", "BatchNormalization") == bns
    assert manifest["folding"]["bn_before"] == bns
    assert count(version / "model.onnx", "BatchNormalization") == 0
    assert manifest["folding"]["bn_after"] == 0
    comparisons = manifest["parity"]["comparisons"]
    assert set(comparisons) == {"torch_vs_reference", "reference_vs_folded", "torch_vs_folded"}
    assert all(c["passed"] and c["max_rel_error"] <= 1e-5 for c in comparisons.values())
    assert f"{name} v1: test accuracy" in r.stderr

    # served: the folded version answers what reference.onnx computes on the raw digits
    x = np.random.default_rng(0).uniform(0, 16, (6, 3, 32, 32)).astype(np.float32)
    reference = ort.InferenceSession(
        str(version / "reference.onnx"), providers=["CPUExecutionProvider"]
    )
    (want,) = reference.run(["logits"], {"input": x})
    with run_server(base_settings(repo)) as server:
        client = triton.InferenceServerClient(server.host_port)
        assert client.is_model_ready(name)
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer(name, [inp]).as_numpy("logits")
        client.close()
    assert got is not None and got.shape == (6, 10)
    assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) <= 1e-5


def test_a_local_state_dict_starts_the_training(tmp_path: Path) -> None:
    """--weights FILE instead of random weights: loaded strictly, recorded with its
    sha256; one that does not fit the model is an input error before training."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    from bnfold.converter.models import ArchConfig, build_model

    torch.manual_seed(1)
    model = build_model(ArchConfig("timm:resnet10t", (3, 32, 32), 10))
    weights = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    args = ["train", "--arch", "timm:resnet10t", "--epochs", "1", "--limit", "60"]
    r = bnfold(*args, "--weights", str(weights), "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["arch"]["extra"]["init"] == {
        "weights": "init.safetensors",
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }

    wrong = build_model(ArchConfig("timm:resnet10t", (3, 32, 32), 4))  # 4 classes, not 10
    torch.save(wrong.state_dict(), tmp_path / "four.pt")
    r = bnfold(*args, "--weights", "four.pt", "--out", "run4", cwd=tmp_path)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert "--weights four.pt does not fit the model built for this data" in r.stderr
    assert "Traceback" not in r.stderr
    r = bnfold(*args, "--weights", "missing.pt", cwd=tmp_path)
    assert r.returncode == EXIT_INPUT and "--weights missing.pt: no such file" in r.stderr
    assert "loading" not in r.stderr  # refused before the data is loaded


def test_an_unknown_timm_name_says_how_to_find_one(tmp_path: Path) -> None:
    r = bnfold("convert", "--arch", "timm:resnet10", "--epochs", "1", cwd=tmp_path)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert "has no model 'resnet10'" in r.stderr and "close names: " in r.stderr
    assert "resnet10t" in r.stderr
    assert "timm.list_models('*resnet*')" in r.stderr
    assert "loading" not in r.stderr and "Traceback" not in r.stderr


def test_a_timm_model_without_batchnorm_is_refused(tmp_path: Path) -> None:
    r = bnfold("convert", "--arch", "timm:vit_tiny_patch16_224", "--epochs", "1", cwd=tmp_path)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert "vit_tiny_patch16_224 has no BatchNorm layer (it normalises with LayerNorm" in r.stderr
    assert "nothing to fold" in r.stderr and "loading" not in r.stderr


@pytest.mark.parametrize(
    "arch", ["timm:hf-hub:timm/resnet10t.c3_in1k", "timm:timm/resnet10t", "timm:local-dir:/m"]
)
def test_hub_references_are_refused_before_torch_loads(arch: str) -> None:
    code = f"""
import sys
from bnfold.cli import app
try:
    app(["convert", "--arch", {arch!r}], standalone_mode=False)
except Exception as e:
    assert "downloads nothing" in str(e), e
else:
    raise AssertionError("{arch} was accepted")
assert "torch" not in sys.modules and "timm" not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_no_bn_twins_are_for_bnfolds_own_architectures(tmp_path: Path) -> None:
    r = bnfold("train", "--arch", "timm:resnet10t", "--no-bn", cwd=tmp_path)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert "timm's models have no such twin here" in r.stderr


# A timm model (registered in the process that runs bnfold) that trains but
# that torch's exporter cannot translate: its forward calls an operator of
# its own, which has no ONNX function.
UNEXPORTABLE = """
import torch
from torch import nn

from bnfold.converter.timm_models import import_timm

timm = import_timm()  # with bnfold's torchvision import workaround


@torch.library.custom_op("unexportable::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


double.register_fake(lambda x: torch.empty_like(x))
double.register_autograd(lambda ctx, grad: grad * 2)


class Unexportable(nn.Module):
    def __init__(self, num_classes=10, in_chans=3, **_):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(double(self.bn(self.conv(x)).relu().mean((2, 3))))


@timm.models.register_model
def unexportable_bn(pretrained=False, **kwargs):
    return Unexportable(**kwargs)
"""


def test_a_timm_model_the_exporter_cannot_trace_is_one_error_line(tmp_path: Path) -> None:
    """Trained, then refused at the export with exit 2 (a model that does not
    fit): one line naming the model, the exporter's failing step and its
    cause, no traceback, nothing written."""
    (tmp_path / "unexportable_timm.py").write_text(UNEXPORTABLE)
    code = (
        "import sys, unexportable_timm; from bnfold.cli import main; sys.argv[0] = 'bnfold'; main()"
    )
    r = subprocess.run(
        [
            sys.executable, "-c", code, "convert", "--arch", "timm:unexportable_bn",
            "--repo", str(tmp_path / "models"), "--epochs", "1", "--limit", "40",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "COLUMNS": "1000",
            "NO_COLOR": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        },
    )  # fmt: skip
    assert r.returncode == EXIT_INPUT, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith(
        "error: cannot export timm:unexportable_bn to ONNX: torch.onnx.export (dynamo) "
        "step 3/3 failed: Failed to convert the exported program to an ONNX model: "
        "DispatchError: No ONNX function found for <OpOverload(op='unexportable.double'"
    ), errors[0]
    assert not (tmp_path / "models").exists()  # nothing written
