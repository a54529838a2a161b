"""What the input normalisation costs once folded: the converter's models take raw data.

``bnfold convert`` puts ``(raw / pixel_scale - mean) / std`` in front of the
exported network and folds it into the first layer like a BN
(converter/input_map.py). This measures, per architecture of
converter/models.py exported as the pipeline exports it (random BN
statistics, bench/fold's ``architectures``), three graphs on ONNX Runtime
CPU (ORT_ENABLE_ALL, as served), timed interleaved in the same run:

- ``deleted``: the network with its BN layers deleted, taking normalised input
  (bench/fold's baseline);
- ``folded``: the network folded, taking normalised input (bench/fold's row);
- ``folded raw``: the normalisation prepended, then folded: the converter's model;
- ``without left``: where the first layer pads with zeros, ``folded raw``
  with the one ``Add`` the map leaves on the input bypassed: the Add's cost.

    python -m bench.input_map.bench_input_map [--seconds S] [--out bench/results]

Writes ``input_map.md`` and ``input_map.json``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.fold.bench_fold import architectures, environment  # noqa: E402
from bench.timing import cpu_session, describe, interleaved  # noqa: E402
from bnfold.converter.input_map import fold_outcome, prepend_normalization  # noqa: E402
from bnfold.converter.verify import random_inputs  # noqa: E402
from bnfold.folding import fold  # noqa: E402

# digits-like statistics for one channel, CIFAR-10's for three (values of raw / 255)
STATS = {1: ([0.31], [0.38]), 3: ([0.491, 0.482, 0.447], [0.247, 0.243, 0.261])}
KEYS = ("deleted", "folded", "folded_raw")


def ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def channels(model: onnx.ModelProto) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 4 else 1


def timed(models: dict[str, onnx.ModelProto], batch: int, seconds: float) -> dict[str, Any]:
    """Interleaved rounds (bench/timing.py) against BN-deleted."""
    feeds = random_inputs(models["deleted"], batch, seed=0)
    sessions = {k: cpu_session(m, 1) for k, m in models.items()}
    runners = {k: functools.partial(s.run, None, feeds) for k, s in sessions.items()}
    rounds = interleaved(runners, "deleted", seconds, warmup=5)
    out: dict[str, Any] = {"batch": batch, "rounds": rounds.rounds}
    for k in models:
        out[f"{k}_ms"] = rounds.ms(k)
    for k in ("folded", "folded_raw"):
        out[f"{k}_vs_deleted"], out[f"{k}_vs_deleted_iqr"] = rounds.versus(k, "deleted")
    if "without_left" in rounds.times:  # what the op the map leaves costs inside the graph
        out["left_cost"], out["left_cost_iqr"] = rounds.versus("folded_raw", "without_left")
    return out


def without_left(folded_raw: onnx.ModelProto) -> onnx.ModelProto | None:
    """``folded_raw`` with the op the input map left (the residual Add) bypassed:
    another function, the same cost but for that op."""
    g = folded_raw.graph
    left = [n for n in g.node if n.name.startswith("input_normalization")]
    if len(left) != 1 or g.input[0].name not in left[0].input:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(folded_raw)
    (node,) = [n for n in out.graph.node if n.name == left[0].name]
    for other in out.graph.node:
        for i, name in enumerate(other.input):
            if name == node.output[0]:
                other.input[i] = g.input[0].name
    out.graph.node.remove(node)
    return out


def _ratio(median: float, iqr: list[float]) -> str:
    return f"{median:.3f} ({iqr[0]:.3f}-{iqr[1]:.3f})"


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# Input normalisation folded: the converter's models on raw data",
        "",
        describe(env),
        "",
        "`folded raw` is what `bnfold convert` writes: `(raw / 255 - mean) / std` in front of",
        "the network (random BN statistics, as bench/fold), then folded. `folded` is the same",
        "network folded without it (normalised input), `deleted` the network with its BN layers",
        "deleted (normalised input). Ops: what `folded raw` has beyond `folded`.",
        "",
        "| network | input map | ops beyond folded | batch | deleted ms | folded / deleted "
        "| folded raw / deleted | folded raw / the same without the op left |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in result["networks"].items():
        extra = ", ".join(f"+{n} {op}" for op, n in sorted(row["extra_ops"].items())) or "none"
        for r in row["latency"]:
            f, g = r["folded_vs_deleted_iqr"], r["folded_raw_vs_deleted_iqr"]
            lines.append(
                f"| {label} | {row['input_map']} | {extra} | {r['batch']} | "
                f"{r['deleted_ms']:.3f} | {r['folded_vs_deleted']:.3f} ({f[0]:.3f}-{f[1]:.3f}) | "
                f"{r['folded_raw_vs_deleted']:.3f} ({g[0]:.3f}-{g[1]:.3f}) | "
                + (_ratio(r["left_cost"], r["left_cost_iqr"]) if "left_cost" in r else "-")
                + " |"
            )
    lines += [
        "",
        f"Median of per-round ratios (interquartile range), 1 intra-op thread, "
        f"{result['seconds']:g} s per case, the graphs interleaved in one run. The last column",
        "is the cost of the op the map leaves on the input (the `Add` where the first Conv",
        "pads with zeros): `folded raw` against itself with that op bypassed, timed alike.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--seconds", type=float, default=12.0, help="latency seconds per case")
    args = parser.parse_args()
    random.seed(0)
    started = time.perf_counter()
    networks: dict[str, Any] = {}
    for label, (network, deleted) in architectures().items():
        mean, std = STATS[channels(network)]
        raw = prepend_normalization(network, pixel_scale=255.0, mean=mean, std=std)
        folded, folded_raw = fold(network)[0], fold(raw)
        outcome = fold_outcome(folded_raw[1].to_dict()) or {}
        models = {"deleted": deleted, "folded": folded, "folded_raw": folded_raw[0]}
        bypassed = without_left(folded_raw[0])
        if bypassed is not None:
            models["without_left"] = bypassed
        row: dict[str, Any] = {
            "input_map": outcome.get("status", "?")
            + (f" ({len(outcome['residual'])} op left)" if outcome.get("residual") else ""),
            "extra_ops": dict(ops(folded_raw[0]) - ops(folded)),
            "latency": [],
        }
        for batch in (1, 64):
            r = timed(models, batch, args.seconds)
            row["latency"].append(r)
            print(
                f"  {label:22s} b={batch:<3d} deleted {r['deleted_ms']:.3f} ms  folded "
                f"x{r['folded_vs_deleted']:.3f}  folded raw x{r['folded_raw_vs_deleted']:.3f}"
            )
        networks[label] = row
    result = {
        "environment": environment(),
        "seconds": args.seconds,
        "networks": networks,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "input_map.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "input_map.md").write_text(markdown(result))
    print(f"wrote {args.out / 'input_map.md'} in {result['wall_seconds']} s")


if __name__ == "__main__":
    main()
