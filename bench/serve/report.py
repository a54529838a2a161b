"""serve.json, serve.md and serve.png from the rows of one ``bench.serve`` run,
with the issue's targets checked against the numbers of the same run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The reference setup (2 cores shared with the load generator, the
# 3x32x32 CIFAR CNN, one sample per request, one ORT thread).
REF_INPROCESS_B1 = 4076.0  # in-process ONNX Runtime, batch 1, infer/s
TARGET_C32 = 1300.0  # bnfold, concurrency 32, binary, infer/s
TARGET_VS_KSERVE = 2.0
TARGET_C1_OVERHEAD_MS = 0.8
TARGET_MODEL = "cifar-cnn"


def _find(rows: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    m = TARGET_MODEL
    ours = _find(rows, server="bnfold", model=m, format="binary", batching="on", c=32)
    ks = _find(rows, server="kserve", model=m, format="binary", c=32)
    naive = _find(rows, server="naive", model=m, format="json", c=32)
    b1 = _find(rows, server="inprocess", model=m, c=1)
    ceiling = max(
        (r["throughput"] for r in rows if r["server"] == "inprocess" and r["model"] == m), default=0
    )
    if ours:
        scaled = TARGET_C32 * b1["throughput"] / REF_INPROCESS_B1 if b1 else None
        out.append(
            {
                "target": f"{m}, c=32, binary: >= {TARGET_C32:,.0f}/s",
                "measured": f"{ours['throughput']:,.0f}/s",
                "met": ours["throughput"] >= TARGET_C32,
                "note": (
                    f"scaled to this machine (in-process batch 1 here {b1['throughput']:,.0f}/s "
                    f"vs {REF_INPROCESS_B1:,.0f}/s on the reference): >= {scaled:,.0f}/s, "
                    f"{'met' if ours['throughput'] >= scaled else 'missed'}"
                )
                if b1 and scaled
                else "",
            }
        )
        if ks:
            ratio = ours["throughput"] / ks["throughput"]
            out.append(
                {
                    "target": f"{m}, c=32, binary: >= {TARGET_VS_KSERVE:g}x KServe (same run)",
                    "measured": f"{ratio:.2f}x ({ks['throughput']:,.0f}/s)",
                    "met": ratio >= TARGET_VS_KSERVE,
                    "note": "",
                }
            )
        if naive:
            out.append(
                {
                    "target": f"{m}, c=32: ahead of the naive FastAPI route (JSON)",
                    "measured": f"{ours['throughput'] / naive['throughput']:.2f}x "
                    f"({naive['throughput']:,.0f}/s)",
                    "met": ours["throughput"] > naive["throughput"],
                    "note": "bnfold binary vs naive JSON (the naive route has no binary)",
                }
            )
        if ceiling:
            best = max(
                r["throughput"]
                for r in rows
                if r["server"] == "bnfold" and r["model"] == m and r["format"] == "binary"
            )
            out.append(
                {
                    "target": f"stretch: {m} at half the in-process ceiling",
                    "measured": f"{best / ceiling:.0%} of {ceiling:,.0f}/s",
                    "met": best >= ceiling / 2,
                    "note": "best bnfold binary point vs best in-process batch",
                }
            )
    for model in sorted({r["model"] for r in rows}):
        c1 = _find(rows, server="bnfold", model=model, format="binary", batching="on", c=1)
        ip = _find(rows, server="inprocess", model=model, c=1)
        if c1 and ip:
            over = c1["mean_ms"] - ip["mean_ms"]
            peers = []
            for peer, fmt in (("kserve", "binary"), ("naive", "json")):
                p = _find(rows, server=peer, model=model, format=fmt, c=1)
                if p:
                    peers.append(f"{peer} {p['mean_ms'] - ip['mean_ms']:.2f} ms")
            out.append(
                {
                    "target": f"{model}, c=1: <= {TARGET_C1_OVERHEAD_MS} ms over in-process",
                    "measured": f"{over:.2f} ms ({c1['mean_ms']:.2f} vs {ip['mean_ms']:.2f} ms)",
                    "met": over <= TARGET_C1_OVERHEAD_MS,
                    "note": "server cost per request, mean; " + ", ".join(peers),
                }
            )
    return out


def _label(r: dict[str, Any]) -> str:
    if r["server"] == "inprocess":
        return "in-process ORT (batch = c)"
    batching = {"on": ", batching", "off": ""}.get(r["batching"], "")
    return f"{r['server']} {r['format']}{batching}"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    levels = sorted({r["c"] for r in rows})
    m = meta["machine"]
    v = meta["versions"]
    lines = [
        "# Serving benchmark",
        "",
        f"{meta['date']}, {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, "
        f"device {meta['device']}; load from {meta['load_generator']}, "
        f"{meta['seconds_per_point']:g} s per point after a warm-up; "
        f"run took {meta['wall_seconds']} s.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "One sample per request; every server runs ONNX Runtime on one thread and shares "
        "the cores with the load generator. bnfold settings: "
        + ", ".join(f"`{k}={val}`" for k, val in meta["bnfold_settings"].items())
        + ".",
        "",
        "## Targets (issue 6)",
        "",
        "| target | measured | met | note |",
        "| --- | --- | --- | --- |",
    ]
    for c in checks:
        lines.append(
            f"| {c['target']} | {c['measured']} | {'yes' if c['met'] else '**no**'} | {c['note']} |"
        )
    for key, note in meta.get("notes", {}).items():
        lines.append(f"\n{key}: {note}")
    lines += ["", "## Throughput (infer/s) and p99 latency (ms) by concurrency", ""]
    for model in sorted({r["model"] for r in rows}):
        lines += [f"### {model}", ""]
        lines.append("| server | " + " | ".join(f"c={c}" for c in levels) + " |")
        lines.append("| --- |" + " --- |" * len(levels))
        labels = []
        for r in rows:
            if r["model"] == model and _label(r) not in labels:
                labels.append(_label(r))
        for label in labels:
            cells = []
            for c in levels:
                r = next(
                    (x for x in rows if x["model"] == model and _label(x) == label and x["c"] == c),
                    None,
                )
                if r is None:
                    cells.append("")
                else:
                    err = f", {r['errors']} errors" if r.get("errors") else ""
                    cells.append(f"{r['throughput']:,.0f} ({r['p99_ms']:.1f}{err})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "In-process rows are rows/s at batch size = c, with the p99 of one batch call. "
        "Raw numbers (p50, p90, mean, request counts) are in serve.json; the plot is serve.png.",
        "",
    ]
    return "\n".join(lines)


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.6 * len(models)), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    colors: dict[str, Any] = {}
    for r in rows:  # one colour per series, the same in every panel
        colors.setdefault(_label(r), palette[len(colors) % len(palette)])
    for i, model in enumerate(models):
        labels = []
        for r in rows:
            if r["model"] == model and _label(r) not in labels:
                labels.append(_label(r))
        for label in labels:
            pts = sorted(
                (r for r in rows if r["model"] == model and _label(r) == label),
                key=lambda r: r["c"],
            )
            xs = [r["c"] for r in pts]
            style = "--" if label.startswith("in-process") else "-"
            kw = {"marker": "o", "label": label, "color": colors[label]}
            axes[i][0].plot(xs, [r["throughput"] for r in pts], style, **kw)
            if not label.startswith("in-process"):
                axes[i][1].plot(xs, [r["p99_ms"] for r in pts], style, **kw)
        for j, (title, unit) in enumerate((("throughput", "infer/s"), ("p99 latency", "ms"))):
            ax = axes[i][j]
            ax.set_title(f"{model}: {title}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r["c"] for r in rows}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("concurrency")
            ax.set_ylabel(unit)
            ax.set_yscale("log")  # the MLP's in-process limit is 1000x its servers
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
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
