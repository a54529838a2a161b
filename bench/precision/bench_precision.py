"""int8 after folding, against ONNX Runtime's own quantization flow (issue 22, item 4).

Per converter architecture (converter/models.py), trained briefly on the
embedded digits by ``bnfold convert``'s pipeline (the graphs take the raw
counts 0..16, the input normalisation folded in), the same calibration rows
(the training split) and the same quantizer settings (QDQ, int8 symmetric
per-channel weights with ``reduce_range``, int8 activations, MinMax) go
through three flows, side by side in one run:

- ``bnfold``: ``bnfold fold`` then ``bnfold quantize`` (converter/quantize.py:
  shape inference only, then ``quantize_static``, then the gate, whose
  verdict is recorded: a graph that fails it is measured all the same);
- ``ort pre+quant``: ``quant_pre_process`` (ONNX Runtime's optimizer, which
  is meant to fuse Conv+BN) then ``quantize_static``, on the unfolded export
  (reference.onnx, every BN kept);
- ``ort direct``: ``quantize_static`` on the unfolded export as it is;

with the float32 folded graph (and the unfolded export) beside them.

The torchvision zoo goes through the same flows: bench/zoo's networks
(``bench.zoo.run.networks``: random weights, BN statistics calibrated,
dynamo export with every BN kept, cached, SIZE x SIZE inputs), with no labels:
:data:`ZOO_CALIBRATION_ROWS` random inputs drawn as bench/zoo draws them
(``bench.zoo.run.inputs``, seed 1) calibrate, and :data:`ZOO_HELDOUT_ROWS`
others (seed 2) measure top-1 agreement with float32 folded and run the gate
(accuracy "—"). By default :data:`ZOO_DEFAULT`, ``--zoo all`` for every
network bench/zoo lists.

Columns: accuracy on the test split and top-1 agreement with float32 folded, ops left
(BatchNormalization nodes, and every node that is not a Q/DQ), model size,
ONNX Runtime CPU latency at batch 1 and 32 (ORT_ENABLE_ALL, one intra-op
thread, interleaved rounds in random order: medians, and the median of the
per-round ratios against float32 folded).

    python -m bench.precision.bench_precision [--arch A ...] [--zoo default|all|none|N,N]
        [--seconds S] [--cache DIR] [--out bench/results] [--from-json precision.json]

Writes ``precision.md`` and ``precision.json``. The load average is recorded
before the run, at its end (the run's own threads count there) and after a
rest with nothing of the run left (``--rest``); when the reading before or
after the rest is above 1, other work shared the machine and the results are
labelled a rehearsal.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.fold.bench_fold import quiet  # noqa: E402
from bench.timing import cpu_session, describe, interleaved  # noqa: E402
from bench.zoo import run as zoo  # noqa: E402
from bnfold.converter.quantize import (  # noqa: E402
    HeldOut,
    QuantizeOptions,
    converter_data,
    gate,
    served_outputs,
    to_float16,
    to_int8,
)
from bnfold.folding import fold  # noqa: E402

# (epochs, limit): a short training each, ~10 CPU-minutes for the whole run on 2 cores;
# cifar-cnn on every digit (the done-when target), the others on 600.
TRAINING = {"mlp": (10, None), "cifar-cnn": (3, None), "fer-cnn": (2, 600), "resnet": (3, 600)}
# The torchvision zoo by default: the networks of bench/zoo whose float32 graph runs
# a batch of 32 at 96x96 in well under a second on one core (bench/results/zoo.md,
# batch 1: under 6 ms), one or two per family; resnet18 (14x mobilenet_v2's time there)
# is the one plain residual network. `--zoo all` adds resnet50, resnext50,
# densenet121, vgg11_bn, googlenet, inception_v3, efficientnet_v2_s and the
# larger variants (vgg11_bn alone: 125 ms at batch 1).
ZOO_DEFAULT = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5",
               "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_y_400mf")  # fmt: skip
# Random inputs: 4 calibration batches (bnfold quantize's minimum is 64 rows), and
# a separate held-out set for agreement and the gate (1 row = 0.4 points).
ZOO_CALIBRATION_ROWS = 128
ZOO_HELDOUT_ROWS = 256
FLOWS = ("float32 unfolded", "float32 folded", "bnfold int8", "ort pre+quant int8",
         "ort direct int8", "bnfold fp16")  # fmt: skip
QDQ = {"QuantizeLinear", "DequantizeLinear"}


def ort_quantize(model: onnx.ModelProto, calibration: dict[str, np.ndarray], pre: bool) -> Any:
    """ONNX Runtime's flow on the unfolded export, with bnfold's quantizer settings."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rows = len(next(iter(calibration.values()))) // 32 * 32
    batches = iter([{k: v[i : i + 32] for k, v in calibration.items()} for i in range(0, rows, 32)])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, shaped, out = (str(Path(tmp) / n) for n in ("in.onnx", "pre.onnx", "q.onnx"))
        onnx.save(model, src)
        note = ""
        if pre:
            try:
                quant_pre_process(src, shaped)
            except Exception as e:  # symbolic shape inference refuses some exports
                note = f"symbolic shape inference failed ({type(e).__name__}); ONNX's used"
                quant_pre_process(src, shaped, skip_symbolic_shape=True)
            src = shaped
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                reduce_range=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )  # fmt: skip
        return onnx.load(out), note


def counts(model: onnx.ModelProto) -> dict[str, int]:
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return {
        "bn": ops["BatchNormalization"],
        "compute_ops": sum(n for op, n in ops.items() if op not in QDQ),
        "qdq_ops": sum(ops[op] for op in QDQ),
    }


def latency(
    models: dict[str, onnx.ModelProto], feeds: dict[str, np.ndarray], seconds: float
) -> dict[str, Any]:
    """Interleaved rounds (bench/timing.py) against float32 folded."""
    sessions = {k: cpu_session(m, 1) for k, m in models.items()}
    runners = {k: functools.partial(s.run, None, feeds) for k, s in sessions.items()}
    timed = interleaved(runners, "float32 folded", seconds, warmup=3)
    out: dict[str, Any] = {"rounds": timed.rounds}
    for k in models:
        vs_folded, iqr = timed.versus(k, "float32 folded")
        out[k] = {"ms": timed.ms(k), "vs_folded": vs_folded, "vs_folded_iqr": iqr}
    return out


def one_network(arch: str, repo: Path, seconds: float) -> dict[str, Any]:
    """A converter architecture, trained briefly on the digits; its own splits."""
    from bnfold.converter.pipeline import ConvertOptions, convert

    epochs, limit = TRAINING[arch]
    with quiet():
        result = convert(
            ConvertOptions(arch=arch, repo=repo, name=arch, epochs=epochs, limit=limit)
        )
    vdir = result.version_dir
    reference = onnx.load(str(vdir / "reference.onnx"))
    folded = onnx.load(str(vdir / "model.onnx"))
    heldout, calibration = converter_data(result.manifest, folded)
    report = result.manifest["folding"]["report"]
    rows = len(next(iter(heldout.feeds.values())))
    return {
        "kind": "converter",
        "training": {"epochs": epochs, "limit": limit, "test_rows": rows},
        **flows(arch, reference, folded, report, heldout, calibration.feeds, seconds),
    }


def one_zoo_network(net: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A bench/zoo network: random weights, no labels; agreement is the headline."""
    reference = net["with_bn"]
    t = time.perf_counter()
    folded, report = fold(reference)
    fold_s = time.perf_counter() - t
    name = reference.graph.input[0].name
    heldout = HeldOut(
        {name: zoo.inputs(ZOO_HELDOUT_ROWS, seed=2)},
        None,
        f"{ZOO_HELDOUT_ROWS} N(0, 1) inputs (seed 2)",
    )
    calibration = {name: zoo.inputs(ZOO_CALIBRATION_ROWS, seed=1)}
    return {
        "kind": "zoo",
        "zoo": {
            "size": zoo.SIZE,
            "bns": report.bn_before,
            "calibration_rows": ZOO_CALIBRATION_ROWS,
            "heldout_rows": ZOO_HELDOUT_ROWS,
            "export_s": net["export_s"],
            "fold_s": round(fold_s, 2),
        },
        **flows(net["name"], reference, folded, report.to_dict(), heldout, calibration, seconds),
    }


def flows(
    label: str,
    reference: onnx.ModelProto,
    folded: onnx.ModelProto,
    fold_report: dict[str, Any],
    heldout: HeldOut,
    calibration: dict[str, np.ndarray],
    seconds: float,
) -> dict[str, Any]:
    """Every flow of :data:`FLOWS` on one network: quality, ops, size, latency."""
    models: dict[str, onnx.ModelProto] = {"float32 unfolded": reference, "float32 folded": folded}
    notes: dict[str, str] = {}
    gates: dict[str, Any] = {}
    t = time.perf_counter()
    for precision in ("int8", "fp16"):  # quantize_graph's steps, kept when the gate fails
        opts = QuantizeOptions(precision)
        with quiet():
            if precision == "int8":
                new = to_int8(folded, calibration, opts)
            else:
                new = to_float16(folded, fold_report)
            record = gate(folded, new, heldout, opts.thresholds)
        models[f"bnfold {precision}"] = new
        gates[precision] = {k: v for k, v in record.items() if k != "comparisons"}
    seconds_bnfold = time.perf_counter() - t
    with quiet():
        models["ort pre+quant int8"], notes["ort pre+quant int8"] = ort_quantize(
            reference, calibration, pre=True
        )
        models["ort direct int8"], notes["ort direct int8"] = ort_quantize(
            reference, calibration, pre=False
        )
    output = folded.graph.output[0].name
    expected = served_outputs(folded, heldout.feeds)[output].argmax(1)
    rows: dict[str, Any] = {}
    for flow in FLOWS:
        top1 = served_outputs(models[flow], heldout.feeds)[output].argmax(1)
        rows[flow] = {
            "accuracy": None if heldout.labels is None else float(np.mean(top1 == heldout.labels)),
            "agreement": float(np.mean(top1 == expected)),
            "bytes": models[flow].ByteSize(),
            **counts(models[flow]),
            "note": notes.get(flow, ""),
        }
    name = next(iter(heldout.feeds))
    x = heldout.feeds[name]
    timing = {}
    for batch in (1, 32):
        feeds = {name: np.resize(x, (batch, *x.shape[1:])).astype(np.float32)}
        timing[str(batch)] = latency(models, feeds, seconds)
        r = timing[str(batch)]
        print(
            f"  {label:18s} b={batch:<3d} "
            + ", ".join(f"{k} x{r[k]['vs_folded']:.2f}" for k in FLOWS),
            flush=True,
        )
    return {
        "bnfold_quantize_seconds": round(seconds_bnfold, 2),
        "gates": gates,
        "flows": rows,
        "latency": timing,
    }


def zoo_names(choice: str) -> list[str]:
    """``--zoo``: default, all, none, or network names separated by commas."""
    every = list(zoo.TORCHVISION)
    if choice in ("default", "all", "none"):
        return {"default": list(ZOO_DEFAULT), "all": every, "none": []}[choice]
    names = [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in every]
    if unknown:
        raise SystemExit(f"--zoo: unknown {', '.join(unknown)}; bench/zoo lists {', '.join(every)}")
    return names


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    load = result["load_average"]
    settled = load.get("after_rest", load["after"])
    rehearsal = max(load["before"][0], settled[0]) > 1
    nets = result["networks"]
    measured = {k: v for k, v in nets.items() if "error" not in v}
    z = result.get("zoo")
    lines = [
        "# Fold, then quantize: bnfold against ONNX Runtime's own int8 flow",
        "",
        *(
            [
                "**Rehearsal**: the machine was shared while this ran (load average "
                f"{load['before'][0]:.2f} before, {settled[0]:.2f} after, on "
                f"{env['nproc']} CPUs), so latency medians are inflated and their ratios noisy;",
                "accuracy, agreement, op counts and sizes do not depend on it.",
                "",
            ]
            if rehearsal
            else []
        ),
        *(
            [
                f"A result: load average {load['before'][0]:.2f} before the run, "
                f"{load['after'][0]:.2f} at its end (its own threads), "
                f"{load['after_rest'][0]:.2f} after a {load.get('rest_seconds', 0):g} s rest.",
                "",
            ]
            if not rehearsal and "after_rest" in load
            else []
        ),
        describe(env),
        "",
        "Every flow quantizes with the same settings (QDQ, int8 symmetric per-channel weights",
        "with reduce_range, int8 activations, MinMax) on the same calibration rows (the",
        "training split); `ort pre+quant` runs `quant_pre_process` (ONNX Runtime's optimizer)",
        "on the unfolded export first, `ort direct` quantizes the unfolded export as it is.",
        "Accuracy: test split of the digits; agreement: top-1 against float32 folded; both",
        "as served (ONNX Runtime CPU, all optimizations). BN: BatchNormalization nodes left;",
        "ops: nodes that are not QuantizeLinear/DequantizeLinear. Latency: median ms, and the",
        "median of per-round ratios against float32 folded (interquartile range), 1 thread.",
        "",
    ]
    if z:
        zoo_nets = [k for k, v in nets.items() if v.get("kind") == "zoo"]
        lines += [
            f"Zoo (`--zoo {z['chosen']}`: {', '.join(zoo_nets) or 'none'}): bench/zoo's",
            f"torchvision networks at {z['size']}x{z['size']}, random weights with BN statistics",
            "calibrated, exported by torch's dynamo exporter with every BN kept",
            "(`bench.zoo.run.networks`).",
            f'No labels, so accuracy is "—": {z["calibration_rows"]} random N(0, 1) inputs',
            f"(seed 1, drawn as bench/zoo draws them) calibrate every flow, {z['heldout_rows']}",
            "others (seed 2) give the agreement with float32 folded and run bnfold's gate.",
            "The default subset holds the networks whose float32 graph runs a batch of 32",
            "in well under a second on one core (bench/results/zoo.md, batch 1: under 6 ms),",
            "one or two per family, and resnet18, the plain residual network; `--zoo all`",
            "adds " + ", ".join(n for n in z.get("every", []) if n not in z["default"]) + ".",
            "",
        ]
    lines += [
        "| network | flow | accuracy | agreement | BN | ops | Q/DQ | KB "
        "| b=1 ms | b=1 / folded | b=32 ms | b=32 / folded |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, net in measured.items():
        if net.get("kind") == "zoo":
            what = f"random, {net['zoo']['size']}x{net['zoo']['size']}"
        else:
            tr = net["training"]
            what = f"{tr['epochs']} ep, {'all' if tr['limit'] is None else tr['limit']} rows"
        for flow, row in net["flows"].items():
            b1, b32 = net["latency"]["1"][flow], net["latency"]["32"][flow]
            acc = "—" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            lines.append(
                f"| {arch} ({what}) | {flow} | {acc} | {row['agreement']:.4f} | "
                f"{row['bn']} | {row['compute_ops']} | {row['qdq_ops']} | "
                f"{row['bytes'] / 1024:.0f} | {b1['ms']:.3f} | {_ratio(b1)} | {b32['ms']:.3f} | "
                f"{_ratio(b32)} |"
            )
    lines += ["", "Notes:"]
    for arch, net in nets.items():
        if "error" in net:
            lines.append(f"- {arch}: failed after {net['seconds']} s: {net['error']}")
            continue
        for flow, row in net["flows"].items():
            if row["note"]:
                lines.append(f"- {arch}, {flow}: {row['note']}")
        g = net["gates"]["int8"]
        drop = g["accuracy_drop_points"]
        lines.append(
            f"- {arch}: bnfold's int8 gate {'passed' if g['passed'] else 'FAILED'} "
            f"(agreement {g['top1_agreement']:.4f}, accuracy drop "
            + ("— (no labels)" if drop is None else f"{drop:.2f} points")
            + f", max rel error {g['max_rel_error']:.3g}; "
            f"quantize + fp16 + both gates {net['bnfold_quantize_seconds']} s)"
            + ("" if g["passed"] else f": {'; '.join(g['failures'][:2])}, nothing would be written")
        )
    lines += reading(nets)
    lines += [
        "",
        f"Wall time {result['wall_seconds']} s, CPU time {result['cpu_seconds']} s "
        f"(training and zoo exports included); `python -m bench.precision.bench_precision` "
        "reruns it.",
    ]
    return "\n".join(lines) + "\n"


INT8 = ("bnfold int8", "ort pre+quant int8", "ort direct int8")


def reading(nets: dict[str, Any]) -> list[str]:
    """ "What it says": sentences computed from the table's numbers."""
    measured = {k: v for k, v in nets.items() if "error" not in v}
    if not measured:
        return []
    failed = [k for k, v in nets.items() if "error" in v]
    zoo_nets = [k for k, v in measured.items() if v.get("kind") == "zoo"]
    trained = [k for k, v in measured.items() if v.get("kind") != "zoo"]
    n = len(measured)
    total_bn = sum(v["flows"]["float32 unfolded"]["bn"] for v in measured.values())

    def flow(f: str, key: str) -> list[float]:
        return [v["flows"][f][key] for v in measured.values()]

    def size(f: str) -> list[float]:
        return [
            v["flows"][f]["bytes"] / v["flows"]["float32 folded"]["bytes"]
            for v in measured.values()
        ]

    def b32(f: str, among: list[str]) -> float:
        return float(np.median([measured[k]["latency"]["32"][f]["vs_folded"] for k in among]))

    lines = ["", "## What it says", "", "Computed from the table above.", ""]
    bn_left = []
    for f in INT8:
        left = flow(f, "bn")
        where = sum(1 for b in left if b)
        bn_left.append(f"{f} {int(sum(left))} (in {where} of {n} networks)")
    lines.append(
        f"- BatchNormalization nodes left, of {total_bn} in the {n} unfolded exports: "
        + "; ".join(bn_left)
        + ". What ONNX Runtime's flow keeps stays in float32 between a DequantizeLinear and"
        " a QuantizeLinear."
    )
    ops = {f: int(sum(flow(f, "compute_ops"))) for f in INT8}
    qdq = {f: int(sum(flow(f, "qdq_ops"))) for f in INT8}
    lines.append(
        "- Ops over all networks (not Q/DQ, then Q/DQ): "
        + "; ".join(f"{f} {ops[f]} and {qdq[f]}" for f in INT8)
        + "."
    )
    lines.append(
        "- Size against float32 folded (min to max over networks): "
        + "; ".join(
            f"{f} {min(size(f)):.2f}x to {max(size(f)):.2f}x" for f in (*INT8, "bnfold fp16")
        )
        + "."
    )
    if trained:
        drops = {
            f: max(
                100
                * (
                    measured[k]["flows"]["float32 folded"]["accuracy"]
                    - measured[k]["flows"][f]["accuracy"]
                )
                for k in trained
            )
            for f in INT8
        }
        lines.append(
            f"- Accuracy on the {len(trained)} trained networks, largest drop against float32"
            " folded: " + "; ".join(f"{f} {drops[f]:.2f} points" for f in INT8) + "."
        )
    if zoo_nets:
        agree = {f: [measured[k]["flows"][f]["agreement"] for k in zoo_nets] for f in INT8}
        fp16 = [measured[k]["flows"]["bnfold fp16"]["agreement"] for k in zoo_nets]
        lines.append(
            f"- Agreement with float32 folded on the {len(zoo_nets)} random-weight zoo networks"
            " (min, median): "
            + "; ".join(f"{f} {min(a):.4f}, {float(np.median(a)):.4f}" for f, a in agree.items())
            + f"; bnfold fp16 {min(fp16):.4f} at worst."
        )
    gate_fail = [k for k, v in measured.items() if not v["gates"]["int8"]["passed"]]
    fp16_fail = [k for k, v in measured.items() if not v["gates"]["fp16"]["passed"]]
    lines.append(
        f"- bnfold's int8 gate passes on {n - len(gate_fail)} of {n} networks"
        + (f" (fails: {', '.join(gate_fail)})" if gate_fail else "")
        + f"; fp16's on {n - len(fp16_fail)} of {n}"
        + (f" (fails: {', '.join(fp16_fail)})" if fp16_fail else "")
        + "."
    )
    zoo_fail = [k for k in gate_fail if k in zoo_nets]
    if zoo_fail:
        errs = [measured[k]["gates"]["int8"]["max_rel_error"] for k in zoo_fail]
        limit = measured[zoo_fail[0]]["gates"]["int8"]["thresholds"]["max_rel_error"]
        lines.append(
            f"- On the {len(zoo_fail)} zoo networks whose int8 gate fails, bnfold's int8 output"
            f" is off by {min(errs):.3g} to {max(errs):.3g} of the output's scale (limit"
            f" {limit:g}). These are random weights fed N(0, 1) inputs, not what the"
            " architectures are trained for: a failed gate says `bnfold quantize` would write"
            " nothing for that graph and those rows, and the same rows score ONNX Runtime's"
            " flows; it is no measure of int8 on trained weights."
        )
    for among, what in ((trained, "trained"), (zoo_nets, "zoo")):
        if among:
            lines.append(
                f"- Latency at batch 32 on the {what} networks, median of the per-network ratios"
                " against float32 folded: "
                + "; ".join(f"{f} {b32(f, among):.2f}x" for f in (*INT8, "bnfold fp16"))
                + "."
            )
    if failed:
        lines.append(f"- Not measured (see the notes): {', '.join(failed)}.")
    return lines


def _ratio(r: dict[str, Any]) -> str:
    lo, hi = r["vs_folded_iqr"]
    return f"{r['vs_folded']:.2f} ({lo:.2f}-{hi:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--seconds", type=float, default=4.0, help="latency seconds per case")
    parser.add_argument("--arch", action="append", choices=[*TRAINING, "none"], help="default: all")
    parser.add_argument(
        "--zoo", default="default", help="default, all, none, or names separated by commas"
    )
    parser.add_argument("--cache", type=Path, default=zoo.CACHE, help="bench/zoo's export cache")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="only rewrite precision.md from a precision.json",
    )
    parser.add_argument(
        "--rest",
        type=float,
        default=90.0,
        help="seconds of rest after the run before the last load reading (default 90)",
    )
    args = parser.parse_args()
    if args.from_json is not None:
        (args.out / "precision.md").write_text(markdown(json.loads(args.from_json.read_text())))
        return
    archs = [a for a in args.arch or TRAINING if a != "none"]
    names = zoo_names(args.zoo)
    random.seed(0)
    load_before = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    networks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for arch in archs:
            t = time.perf_counter()
            networks[arch] = one_network(arch, Path(tmp), args.seconds)
            networks[arch]["seconds"] = round(time.perf_counter() - t, 1)
    for name in names:
        networks[name] = zoo_row(name, args.cache, args.seconds)
    load_after = os.getloadavg()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"resting {args.rest:g} s for the last load reading", flush=True)
    time.sleep(args.rest)
    result = {
        "environment": zoo.environment(),  # torchvision's version too
        "load_average": {
            "before": list(load_before),
            "after": list(load_after),
            "after_rest": list(os.getloadavg()),
            "rest_seconds": args.rest,
        },
        "seconds": args.seconds,
        "zoo": {
            "default": list(ZOO_DEFAULT),
            "every": list(zoo.TORCHVISION),
            "chosen": args.zoo,
            "calibration_rows": ZOO_CALIBRATION_ROWS,
            "heldout_rows": ZOO_HELDOUT_ROWS,
            "size": zoo.SIZE,
        },
        "networks": networks,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "precision.md").write_text(markdown(result))
    print(f"wrote {args.out / 'precision.md'} in {result['wall_seconds']} s")


def zoo_row(name: str, cache: Path, seconds: float) -> dict[str, Any]:
    """One zoo network's measurement and wall time; one that fails is recorded with why."""
    t = time.perf_counter()
    print(f"  {name} ...", flush=True)
    try:
        with quiet():
            net = next(zoo.networks([name], cache, twins=False))
        out = one_zoo_network(net, seconds)
    except Exception as exc:  # a network the flows cannot take is a result too
        out = {"kind": "zoo", "error": f"{type(exc).__name__}: {exc}"[:300]}
        print(f"  {name} failed: {out['error']}", flush=True)
    return {**out, "seconds": round(time.perf_counter() - t, 1)}


if __name__ == "__main__":
    main()
