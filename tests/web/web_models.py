"""The repository the browser tests look at, built without torch.

Each version is written as the converter writes one, with a real fold
report: the reference graph (onnx.helper, every BN kept) is folded by
``bnfold.folding``, and the parity of the two graphs is measured here with
ONNX Runtime, through ``bnfold.contract.compare`` as the converter does.

- ``digits``: the MLP of tests/service (Gemm-BN-Relu-Gemm), an image model
  (flat 64 = 8x8 grayscale), with BN health and training curves;
- ``fold-demo``: a CNN whose four BNs end folded, partly folded and kept;
- ``tabular``: the MLP without image preprocessing (the V2 request form);
- ``twice``: two versions of the MLP, both served (``version_policy: all``);
- ``bare``: a bare ``model.onnx`` (no manifest) folded on load;
- ``broken``: refused at load (its model.onnx does not match the manifest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from served_models import CNN_PREP, IR_VERSION, LABELS, MLP_PREP, OPSET, config, mlp

from bnfold.contract import compare
from bnfold.converter.repository import write_version
from bnfold.folding import fold

KEYS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy")
HISTORY = [
    dict(zip(KEYS, row, strict=True))
    for row in [
        (1.0, 1.9, 1.5, 0.42, 0.6),
        (2.0, 1.1, 0.9, 0.74, 0.81),
        (3.0, 0.6, 0.55, 0.88, 0.9),
    ]
]
BN_HEALTH = {
    "n_bn": 1,
    "n_samples": 269,
    "eval_vs_batch_stats": {"max_rel_error": 0.1, "top1_agreement": 0.99, "passed": True},
    "layers": [
        {
            "name": "1",
            "never_updated": False,
            "mean_shift": 0.17,
            "var_ratio_min": 0.87,
            "var_ratio_max": 1.25,
            "dead_channels": 0,
        }
    ],
    "warnings": [],
    "healthy": True,
    "thresholds": {"max_rel_gap": 0.25, "max_mean_shift": 1.0, "var_ratio_range": [0.25, 4.0]},
}


def fold_demo(seed: int = 0) -> bytes:
    """image (N, 1, 8, 8) -> BN -> Conv (zero padding) -> BN -> Relu ->
    MaxPool -> BN (mixed-sign gamma) -> Flatten -> Gemm -> Relu -> BN
    (mixed-sign gamma) -> logits (N, 10): the first BN folds only partly
    (the padding stops its shift), the last one stays."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {
        "w": rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32),
        "b": np.zeros(4, np.float32),
        "w2": rng.normal(0, 0.3, (10, 64)).astype(np.float32),
        "b2": np.zeros(10, np.float32),
    }

    def bn(name: str, x: str, y: str, c: int, mixed: bool = False) -> Any:
        gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
        if mixed:
            gamma[::2] *= -1
        inits[f"{name}.gamma"] = gamma
        inits[f"{name}.beta"] = rng.normal(0, 0.1, c).astype(np.float32)
        inits[f"{name}.mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        inits[f"{name}.var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        params = [f"{name}.{p}" for p in ("gamma", "beta", "mean", "var")]
        return helper.make_node("BatchNormalization", [x, *params], [y], name=name)

    nodes = [
        bn("input_bn", "image", "a0", 1),
        helper.make_node(
            "Conv", ["a0", "w", "b"], ["c1"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]
        ),
        bn("conv_bn", "c1", "a1", 4),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        bn("pool_bn", "p1", "a2", 4, mixed=True),
        helper.make_node("Flatten", ["a2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["g"], name="dense", transB=1),
        helper.make_node("Relu", ["g"], ["r2"], name="relu_out"),
        bn("out_bn", "r2", "logits", 10, mixed=True),
    ]
    graph = helper.make_graph(
        nodes,
        "fold-demo",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_folded(
    repo: Path,
    name: str,
    reference: bytes,
    shape: list[int],
    *,
    preprocessing: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Fold ``reference`` with bnfold.folding and write the version with its
    fold report and the parity measured here."""
    folded_model, report = fold(onnx.load_from_string(reference))
    folded = folded_model.SerializeToString()
    x = np.random.default_rng(0).standard_normal([64, *shape]).astype(np.float32)
    feed = onnx.load_from_string(reference).graph.input[0].name
    outs = [
        ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {feed: x})[0]
        for m in (reference, folded)
    ]
    parity = compare(outs[0], outs[1]).to_dict()
    manifest = {
        "format": 1,
        "created": "2026-11-21T12:00:00Z",
        "arch": {"name": name, "bn": True, "input_shape": shape, "num_classes": 10},
        "labels": LABELS,
        "inputs": [{"name": feed, "datatype": "FP32", "shape": [-1, *shape]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "folding": {
            "folded": True,
            "bn_before": report.bn_before,
            "bn_after": report.bn_after,
            "report": report.to_dict(),
            **(extra or {}).get("folding", {}),
        },
        "parity": {
            **parity,
            "n_heldout": 0,
            "n_random": 64,
            "comparisons": {"reference_vs_folded": parity},
        },
        "versions": {"bnfold": "0.1.0", "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        **{k: v for k, v in (extra or {}).items() if k != "folding"},
    }
    return write_version(
        repo,
        name,
        model_onnx=folded,
        reference_onnx=reference,
        manifest=manifest,
        config=config(name, feed, shape, preprocessing=preprocessing),
    )


def web_repo(repo: Path) -> Path:
    _, mlp_reference = mlp(0)
    write_folded(
        repo,
        "digits",
        mlp_reference,
        [64],
        preprocessing=MLP_PREP,
        extra={
            "folding": {"bn_health": BN_HEALTH},
            "metrics": {"test_accuracy": 0.94, "val_accuracy": 0.9, "history": HISTORY},
            "training": {"epochs": 3, "batch_size": 32, "lr": 0.003, "seed": 0},
            "data": {"name": "digits", "n_train": 1169, "n_val": 269, "n_test": 359},
        },
    )
    write_folded(repo, "fold-demo", fold_demo(), [1, 8, 8], preprocessing=CNN_PREP)
    write_folded(repo, "tabular", mlp(1)[1], [64], preprocessing=None)
    for seed in (3, 4):  # two versions, both served
        write_folded(repo, "twice", mlp(seed)[1], [64], preprocessing=MLP_PREP)
    config_file = repo / "twice" / "config.json"
    config_file.write_text(
        json.dumps(json.loads(config_file.read_text()) | {"version_policy": {"all": {}}})
    )
    bare = repo / "bare" / "1"  # a bare model.onnx with its BN, folded when it loads
    bare.mkdir(parents=True)
    (bare / "model.onnx").write_bytes(mlp(5)[1])
    settings = config("bare", "input", [64], preprocessing=MLP_PREP) | {"fold_on_load": True}
    (repo / "bare" / "config.json").write_text(json.dumps(settings))
    bad = write_folded(repo, "broken", mlp(2)[1], [64], preprocessing=None)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")  # one byte the manifest's sha256 does not cover
    return repo
