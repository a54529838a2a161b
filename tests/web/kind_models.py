"""A repository with one version of every kind the page tells apart, each
made by the real tool (torch's dynamo exporter, ``bnfold import``,
``bnfold.convert_module``, ``bnfold convert``), for tests/web/test_web_kinds.py.

- ``imported``: a dynamo export (``net.onnx`` + ``net.onnx.data``) brought in
  with ``bnfold import --normalize`` (the CLI, in a subprocess: its output is
  kept, and ``bnfold fold``'s on the same file); one of its BNs sits after a
  Relu and before a MaxPool with negative scales, so it folds only partly;
- ``module``: the same network (other weights) through ``convert_module``;
- ``trained``: ``bnfold convert``'s MLP (one epoch), with BN health;
- ``triton-bare``: the tests' fold-demo graph as a Triton model
  (``config.pbtxt``, a ``labels.txt``, no manifest), folded on load;
- ``triton-external``: the dynamo export as a Triton model, weights in
  ``model.onnx.data`` beside the graph, folded on load;
- ``triton-plain``: the fold-demo graph as a Triton model served as it is
  (no manifest, no fold on load).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from web_models import fold_demo

NORMALIZE = "0.485,0.456,0.406/0.229,0.224,0.225"
EXTERNAL_BNS = 3
FOLD_ON_LOAD = 'parameters { key: "fold_on_load" value: { string_value: "true" } }\n'
EXTERNAL_PBTXT = """name: "triton-external"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 3, 16, 16 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 5 ] } ]
"""
BARE_PBTXT = """name: "triton-bare"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "image", data_type: TYPE_FP32, dims: [ 1, 8, 8 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 10 ] label_filename: "labels.txt" } ]
"""


@dataclass(frozen=True)
class Kinds:
    repo: Path
    export: Path  # the dynamo export that `imported` and `triton-external` hold
    import_output: str  # what `bnfold import` printed
    fold_output: str  # what `bnfold fold` printed for the same file


def network(seed: int) -> object:
    """Conv-Relu-BN(some scales negative)-MaxPool-Conv-BN-Relu-Conv-BN-Pool-Linear:
    the first BN cannot pass the Relu backward and only its positive scales
    pass the MaxPool forward, so it leaves ops; the others fold away."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(8),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3),
        nn.BatchNorm2d(6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )
    with torch.no_grad():  # statistics that are not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        net[2].weight[::3] *= -1
    return net.eval()


def dynamo_export(folder: Path) -> Path:
    """``folder/net.onnx`` with its weights in ``net.onnx.data``, batch dynamic."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "net.onnx"
    torch.onnx.export(
        network(0),
        (torch.randn(2, 3, 16, 16),),
        str(path),
        dynamo=True,
        optimize=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
    )
    assert (folder / "net.onnx.data").is_file()  # what the exporter does with torch 2.13
    return path


def bnfold(*args: str, cwd: Path) -> str:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def kinds_repo(root: Path, trained: object) -> Kinds:
    """``trained``: tests/trained_models.py's converted MLP (``.write``)."""
    import torch

    from bnfold.converter.module import convert_module

    repo = root / "models"
    export = dynamo_export(root / "export")
    imported = bnfold(
        "import",
        str(export),
        "--repo",
        str(repo),
        "--name",
        "imported",
        "--normalize",
        NORMALIZE,
        cwd=root,
    )
    folded = bnfold("fold", str(export), str(root / "folded.onnx"), cwd=root)

    rows = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)
    convert_module(
        network(1),
        torch.zeros(1, 3, 16, 16),
        repo=repo,
        name="module",
        data=rows,
        log=lambda _: None,
    )
    trained.write(repo, "trained")  # type: ignore[attr-defined]

    bare = repo / "triton-bare"
    (bare / "1").mkdir(parents=True)
    (bare / "1" / "model.onnx").write_bytes(fold_demo(7))
    (bare / "config.pbtxt").write_text(BARE_PBTXT + FOLD_ON_LOAD)
    (bare / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)))

    plain = repo / "triton-plain"
    (plain / "1").mkdir(parents=True)
    (plain / "1" / "model.onnx").write_bytes(fold_demo(8))
    plain_pbtxt = BARE_PBTXT.replace("triton-bare", "triton-plain")
    (plain / "config.pbtxt").write_text(plain_pbtxt.replace(' label_filename: "labels.txt"', ""))

    external = repo / "triton-external"
    (external / "1").mkdir(parents=True)
    (external / "config.pbtxt").write_text(EXTERNAL_PBTXT + FOLD_ON_LOAD)
    shutil.copy(export, external / "1" / "model.onnx")
    # the graph names its data file: it stays net.onnx.data, beside model.onnx
    shutil.copy(export.with_name("net.onnx.data"), external / "1" / "net.onnx.data")
    return Kinds(repo, export, imported, folded)
