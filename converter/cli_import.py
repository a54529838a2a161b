"""``bnfold import``: the command; the work is :mod:`bnfold.converter.importer`.

No torch: an ONNX file becomes a version wherever ``bnfold serve`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from bnfold.contract import DEFAULT_MAX_BATCH_SIZE, DEFAULT_RTOL
from bnfold.converter.console import console
from bnfold.converter.importer import N_RANDOM, ImportOptions, import_onnx
from bnfold.converter.input_map import parse_normalize, parse_range


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
    ] = DEFAULT_MAX_BATCH_SIZE,
    labels: Annotated[
        str | None,
        typer.Option(help="Class names for config.json, comma-separated (e.g. cat,dog)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated rows.")] = 0,
    normalize: Annotated[
        str | None,
        typer.Option(
            metavar="MEAN/STD",
            help="The model was trained on (x / HIGH - MEAN) / STD: put that in front of the "
            "graph, so the version takes the raw data (--input-range) and the map folds into "
            "the first layer. MEAN and STD are comma-separated, one value or one per channel: "
            "0.5/0.25, or ImageNet's 0.485,0.456,0.406/0.229,0.224,0.225. With it, --data "
            "holds raw rows.",
            show_default="none: the version takes the input as the model does",
        ),
    ] = None,
    input_range: Annotated[
        str,
        typer.Option(
            metavar="LOW,HIGH",
            help="With --normalize: the raw values the version takes (0,255: 8-bit pixels; "
            "0,1: values already scaled).",
        ),
    ] = "0,255",
    layout: Annotated[
        str | None,
        typer.Option(
            metavar="NCHW|NHWC|NC",
            help="With --normalize: where the channels are (NHWC: Keras/tf2onnx).",
            show_default="from the input's shape",
        ),
    ] = None,
    precision: Annotated[
        Literal["fp32", "int8", "fp16"],
        typer.Option(
            metavar="fp32|int8|fp16",
            help="Precision of the version written: int8 (calibrated on half of --data, gated "
            "on the other half) or fp16 (gated on --data, or the generated rows), each against "
            "the float32 folded graph (docs/quantization.md).",
        ),
    ] = "fp32",
    calibration: Annotated[
        Literal["minmax", "percentile", "entropy"],
        typer.Option(metavar="minmax|percentile|entropy", help="int8 calibration method."),
    ] = "minmax",
) -> None:
    """Fold any ONNX model's BatchNorms, prove the result, and write it as a repository version."""
    from bnfold.converter.quantize import QuantizeOptions

    parsed = parse_normalize(normalize) if normalize is not None else None
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
        normalize=(tuple(parsed[0]), tuple(parsed[1])) if parsed else None,
        input_range=parse_range(input_range),
        layout=layout.upper() if layout else None,
        quantize=None
        if precision == "fp32"
        else QuantizeOptions(precision, calibration, seed=seed),
    )
    result = import_onnx(opts, log=lambda line: console.print(escape(line)))
    p = result.parity
    console.print(
        f"parity: max rel error {p.max_rel_error:.3g} on {p.n_samples} rows "
        f"(top-1 agreement {p.top1_agreement if p.top1_agreement is not None else '-'}); "
        f"{result.summary.describe()}"
    )
    typer.echo(str(result.version_dir))
