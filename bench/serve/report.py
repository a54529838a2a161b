"""serve.json, serve.md and serve.png from the rows of one interleaved
``bench.serve`` run: per point (model, protocol/format, concurrency) and
contender the median over rounds and the interquartile range, the ratios
computed within each round (both sides measured minutes apart at most, in
random order), and issue 17's targets checked against them."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

TARGET_MODEL = "cifar-cnn"
MLP = "digits-mlp"
ORDER = ["bnfold", "bnfold-nobatch", "bnfold-w2", "pytriton", "kserve", "inprocess"]
Key = tuple[str, str, str, str, int]  # server, model, protocol, format, c


def _key(r: dict[str, Any]) -> Key:
    return (r["server"], r["model"], r["protocol"], r["format"], r["c"])


def by_round(rows: list[dict[str, Any]], field: str = "throughput") -> dict[Key, dict[int, float]]:
    out: dict[Key, dict[int, float]] = defaultdict(dict)
    for r in rows:
        out[_key(r)][r["round"]] = float(r[field])
    return out


def stats(values: list[float]) -> tuple[float, float, float]:
    """Median and the interquartile range's ends."""
    a = np.asarray(values)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return float(med), float(q1), float(q3)


def ratio(table: dict[Key, dict[int, float]], a: Key, b: Key) -> tuple[float | None, list[float]]:
    """a/b within each round; their median."""
    ra, rb = table.get(a, {}), table.get(b, {})
    per = [ra[r] / rb[r] for r in sorted(ra) if r in rb and rb[r] > 0]
    return (float(np.median(per)) if per else None), per


def _fmt_ratio(value: float | None, per: list[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x (rounds: {', '.join(f'{p:.2f}' for p in per)})"


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tput = by_round(rows)
    p50 = by_round(rows, "p50_ms")
    m = TARGET_MODEL
    out: list[dict[str, Any]] = []

    def check(name: str, a: Key, b: Key, goal: float, note: str = "") -> None:
        value, per = ratio(tput, a, b)
        met = value is not None and value >= goal
        if value is None:
            why = "not measured"
        elif met:
            why = ""
        else:
            why = f"missed by {(goal - value) / goal:.0%}"
        out.append(
            {
                "target": name,
                "measured": _fmt_ratio(value, per),
                "met": met if value is not None else None,
                "note": "; ".join(x for x in (why, note) if x),
            }
        )

    ours_bin = ("bnfold", m, "http", "binary", 32)
    ours_json = ("bnfold", m, "http", "json", 32)
    ours_grpc = ("bnfold", m, "grpc", "raw", 32)
    check(
        f"{m} HTTP binary c=32 >= 0.65x in-process ORT at batch 32",
        ours_bin,
        ("inprocess", m, "http", "binary", 32),
        0.65,
    )
    check(
        f"{m} HTTP binary c=32 >= 1.5x PyTriton",
        ours_bin,
        ("pytriton", m, "http", "binary", 32),
        1.5,
    )
    check(
        f"{m} JSON c=32 >= 1.5x PyTriton JSON",
        ours_json,
        ("pytriton", m, "http", "json", 32),
        1.5,
    )
    check(  # issue 22: shadow parity at its shipped rate
        f"{m} HTTP binary c=32: defaults within 3% of --shadow-parity 0",
        ours_bin,
        ("bnfold-noshadow", m, "http", "binary", 32),
        0.97,
    )
    check(
        f"{m} gRPC c=32 >= 1.5x PyTriton gRPC", ours_grpc, ("pytriton", m, "grpc", "raw", 32), 1.5
    )
    check(
        f"{m} gRPC c=1 >= 1.2x KServe gRPC",
        ("bnfold", m, "grpc", "raw", 1),
        ("kserve", m, "grpc", "raw", 1),
        1.2,
    )
    # Batching never loses: every (model, format, c) cell.
    cells = sorted(k[1:] for k in tput if k[0] == "bnfold" and ("bnfold-nobatch", *k[1:]) in tput)
    missed = []
    for cell in cells:
        value, _ = ratio(tput, ("bnfold", *cell), ("bnfold-nobatch", *cell))
        if value is not None and value < 0.97:
            missed.append(f"{cell[0]} {cell[2]} c={cell[3]}: {value:.2f}x")
    out.append(
        {
            "target": "defaults (batching on) within 3% of the better of on and off, every cell",
            "measured": f"{len(cells) - len(missed)} of {len(cells)} cells",
            "met": not missed if cells else None,
            "note": ("below 0.97x of off: " + "; ".join(missed)) if missed else "",
        }
    )
    check(
        f"{MLP} binary c=32 >= 2x KServe",
        ("bnfold", MLP, "http", "binary", 32),
        ("kserve", MLP, "http", "binary", 32),
        2.0,
    )
    ours_c1 = p50.get(("bnfold", m, "http", "binary", 1), {})
    ort_c1 = p50.get(("inprocess", m, "http", "binary", 1), {})
    over = [ours_c1[r] - ort_c1[r] for r in sorted(ours_c1) if r in ort_c1]
    if over:
        med = float(np.median(over))
        out.append(
            {
                "target": f"{m} HTTP binary c=1 p50 within 0.5 ms of in-process ORT at batch 1",
                "measured": f"+{med:.2f} ms (rounds: {', '.join(f'{o:+.2f}' for o in over)})",
                "met": med <= 0.5,
                "note": "" if med <= 0.5 else f"missed by {med - 0.5:.2f} ms",
            }
        )
    return out


def _servers(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["server"] for r in rows}
    return [s for s in ORDER if s in present] + sorted(present - set(ORDER))


def quiet(meta: dict[str, Any]) -> bool:
    """The run counts as a result when the 1-minute load average was at most
    1 before it and after the rest that follows it."""
    before, after = meta["load_average_before"][:1], meta["load_average_after"][:1]
    return bool(before and after) and max(before + after) <= 1.0


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    m, v = meta["machine"], meta["versions"]
    tput = by_round(rows)
    p50 = by_round(rows, "p50_ms")
    lines = [
        "# Serving benchmark",
        "",
        f"{meta['date']}, {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, CPU. "
        f"Every contender started at once, each on its own port; for every point of each of "
        f"{meta['rounds']} rounds the contenders ran one after the other in a fresh random "
        f"order, {meta['seconds_per_measurement']:g} s each after one warm-up per model and "
        f"format; run took {meta['wall_seconds']} s. Load: {meta['load_generator']}.",
        "",
        f"**Load average** (1, 5, 15 min) before the run: {meta['load_average_before']}, "
        + (
            f"at its end: {meta['load_average_at_end']}, after {meta['rest_seconds']:g} s "
            f"with every server stopped: {meta['load_average_after']}. "
            if "load_average_at_end" in meta
            else f"after: {meta['load_average_after']}. "
        )
        + (
            "Both readings at or below 1: a quiet machine; this run is a **result**."
            if quiet(meta)
            else "**Rehearsal, not a result**: the 1-minute load average before or after "
            "was above 1, so other work shared the cores; absolute numbers are low and "
            "noisy, and only the ratios within a round say anything."
        ),
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "One sample per request; every server runs ONNX Runtime on one thread and shares "
        "the 2 cores with the load generator. bnfold runs at its shipped defaults except "
        + ", ".join(f"`{k}={val}`" for k, val in meta["bnfold_settings"].items())
        + " (one ORT thread, like every peer).",
        "",
        "## Targets (issue 17), from ratios within each round",
        "",
        "| target | measured (median of per-round ratios) | met | note |",
        "| --- | --- | --- | --- |",
    ]
    for c in checks:
        met = {True: "yes", False: "**no**", None: "n/a"}[c["met"]]
        lines.append(f"| {c['target']} | {c['measured']} | {met} | {c['note']} |")
    for key, note in meta.get("notes", {}).items():
        lines.append(f"\n{key}: {note}")
    lines += [
        "",
        "## Throughput (infer/s): median [IQR] over rounds",
        "",
        "In-process rows are rows/s of ONNX Runtime at batch size = c (the limit; "
        "the same for both formats).",
        "",
    ]
    groups = sorted({(r["model"], r["protocol"], r["format"]) for r in rows})
    for model, protocol, fmt in groups:
        levels = sorted({r["c"] for r in rows if (r["model"], r["protocol"]) == (model, protocol)})
        lines += [f"### {model}, {protocol} {fmt}", ""]
        lines.append("| server | " + " | ".join(f"c={c}" for c in levels) + " |")
        lines.append("| --- |" + " --- |" * len(levels))
        for server in _servers(rows):
            src_fmt = "binary" if server == "inprocess" else fmt
            if server == "inprocess" and protocol != "http":
                continue
            cells = []
            for c in levels:
                values = tput.get((server, model, protocol, src_fmt, c))
                if not values:
                    cells.append("")
                    continue
                med, q1, q3 = stats(list(values.values()))
                cells.append(f"{med:,.0f} [{q1:,.0f}–{q3:,.0f}]")
            if any(cells):
                lines.append(f"| {server} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## p50 latency (ms): median over rounds", ""]
    for model, protocol, fmt in groups:
        levels = sorted({r["c"] for r in rows if (r["model"], r["protocol"]) == (model, protocol)})
        lines += [f"### {model}, {protocol} {fmt}", ""]
        lines.append("| server | " + " | ".join(f"c={c}" for c in levels) + " |")
        lines.append("| --- |" + " --- |" * len(levels))
        for server in _servers(rows):
            if server == "inprocess" and protocol != "http":
                continue
            src_fmt = "binary" if server == "inprocess" else fmt
            cells = []
            for c in levels:
                values = p50.get((server, model, protocol, src_fmt, c))
                cells.append(f"{stats(list(values.values()))[0]:.2f}" if values else "")
            if any(cells):
                lines.append(f"| {server} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Ratios within each round (median, and each round's)",
        "",
        "| point | bnfold / PyTriton | bnfold / KServe | batching on / off "
        "| bnfold / in-process | workers 2 / 1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model, protocol, fmt in groups:
        levels = sorted({r["c"] for r in rows if (r["model"], r["protocol"]) == (model, protocol)})
        for c in levels:
            ours: Key = ("bnfold", model, protocol, fmt, c)
            cells = []
            for other in (
                ("pytriton", model, protocol, fmt, c),
                ("kserve", model, protocol, fmt, c),
                ("bnfold-nobatch", model, protocol, fmt, c),
                ("inprocess", model, "http", "binary", c),
            ):
                value, per = ratio(tput, ours, other)
                cells.append(_fmt_ratio(value, per) if value is not None else "")
            value, per = ratio(tput, ("bnfold-w2", model, protocol, fmt, c), ours)
            cells.append(_fmt_ratio(value, per) if value is not None else "")
            lines.append(f"| {model} {protocol} {fmt} c={c} | " + " | ".join(cells) + " |")
    errors = sum(int(r.get("errors") or 0) for r in rows)
    lines += [
        "",
        f"Errors over the run: {errors}. Every measurement (p50, p90, p99, mean, request "
        "counts, round) is in serve.json; the plot is serve.png.",
        "",
    ]
    return "\n".join(lines)


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    tput = by_round(rows)
    groups = sorted({(r["model"], r["protocol"], r["format"]) for r in rows})
    cols = 2
    nrows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(12, 3.4 * nrows), squeeze=False)
    for i, (model, protocol, fmt) in enumerate(groups):
        ax = axes[i // cols][i % cols]
        for server in _servers(rows):
            if server == "inprocess" and protocol != "http":
                continue
            src_fmt = "binary" if server == "inprocess" else fmt
            pts = sorted(
                (k[4], stats(list(v.values())))
                for k, v in tput.items()
                if k[:4] == (server, model, protocol, src_fmt)
            )
            if not pts:
                continue
            xs = [c for c, _ in pts]
            med = np.array([s[0] for _, s in pts])
            err = np.array([[s[0] - s[1] for _, s in pts], [s[2] - s[0] for _, s in pts]])
            style = "--" if server == "inprocess" else "-"
            ax.errorbar(xs, med, yerr=err, fmt=style, marker="o", capsize=3, label=server)
        ax.set_title(f"{model}, {protocol} {fmt}: infer/s (median, IQR)")
        ax.set_xscale("log", base=2)
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for j in range(len(groups), nrows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    checks = targets(rows)
    (out / "serve.json").write_text(
        json.dumps({"meta": meta, "targets": checks, "rows": rows}, indent=1) + "\n"
    )
    (out / "serve.md").write_text(markdown(meta, rows, checks))
    plot(out / "serve.png", rows)


def main() -> None:
    """``python -m bench.serve.report [serve.json]``: render serve.md and
    serve.png again from the JSON of a run."""
    import sys

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/serve.json")
    data = json.loads(path.read_text())
    write_report(path.parent, data["meta"], data["rows"])


if __name__ == "__main__":
    main()
