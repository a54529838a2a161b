"""``bnfold import``: the command; the work is :mod:`bnfold.converter.importer`.

No torch: an ONNX file becomes a version wherever ``bnfold serve`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bnfold.contract import DEFAULT_RTOL
from bnfold.converter.console import console
from bnfold.converter.importer import DEFAULT_MAX_BATCH, N_RANDOM, ImportOptions, import_onnx


def import_model(
    model: Annotated[
        Path,
        typer.Argument(help="The ONNX model (any exporter; external data beside it is read)."),
    ],
    repo: Annotated[Path, typer.Option(help="Model repository to write into.")] = Path("models"),
    name: Annotated[
        str | None,
        typer.Option(help="Model name in the repository.", show_default="the file's stem"),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(min=1, help="Version to write.", show_default="highest + 1"),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Held-out inputs for the parity proof: npz:PATH with one array per input "
            "name (or x for a one-input model).",
            show_default="none: generated rows only",
        ),
    ] = None,
    n_random: Annotated[
        int, typer.Option(min=0, help="Generated rows (N(0, 1)) for the proof, beside --data.")
    ] = N_RANDOM,
    rtol: Annotated[
        float, typer.Option(min=0.0, help="Largest error allowed, relative to the output's scale.")
    ] = DEFAULT_RTOL,
    max_batch_size: Annotated[
        int,
        typer.Option(
            min=0, help="config.json's max_batch_size when the first axis is dynamic (0: none)."
        ),
    ] = DEFAULT_MAX_BATCH,
    labels: Annotated[
        str | None,
        typer.Option(help="Class names for config.json, comma-separated (e.g. cat,dog)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated rows.")] = 0,
) -> None:
    """Fold any ONNX model's BatchNorms, prove the result, and write it as a repository version."""
    opts = ImportOptions(
        model=model,
        repo=repo,
        name=name or model.stem,
        version=version,
        data=data,
        n_random=n_random,
        seed=seed,
        rtol=rtol,
        max_batch_size=max_batch_size,
        labels=tuple(x.strip() for x in labels.split(",")) if labels else (),
    )
    result = import_onnx(opts, log=lambda line: console.print(escape(line)))
    p = result.parity
    console.print(
        f"parity: max rel error {p.max_rel_error:.3g} on {p.n_samples} rows "
        f"(top-1 agreement {p.top1_agreement if p.top1_agreement is not None else '-'}); "
        f"BN {result.bn_before} -> {result.bn_after}"
    )
    typer.echo(str(result.version_dir))
