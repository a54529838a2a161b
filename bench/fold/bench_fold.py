"""Folding benchmark: what do the BNs still cost after each tool, and how fast is the result?

(a) Ops: each network is run through bnfold, onnxoptimizer (its fuse and
    elimination passes, fuse_bn_into_conv among them), onnxsim, onnxscript's
    optimizer and ONNX Runtime's own graph optimizations (ORT_ENABLE_ALL,
    saved with ``SessionOptions.optimized_model_filepath``). The same tool is
    run on the same network with its BN layers deleted; the difference in op
    count is what the BNs still cost. Per placement (tiny graphs, BN as a node
    and as tf2onnx-style Mul/Add) and per architecture (converter/models.py,
    exported like the pipeline does, random BN statistics, mixed-sign gamma).
(b) Latency: unfolded, bnfold-folded and BN-deleted networks on ORT CPU
    (ORT_ENABLE_ALL, as served), batch 1 and 64, measured interleaved in the
    same run; reported as medians of per-round ratios against BN-deleted.

    python bench/fold/bench_fold.py [--quick] [--out bench/results]

Writes ``fold.md`` and ``fold.json`` to the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.parser
from onnx import helper, numpy_helper

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
)
from bench.timing import cpu_session, interleaved  # noqa: E402
from bnfold.converter.verify import random_inputs, verify_onnx  # noqa: E402
from bnfold.folding import fold  # noqa: E402

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
ELEMENTWISE = {"BatchNormalization", "Mul", "Add", "Sub", "Div"}
# the versions environment() records
DISTS = ("onnx", "onnxruntime", "onnxruntime-gpu", "onnxoptimizer", "onnxsim", "onnxscript",
         "numpy", "torch")  # fmt: skip

# ---- networks -----------------------------------------------------------------------------

PLACEMENTS: dict[str, tuple[str, dict[str, list[int]]]] = {
    "conv -> BN (textbook)": (
        """g (float[N, 8, 16, 16] x) => (float[N, 16, 16, 16] z) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            y = BatchNormalization (c, gamma, beta, mean, var)
            z = Relu (y)
        }""",
        {"w": [16, 8, 3, 3], "b": [16]},
    ),
    "after activation": (
        """g (float[N, 8, 16, 16] x) => (float[N, 16, 12, 12] z) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            r = Relu (c)
            y = BatchNormalization (r, gamma, beta, mean, var)
            z = Conv (y, w2, b2)
        }""",
        {"w": [16, 8, 3, 3], "b": [16], "w2": [16, 16, 5, 5], "b2": [16]},
    ),
    "after MaxPool": (
        """g (float[N, 8, 16, 16] x) => (float[N, 16, 6, 6] z) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            r = Relu (c)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
            y = BatchNormalization (p, gamma, beta, mean, var)
            z = Conv (y, w2, b2)
        }""",
        {"w": [16, 8, 3, 3], "b": [16], "w2": [16, 16, 3, 3], "b2": [16]},
    ),
    "before MaxPool (mixed-sign gamma)": (
        """g (float[N, 8, 16, 16] x) => (float[N, 16, 6, 6] z) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            r = Relu (c)
            y = BatchNormalization (r, gamma, beta, mean, var)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (y)
            z = Conv (p, w2, b2)
        }""",
        {"w": [16, 8, 3, 3], "b": [16], "w2": [16, 16, 3, 3], "b2": [16]},
    ),
    "after Flatten": (
        """g (float[N, 8, 8, 8] x) => (float[N, 10] z) {
            c = Conv (x, w, b)
            r = Relu (c)
            f = Flatten (r)
            y = BatchNormalization (f, gamma, beta, mean, var)
            z = Gemm <transB = 1> (y, w2, b2)
        }""",
        {"w": [16, 8, 3, 3], "b": [16], "w2": [10, 576], "b2": [10]},
    ),
    "first layer": (
        """g (float[N, 16, 16, 16] x) => (float[N, 16, 14, 14] z) {
            y = BatchNormalization (x, gamma, beta, mean, var)
            c = Conv (y, w, b)
            z = Relu (c)
        }""",
        {"w": [16, 16, 3, 3], "b": [16]},
    ),
    "after Concat": (
        """g (float[N, 8, 16, 16] x) => (float[N, 16, 16, 16] z) {
            c1 = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            c2 = Conv <pads = [1, 1, 1, 1]> (x, w2, b2)
            k = Concat <axis = 1> (c1, c2)
            y = BatchNormalization (k, gamma, beta, mean, var)
            z = Relu (y)
        }""",
        {"w": [8, 8, 3, 3], "b": [8], "w2": [8, 8, 3, 3], "b2": [8]},
    ),
    "after Add": (
        """g (float[N, 8, 16, 16] x) => (float[N, 16, 16, 16] z) {
            c1 = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            c2 = Conv (x, w2, b2)
            a = Add (c1, c2)
            y = BatchNormalization (a, gamma, beta, mean, var)
            z = Relu (y)
        }""",
        {"w": [16, 8, 3, 3], "b": [16], "w2": [16, 8, 1, 1], "b2": [16]},
    ),
    "BN -> BN": (
        """g (float[N, 8, 16, 16] x) => (float[N, 16, 16, 16] z) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            y = BatchNormalization (c, gamma, beta, mean, var)
            y2 = BatchNormalization (y, gamma2, beta2, mean2, var2)
            z = Relu (y2)
        }""",
        {"w": [16, 8, 3, 3], "b": [16]},
    ),
    "MatMul + Add -> BN": (
        """g (float[N, 64] x) => (float[N, 16] z) {
            m = MatMul (x, w)
            a = Add (m, b)
            y = BatchNormalization (a, gamma, beta, mean, var)
            z = Relu (y)
        }""",
        {"w": [64, 16], "b": [16]},
    ),
}

KERAS_NHWC = """g (float[N, 16, 16, 8] x) => (float[N, 6, 6, 16] z) {
    t0 = Transpose <perm = [0, 3, 1, 2]> (x)
    c0 = Conv <pads = [1, 1, 1, 1]> (t0, w, b)
    h0 = Transpose <perm = [0, 2, 3, 1]> (c0)
    r0 = Relu (h0)
    m0 = Mul (r0, gamma)
    y = Add (m0, beta)
    t1 = Transpose <perm = [0, 3, 1, 2]> (y)
    p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (t1)
    c1 = Conv (p1, w2, b2)
    z = Transpose <perm = [0, 2, 3, 1]> (c1)
}"""


def _random_stats(model: onnx.ModelProto, rng: np.random.Generator, positive: bool) -> None:
    """Give every BN random statistics (in place); gamma mixed-sign unless ``positive``."""
    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        c = _channels(model, node)
        gamma = rng.uniform(0.5, 1.5, c) * (1 if positive else rng.choice([-1.0, 1.0], c))
        values = [gamma, rng.normal(0, 0.5, c), rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)]
        for name, value in zip(node.input[1:5], values, strict=True):
            t = numpy_helper.from_array(value.astype(np.float32), name)
            if name in inits:
                model.graph.initializer[inits[name]].CopyFrom(t)
            else:
                model.graph.initializer.append(t)
                inits[name] = len(model.graph.initializer) - 1


def _channels(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    for t in model.graph.initializer:
        if t.name == node.input[1]:
            return int(t.dims[0])
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in (*inferred.graph.value_info, *inferred.graph.input):
        if vi.name == node.input[0]:
            return int(vi.type.tensor_type.shape.dim[1].dim_value)
    raise ValueError(f"channels of {node.name} unknown")


def placement_model(text: str, shapes: dict[str, list[int]], seed: int) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEADER + "\n" + text)
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        value = rng.normal(0, 0.3, shape)
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    _random_stats(model, rng, positive=False)
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    onnx.checker.check_model(model, full_check=True)
    return model


def keras_nhwc_model(seed: int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(HEADER + "\n" + KERAS_NHWC)
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type}_{i}"
    arrays = {
        "w": rng.normal(0, 0.3, (16, 8, 3, 3)),
        "b": rng.normal(0, 0.3, 16),
        "w2": rng.normal(0, 0.3, (16, 16, 3, 3)),
        "b2": rng.normal(0, 0.3, 16),
        "gamma": rng.uniform(0.5, 1.5, 16),  # > 0: the BN sits before a MaxPool
        "beta": rng.normal(0, 0.5, 16),
    }
    for name, value in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    deleted = copy.deepcopy(model)
    _bypass(deleted, [n for n in deleted.graph.node if n.output[0] in ("m0", "y")])
    return model, deleted


def _bypass(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Delete one-in one-out nodes, wiring their readers to their input."""
    outputs = {o.name for o in model.graph.output}
    for node in nodes:
        x = next(i for i in node.input if i not in {t.name for t in model.graph.initializer})
        y = node.output[0]
        model.graph.node.remove(node)
        if y in outputs:
            for n in model.graph.node:
                for i, o in enumerate(n.output):
                    if o == x:
                        n.output[i] = y
            x, y = y, x
        for n in model.graph.node:
            for i, name in enumerate(n.input):
                if name == y:
                    n.input[i] = x


def delete_bn(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every BatchNormalization node removed."""
    out = copy.deepcopy(model)
    _bypass(out, [n for n in out.graph.node if n.op_type == "BatchNormalization"])
    used = {i for n in out.graph.node for i in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def to_mul_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """tf2onnx style: every BN becomes Mul(x, s) -> Add(., t), constants (C,1,1) or (C,)."""
    out = copy.deepcopy(model)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(out)
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in (*inferred.graph.value_info, *inferred.graph.input)
    }
    nodes = []
    for node in out.graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        gamma, beta, mean, var = (inits[n].astype(np.float64) for n in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        s = gamma / np.sqrt(var + eps)
        t = beta - mean * s
        shape = (-1,) + (1,) * (ranks[node.input[0]] - 2)
        s_name, t_name, mid = node.name + "_scale", node.name + "_offset", node.output[0] + "_mul"
        out.graph.initializer.append(
            numpy_helper.from_array(s.reshape(shape).astype(np.float32), s_name)
        )
        out.graph.initializer.append(
            numpy_helper.from_array(t.reshape(shape).astype(np.float32), t_name)
        )
        nodes.append(
            helper.make_node("Mul", [node.input[0], s_name], [mid], name=node.name + "_mul")
        )
        nodes.append(
            helper.make_node("Add", [mid, t_name], [node.output[0]], name=node.name + "_add")
        )
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return delete_unused(out)


def delete_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def randomise_bn(model: Any, gen: Any, *, positive: bool = False) -> None:
    """Trained-looking BN statistics; gamma of mixed sign unless ``positive``."""
    import torch

    from bnfold.converter.models import bn_modules

    with torch.no_grad():
        for name in bn_modules(model):
            bn = model.get_submodule(name)
            n = bn.num_features
            sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
            bn.weight.copy_((1.0 if positive else sign) * (0.5 + torch.rand(n, generator=gen)))
            bn.bias.copy_(0.5 * torch.randn(n, generator=gen))
            bn.running_mean.copy_(0.5 * torch.randn(n, generator=gen))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))


def architectures(positive_fer: bool = True) -> dict[str, tuple[onnx.ModelProto, onnx.ModelProto]]:
    """(with BN, BN deleted) per architecture, exported as the pipeline exports them."""
    import torch

    from bnfold.converter.export import export_reference
    from bnfold.converter.models import DEFAULT_INPUT_SHAPES, ArchConfig, build_model

    classes = {"mlp": 10, "cifar-cnn": 10, "fer-cnn": 7, "resnet": 10}
    nets = {}
    variants = [(a, False) for a in classes] + ([("fer-cnn", True)] if positive_fer else [])
    for arch, positive in variants:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        with_bn = build_model(ArchConfig(arch, DEFAULT_INPUT_SHAPES[arch], classes[arch])).eval()
        randomise_bn(with_bn, gen, positive=positive)
        config = ArchConfig(arch, DEFAULT_INPUT_SHAPES[arch], classes[arch])
        no_bn_config = ArchConfig(arch, DEFAULT_INPUT_SHAPES[arch], classes[arch], bn=False)
        with quiet():
            ref = export_reference(with_bn, config)
            deleted = export_reference(build_model(no_bn_config).eval(), no_bn_config)
        label = arch + (" (gamma > 0)" if positive else "")
        nets[label] = (ref, deleted)
    return nets


@contextlib.contextmanager
def quiet():
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        yield


# ---- tools ----------------------------------------------------------------------------------


TOOLS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "none": copy_model,
    "bnfold": t_bnfold,
    "onnxoptimizer": t_onnxoptimizer,
    "onnxsim": t_onnxsim,
    "onnxscript": t_onnxscript,
    "onnxruntime": t_onnxruntime,
}


def bn_cost(tool: Callable[[onnx.ModelProto], onnx.ModelProto], with_bn, deleted) -> dict[str, Any]:
    """Ops the BNs still cost: op count after the tool minus the BN-deleted count after it."""
    try:
        with quiet():
            a, b = tool(with_bn), tool(deleted)
    except Exception as exc:  # a tool that fails on a graph is a result too
        return {"extra_ops": None, "error": f"{type(exc).__name__}: {exc}"[:200]}
    ops_a, ops_b = (
        Counter(n.op_type for n in a.graph.node),
        Counter(n.op_type for n in b.graph.node),
    )
    left = {op: n for op, n in (ops_a - ops_b).items() if n}
    return {
        "extra_ops": sum(ops_a.values()) - sum(ops_b.values()),
        "bn_nodes": ops_a["BatchNormalization"],
        "elementwise_left": {op: n for op, n in left.items() if op in ELEMENTWISE},
        "ops": sum(ops_a.values()),
        "ops_bn_deleted": sum(ops_b.values()),
    }


def op_table(nets: dict[str, tuple[onnx.ModelProto, onnx.ModelProto]]) -> dict[str, dict[str, Any]]:
    rows = {}
    for label, (with_bn, deleted) in nets.items():
        rows[label] = {tool: bn_cost(fn, with_bn, deleted) for tool, fn in TOOLS.items()}
        folded, report = fold(with_bn)
        parity = verify_onnx(with_bn, folded, n_random=8, seed=0)
        rows[label]["bnfold_parity"] = {
            "passed": parity["passed"],
            "max_rel_error": parity["max_rel_error"],
            "bn_before": report.bn_before,
            "bn_after": report.bn_after,
            "residual_ops": report.residual_ops,
        }
        print(
            f"  ops  {label:40s} " + " ".join(f"{t}={rows[label][t]['extra_ops']}" for t in TOOLS)
        )
    return rows


# ---- latency ---------------------------------------------------------------------------------


def latency(
    models: dict[str, onnx.ModelProto], batch: int, seconds: float, threads: int
) -> dict[str, Any]:
    """Interleaved rounds (bench/timing.py) against BN-deleted."""
    feeds = random_inputs(next(iter(models.values())), batch, seed=0)
    sessions = {k: cpu_session(m, threads) for k, m in models.items()}
    runners = {k: functools.partial(s.run, None, feeds) for k, s in sessions.items()}
    timed = interleaved(runners, "deleted", seconds, warmup=5)
    out: dict[str, Any] = {"batch": batch, "rounds": timed.rounds, "runs_per_block": timed.block}
    for k in timed.times:
        out[f"{k}_ms"] = timed.ms(k)
    for k in ("unfolded", "folded"):
        out[f"{k}_vs_deleted"], out[f"{k}_vs_deleted_iqr"] = timed.versus(k, "deleted")
    return out


# ---- report ----------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return timing.environment(DISTS)


def _cell(entry: dict[str, Any]) -> str:
    if entry.get("extra_ops") is None:
        return "error"
    left = entry["elementwise_left"]
    detail = ", ".join(f"{n} {op}" for op, n in sorted(left.items()))
    return f"{entry['extra_ops']:+d}" + (f" ({detail})" if detail else "")


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    tools = [t for t in TOOLS if t != "none"]
    lines = [
        "# BN folding benchmark",
        "",
        timing.describe(env),
        "",
        "## Ops the BNs still cost",
        "",
        "Op count after the tool minus op count of the same network with its BN layers deleted,",
        "run through the same tool (0 = the BNs cost nothing; in brackets: elementwise ops left).",
        "`none` is the untouched graph. Random BN statistics, mixed-sign gamma unless stated.",
        "",
    ]
    for section, rows in (
        ("Placements", result["placements"]),
        ("Architectures", result["architectures"]),
    ):
        lines += [
            f"### {section}",
            "",
            "| network | none | " + " | ".join(tools) + " | bnfold parity |",
        ]
        lines.append("|---" * (len(tools) + 3) + "|")
        for label, row in rows.items():
            par = row["bnfold_parity"]
            check = f"{'ok' if par['passed'] else 'FAIL'} ({par['max_rel_error']:.1e})"
            cells = [_cell(row[t]) for t in ["none", *tools]]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {check} |")
        lines.append("")
    lines += [
        "## Latency, ONNX Runtime CPU (ORT_ENABLE_ALL)",
        "",
        "Median of per-round ratios against the BN-deleted network (interquartile range),",
        f"all three timed interleaved in the same run; {result['threads']} intra-op thread(s), "
        f"{result['latency_seconds_per_case']:g} s per case.",
        "",
        "| network | batch | BN-deleted ms | unfolded / deleted | bnfold / deleted |",
        "|---|---|---|---|---|",
    ]
    for label, per_batch in result["latency"].items():
        for r in per_batch:
            u, f = r["unfolded_vs_deleted_iqr"], r["folded_vs_deleted_iqr"]
            lines.append(
                f"| {label} | {r['batch']} | {r['deleted_ms']:.3f} | "
                f"{r['unfolded_vs_deleted']:.3f} ({u[0]:.3f}-{u[1]:.3f}) | "
                f"{r['folded_vs_deleted']:.3f} ({f[0]:.3f}-{f[1]:.3f}) |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="short latency runs (smoke test)")
    parser.add_argument("--seconds", type=float, default=None, help="latency seconds per case")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ORT intra-op threads (1: on small shared machines more threads add noise, not speed)",
    )
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 12.0)
    random.seed(0)
    started = time.perf_counter()

    print("placements")
    placements: dict[str, tuple[onnx.ModelProto, onnx.ModelProto]] = {}
    for i, (label, (text, shapes)) in enumerate(PLACEMENTS.items()):
        model = placement_model(text, shapes, seed=i)
        placements[label] = (model, delete_bn(model))
        placements[label + ", as Mul/Add"] = (to_mul_add(model), delete_bn(model))
    placements["Keras NHWC: Transposes, Mul/Add on C last (gamma > 0)"] = keras_nhwc_model(seed=99)
    place_rows = op_table(placements)

    print("architectures")
    nets = architectures()
    arch_nets: dict[str, tuple[onnx.ModelProto, onnx.ModelProto]] = {}
    for label, (ref, deleted) in nets.items():
        arch_nets[label] = (ref, deleted)
        if "gamma > 0" not in label:
            arch_nets[label + ", as Mul/Add"] = (to_mul_add(ref), deleted)
    arch_rows = op_table(arch_nets)

    print("latency")
    lat: dict[str, list[dict[str, Any]]] = {}
    for label, (ref, deleted) in nets.items():
        models = {"unfolded": ref, "folded": fold(ref)[0], "deleted": deleted}
        lat[label] = []
        for batch in (1, 64):
            r = latency(models, batch, seconds, args.threads)
            lat[label].append(r)
            print(
                f"  {label:22s} b={batch:<3d} deleted {r['deleted_ms']:.3f} ms  "
                f"unfolded x{r['unfolded_vs_deleted']:.3f}  folded x{r['folded_vs_deleted']:.3f}"
            )

    result = {
        "environment": environment(),
        "threads": args.threads,
        "latency_seconds_per_case": seconds,
        "placements": place_rows,
        "architectures": arch_rows,
        "latency": lat,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fold.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "fold.md").write_text(markdown(result))
    print(f"wrote {args.out / 'fold.md'} and fold.json in {result['wall_seconds']} s")


if __name__ == "__main__":
    main()
