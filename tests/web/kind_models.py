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
from dynamo_models import BNS, bn_cnn, dynamo_export
from web_models import fold_demo

NORMALIZE = "0.485,0.456,0.406/0.229,0.224,0.225"
EXTERNAL_BNS = BNS
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
    # net.onnx with its weights in net.onnx.data; its first BN folds only partly
    export = dynamo_export(bn_cnn(0, relu_first=True), root / "export" / "net.onnx")
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
        bn_cnn(1, relu_first=True),
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
