"""``bnfold fold`` and ``bnfold verify``: plain functions for the typer app (no torch).

The bnfold CLI imports this module only when one of the two runs. Failures
are raised, not printed: the CLI's group turns them into a line and the exit
code (bnfold.converter.errors): 0 success, 2 a missing or corrupt model
file, unreadable data or models that do not fit each other, 3 a parity
failure, 1 a bug (with its traceback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnx
import typer
from rich.markup import escape
from rich.table import Table

from bnfold.contract import DEFAULT_MIN_TOP1, DEFAULT_RTOL
from bnfold.converter.console import console, require_torch
from bnfold.converter.errors import InputError, ParityFailure
from bnfold.converter.verify import load_model

TWO_GB = 2**31


def _load(path: Path) -> onnx.ModelProto:
    return load_model(path)


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    big = model.ByteSize() >= TWO_GB
    onnx.save_model(model, str(path), save_as_external_data=big)


def fold(
    input: Annotated[Path, typer.Argument(help="ONNX model to fold (any exporter, opset 13+).")],
    output: Annotated[Path, typer.Argument(help="Where to write the folded model.")],
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the fold report (JSON) here."),
    ] = None,
) -> None:
    """Fold every BatchNormalization (node or Mul/Add chain) into its neighbours, exactly."""
    from bnfold.folding import fold as fold_model

    model = _load(input)
    folded, fold_report = fold_model(model)  # anything it raises is a bug: traceback, exit 1
    _save(folded, output)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(fold_report.to_json() + "\n")
    table = Table(
        title=f"BN {fold_report.bn_before} -> {fold_report.bn_after}", title_justify="left"
    )
    for column in ("BN", "status", "folded into / left", "why"):
        table.add_column(column, overflow="fold")
    for b in fold_report.bns:
        where = ", ".join(b.folded_into) or "-"
        if b.residual:
            where += " | left: " + ", ".join(b.residual)
        table.add_row(*map(escape, (b.name, b.status, where, "; ".join(b.reasons[:2]))))
    console.print(table)
    console.print(f"wrote {escape(str(output))} ({fold_report.summary().describe()})")


def verify(
    reference: Annotated[Path, typer.Argument(help="The model with every BN kept.")],
    folded: Annotated[Path, typer.Argument(help="The folded model to check against it.")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Held-out inputs as npz:PATH: one array per model input by name "
            "(or a single array, or 'x', for a one-input model).",
        ),
    ] = None,
    n_random: Annotated[
        int, typer.Option("--n-random", min=0, help="Random standard-normal samples to add.")
    ] = 16,
    rtol: Annotated[
        float,
        typer.Option(help="Max relative error, max|diff| / max|reference|; ~1e-2 for float16."),
    ] = DEFAULT_RTOL,
    min_top1: Annotated[
        float, typer.Option("--min-top1", help="Min share of rows with the same arg-max.")
    ] = DEFAULT_MIN_TOP1,
    per_node: Annotated[
        bool,
        typer.Option(
            "--per-node",
            help="Compare shared intermediate tensors; name the first diverging layer.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for the random inputs.")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the parity report (JSON) here.")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Training run folder (bnfold train): also compare PyTorch eval mode against "
            "the folded model on the same inputs, and check the BN running statistics. "
            "Needs torch.",
        ),
    ] = None,
) -> None:
    """Run both models on ONNX Runtime (optimizations off) and compare their outputs."""
    from bnfold.converter.verify import check_same_inputs, read_data, verify_onnx

    if run is not None:
        require_torch("verify --run")
    ref_model, folded_model = _load(reference), _load(folded)
    check_same_inputs(ref_model, folded_model)
    inputs = read_data(data, ref_model) if data else None
    if inputs is None and n_random == 0:
        raise InputError("nothing to compare: give --data or --n-random > 0")
    result = verify_onnx(
        ref_model,
        folded_model,
        inputs,
        n_random=n_random,
        seed=seed,
        rtol=rtol,
        min_top1=min_top1,
        per_node=per_node,
    )
    onnx_passed = bool(result["passed"])
    if run is not None:
        result["torch_vs_folded"] = _torch_parity(
            run, ref_model, folded_model, inputs, n_random, seed, rtol, min_top1
        )
        result["passed"] = bool(onnx_passed and result["torch_vs_folded"]["passed"])
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
    top1 = result["top1_agreement"]
    verdict = "[green]PASS[/]" if result["passed"] else "[bold red]FAIL[/]"
    console.print(
        f"{verdict} {result['n_samples']} samples: max abs error {result['max_abs_error']:.3g}, "
        f"max rel error {result['max_rel_error']:.3g} (rtol {rtol:g}), top-1 agreement "
        + ("n/a" if top1 is None else f"{top1:.4f}")
    )
    first = result.get("first_divergence")
    if per_node:
        if first:
            console.print(
                f"first diverging tensor: '{escape(first['tensor'])}' from node "
                f"'{escape(first['node'])}' "
                f"(max rel error {first.get('max_rel_error', float('nan')):.3g})"
            )
        else:
            console.print(f"all {len(result['per_node'])} shared intermediate tensors agree")
    if run is not None:
        t = result["torch_vs_folded"]
        console.print(
            f"PyTorch eval vs folded: max rel error {t['max_rel_error']:.3g}, top-1 agreement "
            f"{t['top1_agreement']}; BN statistics "
            + (t["bn_health"].get("skipped") or
               ("healthy" if t["bn_health"]["healthy"] else "[yellow]suspect[/]"))
        )  # fmt: skip
        for warning in t["bn_health"]["warnings"]:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
    if not result["passed"]:
        against = [str(reference)] if not onnx_passed else []
        if run is not None and not result["torch_vs_folded"]["passed"]:
            against.append(f"the PyTorch run {run}")
        raise ParityFailure(
            f"parity failed: {folded} does not compute what {' nor '.join(against)} computes "
            f"(rtol {rtol:g}, min top-1 agreement {min_top1:g})"
        )


def _torch_parity(
    run: Path,
    reference: onnx.ModelProto,
    folded: onnx.ModelProto,
    inputs: dict[str, np.ndarray] | None,
    n_random: int,
    seed: int,
    rtol: float,
    min_top1: float,
) -> dict[str, Any]:
    """PyTorch eval (the checkpoint in ``run``) vs the folded graph, plus BN health."""
    from bnfold.contract import compare
    from bnfold.converter.bn_health import bn_health
    from bnfold.converter.export import torch_logits
    from bnfold.converter.train import load_run
    from bnfold.converter.verify import random_inputs, run_onnx

    loaded = load_run(run)
    parts = [v for v in (inputs or {}).values()][:1]
    if n_random:
        parts += list(random_inputs(reference, n_random, seed).values())[:1]
    x = np.concatenate(parts).astype(np.float32)
    name = reference.graph.input[0].name
    expected = torch_logits(loaded.model, x)
    got = next(iter(run_onnx(folded, {name: x}).values()))
    report = compare(expected, got, rtol=rtol, min_top1=min_top1).to_dict()
    # Running vs batch statistics means something on real data only, not on noise.
    report["bn_health"] = (
        bn_health(loaded.model, parts[0]) if inputs else
        {"healthy": True, "warnings": [], "skipped": "give --data to check BN statistics"}
    )  # fmt: skip
    return report
