"""Zoo benchmark: does folding remove every op the BNs cost on published networks?

Each network (torchvision's classification models, and the hand-written
blocks of ``blocks.py``) gets random weights, gamma of mixed sign (about 20%
negative) and BN statistics calibrated to what each BN sees (its running
mean and variance are the batch statistics of random inputs, every other
layer in eval mode). It is exported as the pipeline exports (torch's dynamo
exporter, ``optimize=False``, opset 20, dynamic batch) with every BN kept,
beside its twin: the same network, same weights, its BN layers deleted.
Each tool runs on both; the op count difference is what the BNs still cost
(0 or less: nothing). Per tool, the output is compared with the unfolded
graph on ONNX Runtime (no optimisations), and the unfolded graph with the
network in float64 (torch) for the float32 noise floor. Latency is ONNX
Runtime CPU (all optimisations, one thread, batch 1): unfolded, bnfold-folded
and twin timed in interleaved rounds. Fold time is recorded per network.

    python -m bench.zoo [--quick] [--only NAME ...] [--cache DIR] [--out bench/results]

Writes ``zoo.md`` and ``zoo.json``. Needs the ``bench`` extra (torchvision:
see ``compat.py``, onnxsim, onnxslim, onnxoptimizer) and the ``train`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import inspect
import io
import json
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import timing  # noqa: E402
from bench.graph_tools import (  # noqa: E402
    copy_model,
    t_bnfold,
    t_onnxoptimizer,
    t_onnxruntime,
    t_onnxscript,
    t_onnxsim,
    t_onnxslim,
)
from bench.timing import cpu_session, interleaved  # noqa: E402
from bench.zoo.blocks import BLOCKS  # noqa: E402
from bench.zoo.compat import import_torchvision  # noqa: E402
from bnfold.folding import fold  # noqa: E402

ELEMENTWISE = {"BatchNormalization", "Mul", "Add", "Sub", "Div"}
OPSET = 20
SIZE = 96
# the versions environment() records
DISTS = ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxsim",
         "onnxslim", "onnxoptimizer", "numpy")  # fmt: skip
CACHE = Path(tempfile.gettempdir()) / "bnfold-zoo"  # exports, keyed by recipe and versions

# torchvision classification models with BN, exported at SIZE x SIZE (name: constructor kwargs)
TORCHVISION: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "resnet50": {},
    "resnext50_32x4d": {},
    "densenet121": {},
    "vgg11_bn": {},
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "mobilenet_v2": {},
    "mobilenet_v3_small": {},
    "mobilenet_v3_large": {},
    "mnasnet0_5": {},
    "mnasnet1_0": {},
    "shufflenet_v2_x0_5": {},
    "shufflenet_v2_x1_0": {},
    "efficientnet_b0": {},
    "efficientnet_v2_s": {},
    "regnet_x_400mf": {},
    "regnet_y_400mf": {},
}


# ---- networks ---------------------------------------------------------------------------


def build(name: str, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    if name in BLOCKS:
        return BLOCKS[name]()
    tv = import_torchvision()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tv.models.get_model(name, weights=None, num_classes=classes, **TORCHVISION[name])


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def calibrate(model: nn.Module, size: int, seed: int = 0, negative: float = 0.2) -> None:
    """Random affine BN parameters; running statistics = what each BN sees on random inputs."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        for bn in bn_layers(model):
            n = bn.num_features
            sign = torch.where(torch.rand(n, generator=gen) < negative, -1.0, 1.0)
            bn.weight.copy_(sign * (0.5 + torch.rand(n, generator=gen)))
            bn.bias.copy_(0.2 * torch.randn(n, generator=gen))
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration batches
            bn.train()
        for _ in range(3):
            model(torch.randn(16, 3, size, size, generator=gen))
    model.eval()


def twin(model: nn.Module) -> nn.Module:
    """The same network, same weights, every BN layer replaced by Identity."""
    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                setattr(module, child, nn.Identity())
        del name
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def inputs(rows: int, seed: int = 0) -> np.ndarray:
    """The zoo's inputs: N(0, 1) images, (rows, 3, SIZE, SIZE) float32; one seed, one set."""
    return np.random.default_rng(seed).normal(size=(rows, 3, SIZE, SIZE)).astype(np.float32)


def export(model: nn.Module, size: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=1024)
    with quiet():
        program = torch.onnx.export(
            model.eval(),
            (torch.randn(2, 3, size, size),),
            dynamo=True,
            optimize=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
    assert program is not None
    return program.model_proto


def networks(names: list[str], cache: Path, twins: bool = True) -> Iterator[dict[str, Any]]:
    """Per network: the module (float64 copy for the noise floor), both exports, timings.

    ``twins=False`` exports (and yields) only the graph with every BN kept."""
    here = Path(__file__).parent
    recipe = [inspect.getsource(f) for f in (build, calibrate, twin, export)]
    sources = b"".join((here / f).read_bytes() for f in ("blocks.py", "compat.py"))
    sources += "".join([repr(TORCHVISION), *recipe]).encode()
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        seed = f"{name}-{torch.__version__}-{OPSET}-{SIZE}".encode() + sources
        key = hashlib.sha1(seed).hexdigest()[:10]
        model = build(name)
        calibrate(model, SIZE)
        paths = cache / f"{name}-{key}.onnx", cache / f"{name}-{key}-twin.onnx"
        export_s, deleted = None, None
        if paths[0].exists():
            with_bn = onnx.load(paths[0])
        else:
            t0 = time.perf_counter()
            with_bn = export(model, SIZE)
            export_s = time.perf_counter() - t0
            onnx.save(with_bn, paths[0])
        if twins and paths[1].exists():
            deleted = onnx.load(paths[1])
        elif twins:
            deleted = export(twin(model), SIZE)
            onnx.save(deleted, paths[1])
        n_bn = sum(n.op_type == "BatchNormalization" for n in with_bn.graph.node)
        assert n_bn == len(bn_layers(model)), f"{name}: {n_bn} BN nodes, {len(bn_layers(model))}"
        yield {
            "name": name,
            "source": "hand-written" if name in BLOCKS else "torchvision",
            "module": model,
            "with_bn": with_bn,
            "deleted": deleted,
            "export_s": export_s,
        }


# ---- tools ------------------------------------------------------------------------------


TOOLS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "none": copy_model,
    "bnfold": t_bnfold,
    "onnxscript": t_onnxscript,
    "onnxsim": t_onnxsim,
    "onnxslim": t_onnxslim,
    "onnxoptimizer": t_onnxoptimizer,
    "onnxruntime": t_onnxruntime,
}


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], dtype=np.float64)


def rel_error(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def score(net: dict[str, Any], x: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Per tool: the ops the BNs still cost (against the twin) and the parity with the reference."""
    rows: dict[str, Any] = {}
    for tool, fn in TOOLS.items():
        try:
            with quiet():
                a, b = fn(net["with_bn"]), fn(net["deleted"])
        except Exception as exc:  # a tool that fails on a graph is a result too
            rows[tool] = {"extra_ops": None, "error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        ops_a = Counter(n.op_type for n in a.graph.node)
        ops_b = Counter(n.op_type for n in b.graph.node)
        left = {op: n for op, n in (ops_a - ops_b).items() if op in ELEMENTWISE}
        entry: dict[str, Any] = {
            "extra_ops": sum(ops_a.values()) - sum(ops_b.values()),
            "elementwise_left": left,
            "ops": sum(ops_a.values()),
            "ops_twin": sum(ops_b.values()),
        }
        try:
            entry["max_rel_error"] = rel_error(reference, run(a, x))
        except Exception as exc:
            entry["max_rel_error"] = None
            entry["parity_error"] = f"{type(exc).__name__}: {exc}"[:200]
        rows[tool] = entry
    return rows


# ---- latency ----------------------------------------------------------------------------


def latency(models: dict[str, onnx.ModelProto], x: np.ndarray, seconds: float) -> dict[str, Any]:
    """Interleaved rounds (bench/timing.py) against the BN-deleted twin."""
    sessions = {k: cpu_session(m) for k, m in models.items()}
    runners = {
        k: functools.partial(s.run, None, {s.get_inputs()[0].name: x}) for k, s in sessions.items()
    }
    timed = interleaved(runners, "twin", seconds, warmup=3)
    out: dict[str, Any] = {"rounds": timed.rounds, "runs_per_block": timed.block}
    for k in timed.times:
        out[f"{k}_ms"] = timed.ms(k)
    for k in ("unfolded", "folded"):
        out[f"{k}_vs_twin"], out[f"{k}_vs_twin_iqr"] = timed.versus(k, "twin")
    return out


# ---- one network ------------------------------------------------------------------------


def reasons_left(report: Any) -> list[dict[str, Any]]:
    """For each BN that left ops: its status, what it left and why (from the fold report)."""
    out = []
    for b in report.bns:
        if b.residual:
            out.append(
                {"bn": b.name, "status": b.status, "residual": b.residual, "reasons": b.reasons}
            )
    return out


def measure(net: dict[str, Any], seconds: float) -> dict[str, Any]:
    model, with_bn = net["module"], net["with_bn"]
    x = inputs(2)
    reference = run(with_bn, x)
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    t0 = time.perf_counter()
    folded, report = fold(with_bn)
    fold_s = time.perf_counter() - t0
    rows = score(net, x, reference)
    folded_out = run(folded, x)
    # the twin as it runs through the same tool: bnfold evaluates its computed zero biases too
    twin_folded = fold(net["deleted"])[0]
    lat = latency({"unfolded": with_bn, "folded": folded, "twin": twin_folded}, x[:1], seconds)
    return {
        "name": net["name"],
        "source": net["source"],
        "nodes": len(with_bn.graph.node),
        "bns": report.bn_before,
        "export_s": net["export_s"],
        "fold_s": fold_s,
        "evaluated": len(report.evaluated),
        "residual_ops": report.residual_ops,
        "reference_vs_float64": rel_error(truth, reference),
        "bnfold_vs_float64": rel_error(truth, folded_out),
        "tools": rows,
        "latency": lat,
        "left": reasons_left(report),
    }


# ---- report -----------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return timing.environment(DISTS, gpu="none")


def _cell(entry: dict[str, Any], bold: bool = False) -> str:
    if entry.get("extra_ops") is None:
        return "error"
    left = entry["elementwise_left"]
    detail = ", ".join(f"{n} {op}" for op, n in sorted(left.items()))
    text = f"{entry['extra_ops']:+d}"
    if bold and entry["extra_ops"] <= 0:
        text = f"**{text}**"
    return text + (f" ({detail})" if detail else "")


def _parity(entry: dict[str, Any]) -> str:
    err = entry.get("max_rel_error")
    return "error" if err is None else f"{err:.1e}"


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tools = [t for t in TOOLS if t != "none"]
    free = {}
    for t in tools:
        costs = [r["tools"][t].get("extra_ops") for r in rows]
        free[t] = sum(1 for c in costs if c is not None and c <= 0)
    errors = [r["tools"]["bnfold"].get("max_rel_error") or 0.0 for r in rows]
    nodes = np.array([r["nodes"] for r in rows], dtype=float)
    secs = np.array([r["fold_s"] for r in rows], dtype=float)
    slope = float(np.polyfit(np.log(nodes), np.log(secs), 1)[0]) if len(rows) > 2 else None
    ratio = [r["bnfold_vs_float64"] / max(r["reference_vs_float64"], 1e-12) for r in rows]
    folded_lat = [r["latency"]["folded_vs_twin"] for r in rows]
    unfolded_lat = [r["latency"]["unfolded_vs_twin"] for r in rows]
    return {
        "networks": len(rows),
        "bn_free": free,
        "bnfold_vs_float64_over_reference_max": max(ratio) if ratio else None,
        "folded_vs_twin_range": [min(folded_lat), max(folded_lat)] if rows else None,
        "unfolded_vs_twin_range": [min(unfolded_lat), max(unfolded_lat)] if rows else None,
        "bnfold_max_rel_error": max(errors) if errors else None,
        "bnfold_crashed": sum(1 for r in rows if r["tools"]["bnfold"].get("extra_ops") is None),
        "fold_seconds_total": float(secs.sum()),
        "fold_time_exponent": slope,
    }


def markdown(result: dict[str, Any]) -> str:
    env, rows = result["environment"], result["networks"]
    summ = summary(rows)
    tools = [t for t in TOOLS if t != "none"]
    n = summ["networks"]
    lines = [
        "# Zoo benchmark: BN folding on published architectures",
        "",
        f"{env['date']}, {env['machine']}, {env['nproc']} CPUs "
        f"({env['cpu'] or 'unknown CPU'}), no GPU, Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + (
            f"; rerun {env['rerun']['date']}: {', '.join(env['rerun']['networks'])}"
            if "rerun" in env
            else ""
        ),
        "",
        f"{n} networks: torchvision's classification models with BN at {SIZE}x{SIZE} and",
        "hand-written blocks of the kinds torchvision has none of (`bench/zoo/blocks.py`). Random",
        "weights, gamma of mixed sign (~20% negative), BN statistics calibrated to what each BN",
        "sees; exported by torch's dynamo exporter (`optimize=False`, opset 20, dynamic batch)",
        "with every BN kept, beside a twin with its BN layers deleted. `python -m bench.zoo`.",
        "",
        "## Networks whose BNs cost nothing",
        "",
        "Op count after the tool minus the op count of the BN-deleted twin after the same tool;",
        "0 or less: the BNs cost nothing.",
        "",
        "| tool | networks | bnfold's max relative error | crashes |",
        "|---|---|---|---|",
    ]
    for t in tools:
        extra = ""
        if t == "bnfold":
            extra = f" | {summ['bnfold_max_rel_error']:.1e} | {summ['bnfold_crashed']}"
        else:
            errs = sum(1 for r in rows if r["tools"][t].get("extra_ops") is None)
            extra = f" | - | {errs}"
        lines.append(f"| {t} | {summ['bn_free'][t]} of {n}{extra} |")
    lines += [
        "",
        "## Ops the BNs still cost, per network",
        "",
        "In brackets: elementwise ops left beyond the twin's. `none` is the untouched export.",
        "",
        "| network | nodes | BNs | none | " + " | ".join(tools) + " |",
        "|---" * (len(tools) + 4) + "|",
    ]
    for r in rows:
        cells = [_cell(r["tools"]["none"])] + [_cell(r["tools"][t], t == "bnfold") for t in tools]
        lines.append(f"| {r['name']} | {r['nodes']} | {r['bns']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Parity",
        "",
        "Max relative error (`max |out - ref| / max |ref|`) of each tool's graph against the",
        "unfolded export on ONNX Runtime (no optimisations), 2 random inputs. `ref vs f64`: the",
        "unfolded export against the network in float64 (torch), the float32 noise floor of these",
        "random deep networks; `bnfold vs f64`: the folded graph against the same.",
        "",
        "| network | ref vs f64 | bnfold vs f64 | " + " | ".join(tools) + " |",
        "|---" * (len(tools) + 3) + "|",
    ]
    for r in rows:
        cells = [_parity(r["tools"][t]) for t in tools]
        lines.append(
            f"| {r['name']} | {r['reference_vs_float64']:.1e} | {r['bnfold_vs_float64']:.1e} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "## Latency, ONNX Runtime CPU (ORT_ENABLE_ALL, 1 thread, batch 1)",
        "",
        "Median of per-round ratios against the BN-deleted twin run through bnfold too (its",
        "computed zero biases evaluated), interquartile range in brackets; the three graphs",
        f"timed in interleaved rounds, {result['latency_seconds']:g} s per network.",
        "",
        "| network | twin ms | unfolded / twin | bnfold / twin |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency"]
        u, f = lat["unfolded_vs_twin_iqr"], lat["folded_vs_twin_iqr"]
        lines.append(
            f"| {r['name']} | {lat['twin_ms']:.2f} | {lat['unfolded_vs_twin']:.3f} "
            f"({u[0]:.3f}-{u[1]:.3f}) | {lat['folded_vs_twin']:.3f} ({f[0]:.3f}-{f[1]:.3f}) |"
        )
    lines += [
        "",
        "## Fold time",
        "",
        f"Seconds per network for `fold()` (one run, this machine), by node count; all {n}:",
        f"{summ['fold_seconds_total']:.1f} s. A least-squares fit of log(seconds) on log(nodes)",
        f"gives seconds ~ nodes^{summ['fold_time_exponent']:.2f}. `evaluated`: nodes computed as",
        "constants before folding.",
        "",
        "| network | nodes | BNs | evaluated | fold s | export s |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["nodes"]):
        export_s = "cached" if r["export_s"] is None else f"{r['export_s']:.1f}"
        lines.append(
            f"| {r['name']} | {r['nodes']} | {r['bns']} | {r['evaluated']} | "
            f"{r['fold_s']:.2f} | {export_s} |"
        )
    lines += reading(rows, summ)
    lines += ["", "## What bnfold left, and why (from its fold report)", ""]
    for r in rows:
        if not r["left"]:
            continue
        reasons = Counter(reason for b in r["left"] for reason in b["reasons"])
        kinds = Counter(res.split(" ")[0] for b in r["left"] for res in b["residual"])
        lines.append(
            f"- **{r['name']}**: {len(r['left'])} of {r['bns']} BNs left "
            + ", ".join(f"{k} {op}" for op, k in sorted(kinds.items()))
            + ". Most frequent reasons:"
        )
        for reason, count in reasons.most_common(4):
            lines.append(f"  - ({count}x) {reason}")
    return "\n".join(lines) + "\n"


def reading(rows: list[dict[str, Any]], summ: dict[str, Any]) -> list[str]:
    by_name = {r["name"]: r for r in rows}
    left = [r["name"] for r in rows if (r["tools"]["bnfold"].get("extra_ops") or 0) > 0]
    crashed = [r["name"] for r in rows if r["tools"]["bnfold"].get("extra_ops") is None]
    others = [t for t in ("onnxsim", "onnxslim", "onnxruntime") if t in TOOLS]
    free_elsewhere = sorted(
        {
            r["name"]
            for r in rows
            for t in others
            if r["tools"][t].get("extra_ops") is not None and r["tools"][t]["extra_ops"] <= 0
        }
    )
    fl, ul = summ["folded_vs_twin_range"], summ["unfolded_vs_twin_range"]
    lines = [
        "",
        "## Reading the tables",
        "",
        f"- bnfold removes every op the BNs cost on {summ['bn_free']['bnfold']} of "
        f"{summ['networks']} networks and fails on "
        + (", ".join(crashed) or "none")
        + "; where it leaves ops ("
        + ", ".join(left)
        + ") no local exact rewrite removes them, and the fold report says why for each BN"
        " (last section).",
        "- Below zero, the fold also removed ops the twin keeps: an identity branch folded into"
        " its sibling's centre tap takes its Add with it (RepVGG: one per block with an identity"
        " branch); each token Linear's flattening Reshape, moved in front of its Gemm, takes a"
        " constant shape `[-1, C]`, and the shape it computed from the batch size is gone"
        " (levit-mlp).",
        "- onnxsim, onnxslim and ONNX Runtime fuse Conv+BN only where the Conv has a bias of its"
        " own (" + (", ".join(free_elsewhere) or "none") + "): torch's dynamo exporter"
        " (`optimize=False`) gives a bias-less Conv a zero bias computed in the graph,"
        " `Expand(CastLike(0, x), Shape(w))`, and their Conv+BN patterns do not match it."
        " onnxscript's optimizer folds constants first, then fuses Conv+BN, but no BN after an"
        " activation, a pool, a sum or on tokens.",
        f"- Parity: bnfold's graph is never further from the float64 network than "
        f"{summ['bnfold_vs_float64_over_reference_max']:.1f}x the unfolded export's own distance"
        " (the float32 noise floor of random deep networks, up to "
        f"{max(r['reference_vs_float64'] for r in rows):.1e} here).",
        f"- Latency: bnfold / twin {fl[0]:.2f} to {fl[1]:.2f} (the folded graph and the twin"
        " have the same op list wherever the BNs cost nothing: the spread is this shared"
        f" machine's noise); unfolded / twin {ul[0]:.2f} to {ul[1]:.2f}.",
    ]
    if "densenet121" in by_name:
        lines.append(
            "- densenet121: each BN reads the concatenation of all earlier features, which later"
            " concatenations read too, and a ReLU with a negative-gamma channel follows it: the"
            " map can go neither back nor forward."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--only", nargs="*", help="network names (default: all)")
    parser.add_argument("--quick", action="store_true", help="short latency (smoke test)")
    parser.add_argument("--seconds", type=float, default=None, help="latency seconds per network")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only rewrite zoo.md from a zoo.json"
    )
    parser.add_argument(
        "--merge", action="store_true", help="replace these networks' rows in the existing zoo.json"
    )
    args = parser.parse_args()
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
        (args.out / "zoo.md").write_text(markdown(result))
        return
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 3.0)
    names = args.only or [*TORCHVISION, *BLOCKS]
    random.seed(0)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    started = time.perf_counter()
    rows = []
    for net in networks(names, args.cache):
        row = measure(net, seconds)
        rows.append(row)
        costs = " ".join(f"{t}={row['tools'][t].get('extra_ops')}" for t in TOOLS)
        print(
            f"{row['name']:22s} nodes={row['nodes']:5d} fold={row['fold_s']:.2f}s {costs} "
            f"err={row['tools']['bnfold'].get('max_rel_error')} "
            f"lat={row['latency']['folded_vs_twin']:.3f}",
            flush=True,
        )
    env = environment()
    if args.merge:
        previous = json.loads((args.out / "zoo.json").read_text())
        fresh = {r["name"]: r for r in rows}
        rows = [fresh.pop(r["name"], r) for r in previous["networks"]] + list(fresh.values())
        seconds = previous["latency_seconds"]
        env = {**previous["environment"], "rerun": {"date": env["date"], "networks": names}}
    result = {
        "environment": env,
        "size": SIZE,
        "latency_seconds": seconds,
        "networks": rows,
        "summary": summary(rows),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "zoo.md").write_text(markdown(result))
    print(f"wrote {args.out / 'zoo.md'} and zoo.json in {result['wall_seconds']} s")


if __name__ == "__main__":
    main()
