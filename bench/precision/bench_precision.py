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

with the float32 folded graph (and the unfolded export) beside them. Columns:
accuracy on the test split and top-1 agreement with float32 folded, ops left
(BatchNormalization nodes, and every node that is not a Q/DQ), model size,
ONNX Runtime CPU latency at batch 1 and 32 (ORT_ENABLE_ALL, one intra-op
thread, interleaved rounds in random order: medians, and the median of the
per-round ratios against float32 folded).

    python -m bench.precision.bench_precision [--seconds S] [--out bench/results]

Writes ``precision.md`` and ``precision.json``. The load average before and
after is recorded; above 1 the results are labelled a rehearsal.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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

from bench.fold.bench_fold import _session, environment, quiet  # noqa: E402
from bnfold.converter.quantize import (  # noqa: E402
    QuantizeOptions,
    converter_data,
    gate,
    served_outputs,
    to_float16,
    to_int8,
)

# (epochs, limit): a short training each, ~10 CPU-minutes for the whole run on 2 cores;
# cifar-cnn on every digit (the done-when target), the others on 600.
TRAINING = {"mlp": (10, None), "cifar-cnn": (3, None), "fer-cnn": (2, 600), "resnet": (3, 600)}
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
    """Interleaved rounds; each times a ~20 ms block of runs per model, in random order."""
    sessions = {k: _session(m, 1) for k, m in models.items()}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feeds)
    t0 = time.perf_counter()
    sessions["float32 folded"].run(None, feeds)
    block = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-5)))
    times: dict[str, list[float]] = {k: [] for k in models}
    order, rounds = list(models), 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or rounds < 5:
        random.shuffle(order)
        for k in order:
            t = time.perf_counter()
            for _ in range(block):
                sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - t) / block)
        rounds += 1
    base = np.array(times["float32 folded"])
    return {
        "rounds": rounds,
        **{
            k: {
                "ms": 1e3 * float(np.median(v)),
                "vs_folded": float(np.median(np.array(v) / base)),
                "vs_folded_iqr": [float(x) for x in np.percentile(np.array(v) / base, [25, 75])],
            }
            for k, v in times.items()
        },
    }


def one_network(arch: str, repo: Path, seconds: float) -> dict[str, Any]:
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
    models: dict[str, onnx.ModelProto] = {"float32 unfolded": reference, "float32 folded": folded}
    notes: dict[str, str] = {}
    gates: dict[str, Any] = {}
    t = time.perf_counter()
    for precision in ("int8", "fp16"):  # quantize_graph's steps, kept when the gate fails
        opts = QuantizeOptions(precision)
        with quiet():
            if precision == "int8":
                new = to_int8(folded, calibration.feeds, opts)
            else:
                new = to_float16(folded, report)
            record = gate(folded, new, heldout, opts.thresholds)
        models[f"bnfold {precision}"] = new
        gates[precision] = {k: v for k, v in record.items() if k != "comparisons"}
    seconds_bnfold = time.perf_counter() - t
    with quiet():
        models["ort pre+quant int8"], notes["ort pre+quant int8"] = ort_quantize(
            reference, calibration.feeds, pre=True
        )
        models["ort direct int8"], notes["ort direct int8"] = ort_quantize(
            reference, calibration.feeds, pre=False
        )
    expected = served_outputs(folded, heldout.feeds)["logits"].argmax(1)
    rows: dict[str, Any] = {}
    for flow in FLOWS:
        top1 = served_outputs(models[flow], heldout.feeds)["logits"].argmax(1)
        rows[flow] = {
            "accuracy": float(np.mean(top1 == heldout.labels)),
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
            f"  {arch:10s} b={batch:<3d} "
            + ", ".join(f"{k} x{r[k]['vs_folded']:.2f}" for k in FLOWS)
        )
    return {
        "training": {"epochs": epochs, "limit": limit, "test_rows": len(heldout.feeds[name])},
        "bnfold_quantize_seconds": round(seconds_bnfold, 2),
        "gates": gates,
        "flows": rows,
        "latency": timing,
    }


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    load = result["load_average"]
    rehearsal = max(load["before"][0], load["after"][0]) > 1
    lines = [
        "# Fold, then quantize: bnfold against ONNX Runtime's own int8 flow",
        "",
        *(
            [
                "**Rehearsal**: the machine was shared while this ran (load average "
                f"{load['before'][0]:.2f} before, {load['after'][0]:.2f} after, on "
                f"{env['nproc']} CPUs), so latency medians are inflated and their ratios noisy;",
                "accuracy, agreement, op counts and sizes do not depend on it.",
                "",
            ]
            if rehearsal
            else []
        ),
        f"{env['date']}, {env['machine']}, {env['nproc']} CPUs ({env['cpu'] or 'unknown CPU'}), "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
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
        "| network (train) | flow | accuracy | agreement | BN | ops | Q/DQ | KB "
        "| b=1 ms | b=1 / folded | b=32 ms | b=32 / folded |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, net in result["networks"].items():
        tr = net["training"]
        train = f"{tr['epochs']} ep, {'all' if tr['limit'] is None else tr['limit']} rows"
        for flow, row in net["flows"].items():
            b1, b32 = net["latency"]["1"][flow], net["latency"]["32"][flow]
            lines.append(
                f"| {arch} ({train}) | {flow} | {row['accuracy']:.4f} | {row['agreement']:.4f} | "
                f"{row['bn']} | {row['compute_ops']} | {row['qdq_ops']} | "
                f"{row['bytes'] / 1024:.0f} | {b1['ms']:.3f} | {_ratio(b1)} | {b32['ms']:.3f} | "
                f"{_ratio(b32)} |"
            )
    lines += ["", "Notes:"]
    for arch, net in result["networks"].items():
        for flow, row in net["flows"].items():
            if row["note"]:
                lines.append(f"- {arch}, {flow}: {row['note']}")
        g = net["gates"]["int8"]
        lines.append(
            f"- {arch}: bnfold's int8 gate {'passed' if g['passed'] else 'FAILED'} "
            f"(agreement {g['top1_agreement']:.4f}, accuracy drop "
            f"{g['accuracy_drop_points']:.2f} points, max rel error {g['max_rel_error']:.3g}; "
            f"quantize + fp16 + both gates {net['bnfold_quantize_seconds']} s)"
            + ("" if g["passed"] else f": {'; '.join(g['failures'][:2])}, nothing would be written")
        )
    lines += [
        "",
        f"Wall time {result['wall_seconds']} s, CPU time {result['cpu_seconds']} s "
        f"(training included); `python -m bench.precision.bench_precision` reruns it.",
    ]
    return "\n".join(lines) + "\n"


def _ratio(r: dict[str, Any]) -> str:
    lo, hi = r["vs_folded_iqr"]
    return f"{r['vs_folded']:.2f} ({lo:.2f}-{hi:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--seconds", type=float, default=4.0, help="latency seconds per case")
    parser.add_argument("--arch", action="append", choices=list(TRAINING), help="default: all")
    args = parser.parse_args()
    random.seed(0)
    load_before = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    networks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for arch in args.arch or list(TRAINING):
            networks[arch] = one_network(arch, Path(tmp), args.seconds)
    result = {
        "environment": environment(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "seconds": args.seconds,
        "networks": networks,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "precision.md").write_text(markdown(result))
    print(f"wrote {args.out / 'precision.md'} in {result['wall_seconds']} s")


if __name__ == "__main__":
    main()
