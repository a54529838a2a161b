"""The CLI as a user runs it: real processes, exit codes, files, messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).parents[2]
# the folder, `bnfold train`'s process and `bnfold export`'s (None when training failed)
Trained = tuple[Path, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str] | None]


def bnfold(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """``bnfold train`` (with its no-BN twin) then ``bnfold export`` of the run,
    as a user runs them, once for the round trip and the verify test below."""
    cwd = tmp_path_factory.mktemp("trained")
    train = bnfold(
        "train",
        "--arch",
        "mlp",
        "--data",
        "digits",
        "--epochs",
        "3",
        "--out",
        "runs/mlp",
        "--compare-no-bn",
        cwd=cwd,
    )
    if train.returncode != 0:
        return cwd, train, None
    return cwd, train, bnfold("export", "runs/mlp", "--out", "ref.onnx", cwd=cwd)


def test_train_export_round_trip(trained: Trained) -> None:
    cwd, r, exported = trained
    assert r.returncode == 0, r.stderr
    run = cwd / "runs/mlp"
    assert {p.name for p in run.iterdir()} >= {
        "checkpoint.safetensors",
        "run.json",
        "metrics.json",
        "curves.png",
        "no-bn",
    }
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "BatchNorm vs no BatchNorm" in r.stderr
    assert len(json.loads((run / "no-bn/metrics.json").read_text())) == 3

    assert exported is not None and exported.returncode == 0, exported and exported.stderr
    model = onnx.load(cwd / "ref.onnx")
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--arch", "vgg", "--epochs", "1"], "'vgg' is not one of 'mlp', 'cifar-cnn'"),
        (["train", "--data", "npz:/nonexistent.npz", "--epochs", "1"], "no such file"),
        (["train", "--data", "imagenet", "--epochs", "1"], "unknown data set 'imagenet'"),
        (
            ["train", "--arch", "resnet", "--input-shape", "64", "--epochs", "1"],
            "--arch resnet cannot take input shape [64]: resnet expects an image input shape",
        ),
        (["export", "no-such-run"], "no-such-run is not a training run: run.json is missing"),
        (["convert", "--name", "../escape", "--epochs", "1"], "invalid model name '../escape'"),
        (["convert", "--arch", "vgg"], "'vgg' is not one of"),
    ],
)
def test_user_errors_exit_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    r = bnfold(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert "epoch" not in r.stderr  # refused before any training
    if "--arch" in args or "--input-shape" in args:
        assert "loading" not in r.stderr  # and before any data is loaded


def test_bad_option_values_are_usage_errors(tmp_path: Path) -> None:
    r = bnfold("train", "--epochs", "0", cwd=tmp_path)
    assert r.returncode == 2
    r = bnfold("train", "--input-shape", "1,x,3", cwd=tmp_path)
    assert r.returncode == 2 and "not a shape" in r.stderr


@pytest.mark.parametrize(
    "command", ["train", "export", "convert", "fold", "verify", "serve", "demo"]
)
def test_every_command_explains_itself(tmp_path: Path, command: str) -> None:
    r = bnfold(command, "--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "Usage:" in r.stdout and len(r.stdout) > 300
    # each command lists the codes it can return (issue 20: serve and demo listed 3 too)
    assert "Exit codes: 0 success; 2 usage or input error" in r.stdout
    assert "<bool>" not in r.stdout  # a flag takes no value


def test_serving_path_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys, bnfold.cli, bnfold.folding, bnfold.converter.verify\n"
        "import bnfold.service.app\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_verify_with_the_training_run_compares_pytorch_too(
    trained: Trained, tmp_path: Path
) -> None:
    import numpy as np

    from bnfold.converter.data import load, prepare

    # the round trip's run and its export (trained above, once)
    cwd, train, exported = trained
    assert train.returncode == 0 and exported is not None and exported.returncode == 0
    shutil.copytree(cwd / "runs/mlp", tmp_path / "run")
    shutil.copy2(cwd / "ref.onnx", tmp_path / "ref.onnx")
    assert bnfold("fold", "ref.onnx", "folded.onnx", cwd=tmp_path).returncode == 0
    splits = prepare(load("digits", input_shape=(64,)), (64,))
    np.savez(tmp_path / "held.npz", input=splits.x_test)
    r = bnfold(
        "verify",
        "ref.onnx",
        "folded.onnx",
        "--run",
        "run",
        "--data",
        "npz:held.npz",
        "--json",
        "report.json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    t = report["torch_vs_folded"]
    assert t["passed"] and t["max_rel_error"] <= 1e-5 and t["top1_agreement"] == 1.0
    assert t["n_samples"] == len(splits.x_test) + 16
    assert t["bn_health"]["healthy"] is True and t["bn_health"]["n_bn"] == 2
    # A run whose weights are not the exported ones fails the comparison: exit 3.
    assert (
        bnfold("train", "--epochs", "1", "--seed", "5", "--out", "other", cwd=tmp_path).returncode
        == 0
    )
    r = bnfold("verify", "ref.onnx", "folded.onnx", "--run", "other", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "parity failed: folded.onnx does not compute what the PyTorch run other computes" in (
        r.stderr
    )
