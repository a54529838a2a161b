"""``bnfold``: train, export, fold, verify, convert and serve BatchNorm networks.

Commands that need torch (train, export, convert, demo) import it when they
run, so ``bnfold fold``, ``bnfold verify`` and ``bnfold serve`` work in an
environment without torch (the serving image).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from bnfold.converter import cli_fold
from bnfold.service.cli import serve

if TYPE_CHECKING:
    from bnfold.converter.pipeline import ConvertOptions

app = typer.Typer(
    name="bnfold",
    help=(
        "Train BatchNorm networks, fold every BN into its neighbours at the ONNX level, "
        "prove the folded graph computes what was trained, and serve it over the Open "
        "Inference Protocol."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ARCH_HELP = "Architecture: mlp, cifar-cnn, fer-cnn or resnet."
DATA_HELP = (
    "Data set: digits (scikit-learn's embedded 8x8 digits, resized to the network's input), "
    "synthetic (seeded), npz:PATH (arrays x, y), cifar10:PATH (binary batches) or "
    "fer2013:PATH (CSV)."
)

Arch = Annotated[str, typer.Option("--arch", "-a", help=ARCH_HELP)]
Data = Annotated[str, typer.Option("--data", "-d", help=DATA_HELP)]
Epochs = Annotated[
    int | None,
    typer.Option(min=1, help="Training epochs [default: per architecture, e.g. 10 for mlp]."),
]
BatchSize = Annotated[int, typer.Option(min=2, help="Training batch size.")]
Lr = Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")]
Seed = Annotated[int, typer.Option(help="Seed for the split, initialisation and shuffling.")]
Limit = Annotated[
    int | None,
    typer.Option(min=10, help="Use at most this many samples (stratified), for quick runs."),
]
InputShape = Annotated[
    str | None,
    typer.Option(
        help="Network input shape without the batch axis, e.g. 64 or 1,48,48 "
        "[default: the architecture's own]."
    ),
]


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = re.split(r"[,x]", text.strip())
    if not all(p.strip().isdigit() for p in parts):
        raise typer.BadParameter(
            f"{text!r} is not a shape like 64, 1,48,48 or 1x48x48", param_hint="--input-shape"
        )
    shape = tuple(int(p) for p in parts)
    if any(v < 1 for v in shape) or len(shape) not in (1, 3):
        raise typer.BadParameter(
            f"{text!r}: give F (flat) or C,H,W (image), every dimension positive",
            param_hint="--input-shape",
        )
    return shape


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _require_torch(command: str) -> None:
    """The serving image has no torch; say so instead of a traceback."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise _fail(
            f"`bnfold {command}` trains or exports with PyTorch, which is not installed here; "
            "install the train extra: pip install -c constraints.txt 'bnfold[train]' "
            "(fold, verify and serve work without it)"
        )


def _log(message: str) -> None:
    console.print(f"[dim]·[/] {message}")


class _EpochBar:
    """A rich progress bar fed by the trainer's per-epoch callback."""

    def __init__(self, label: str, epochs: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(label, total=epochs, stats="")

    def __enter__(self) -> _EpochBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def __call__(self, epoch: int, row: dict[str, float]) -> None:
        stats = (
            f"loss {row['train_loss']:.3f}  acc {row['train_accuracy']:.3f}  "
            f"val_acc {row['val_accuracy']:.3f}"
        )
        self.progress.update(self.task, completed=epoch, stats=stats)


def _options(**kw: Any) -> ConvertOptions:
    from bnfold.converter.pipeline import ConvertOptions

    return ConvertOptions(**kw)


def _user_errors() -> tuple[type[Exception], ...]:
    from bnfold.converter.data import DataError
    from bnfold.converter.export import ExportError
    from bnfold.converter.repository import RepositoryError
    from bnfold.converter.train import RunError

    return (DataError, ExportError, RepositoryError, RunError, ValueError, FileNotFoundError)


@app.command()
def train(
    arch: Arch = "mlp",
    data: Data = "digits",
    out: Annotated[
        Path | None, typer.Option(help="Run folder to write [default: runs/<data>-<arch>].")
    ] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = 32,
    lr: Lr = 3e-3,
    seed: Seed = 0,
    limit: Limit = None,
    input_shape: InputShape = None,
    no_bn: Annotated[
        bool, typer.Option("--no-bn", help="Train the twin with every BatchNorm layer deleted.")
    ] = False,
    compare_no_bn: Annotated[
        bool,
        typer.Option(
            "--compare-no-bn",
            help="Also train the no-BN twin on the same data and plot both (BN's claim: "
            "higher accuracy, faster).",
        ),
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="Data-parallel processes on this machine (DistributedDataParallel, "
            "SyncBatchNorm, gloo). Under torchrun, leave it at 1: the group comes from "
            "torchrun's environment.",
        ),
    ] = 1,
) -> None:
    """Train a network; write checkpoint (safetensors), metrics JSON and curves PNG."""
    _require_torch("train")
    from dataclasses import replace

    from bnfold.converter.pipeline import DEFAULT_EPOCHS, train_from_options
    from bnfold.converter.train import plot_curves, save_run
    from bnfold.converter.train import train as train_arch

    opts = _options(
        arch=arch,
        data=data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        limit=limit,
        input_shape=_shape(input_shape),
        bn=not no_bn,
    )
    out = out or Path("runs") / f"{opts.data.split(':', 1)[0]}-{arch}{'-nobn' if no_bn else ''}"
    n_epochs = epochs or DEFAULT_EPOCHS.get(arch, 10)
    if nproc > 1 or "TORCHELASTIC_RUN_ID" in os.environ:
        if compare_no_bn:
            raise _fail("--compare-no-bn trains in one process; drop --nproc for it", code=2)
        _train_distributed(opts, out, nproc)
        return
    try:
        with _EpochBar(arch if not no_bn else f"{arch} (no BN)", n_epochs) as bar:
            result, splits, cfg = train_from_options(opts, log=_log, on_epoch=bar)
        save_run(out, result, cfg, splits)
        histories = {"BN" if not no_bn else "no BN": result.history}
        if compare_no_bn and not no_bn:
            with _EpochBar(f"{arch} (no BN)", n_epochs) as bar:
                twin = train_arch(replace(result.arch, bn=False), splits, cfg, on_epoch=bar)
            save_run(out / "no-bn", twin, cfg, splits)
            histories["no BN"] = twin.history
            _print_comparison(result.metrics, twin.metrics, result.history, twin.history)
        plot_curves(out / "curves.png", histories)
    except _user_errors() as e:
        raise _fail(str(e)) from None
    console.print(
        f"test accuracy [bold]{result.metrics['test_accuracy']:.4f}[/] in "
        f"{result.seconds:.1f} s; run written to {out}"
    )


def _train_distributed(opts: ConvertOptions, out: Path, nproc: int) -> None:
    from bnfold.converter import distributed

    try:
        world = distributed.from_env()
        if world is not None:  # launched by torchrun: this process is one rank
            run = distributed.run_rank(world, opts, out)
            if run is None:
                return
        else:
            console.print(f"training on {nproc} processes (DDP + SyncBatchNorm, gloo)")
            run = distributed.train_distributed(opts, out, nproc)
    except _user_errors() as e:
        raise _fail(str(e)) from None
    d = run["distributed"]
    console.print(
        f"test accuracy [bold]{run['metrics']['test_accuracy']:.4f}[/] on {d['world_size']} "
        f"processes; BN running statistics differ across ranks by at most "
        f"{d['bn_running_stats_max_diff_across_ranks']:.1e}; run written to {out}"
    )


def _print_comparison(
    bn: dict[str, float],
    nobn: dict[str, float],
    hist_bn: list[dict[str, float]],
    hist_nobn: list[dict[str, float]],
) -> None:
    from rich.table import Table

    def first_epoch_at(hist: list[dict[str, float]], target: float) -> str:
        for row in hist:
            if row["val_accuracy"] >= target:
                return str(int(row["epoch"]))
        return "never"

    target = 0.9 * max(bn["val_accuracy"], nobn["val_accuracy"])
    table = Table(title="BatchNorm vs no BatchNorm (same data, seed, epochs)")
    for col in ("", "test acc", "val acc", f"epochs to val acc {target:.2f}", "seconds"):
        table.add_column(col)
    for label, m, h in (("BN", bn, hist_bn), ("no BN", nobn, hist_nobn)):
        table.add_row(
            label,
            f"{m['test_accuracy']:.4f}",
            f"{m['val_accuracy']:.4f}",
            first_epoch_at(h, target),
            f"{m['train_seconds']:.1f}",
        )
    console.print(table)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by `bnfold train`.")],
    out: Annotated[Path, typer.Option(help="Where to write the ONNX graph.")] = Path(
        "reference.onnx"
    ),
) -> None:
    """Export a trained run to ONNX with every BatchNormalization kept (reference.onnx)."""
    _require_torch("export")
    import onnx

    from bnfold.converter.export import count_batchnorm_nodes, export_reference
    from bnfold.converter.train import load_run

    try:
        loaded = load_run(run)
        proto = export_reference(loaded.model, loaded.arch)
    except _user_errors() as e:
        raise _fail(str(e)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, out)
    console.print(
        f"wrote {out}: {count_batchnorm_nodes(proto)} BatchNormalization nodes, "
        f"opset {proto.opset_import[0].version}, input {loaded.arch.input_shape} "
        "with a dynamic batch axis"
    )


@app.command()
def convert(
    arch: Arch = "mlp",
    data: Data = "digits",
    repo: Annotated[Path, typer.Option(help="Model repository to write into.")] = Path("models"),
    name: Annotated[
        str | None, typer.Option(help="Model name in the repository [default: <data>-<arch>].")
    ] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = 32,
    lr: Lr = 3e-3,
    seed: Seed = 0,
    limit: Limit = None,
    input_shape: InputShape = None,
    version: Annotated[
        int | None, typer.Option(min=1, help="Version to write [default: highest + 1].")
    ] = None,
    rtol: Annotated[
        float, typer.Option(help="Largest parity error allowed, relative to the output scale.")
    ] = 1e-5,
    run_dir: Annotated[
        Path | None, typer.Option(help="Also keep the training run (checkpoint, curves) here.")
    ] = None,
) -> None:
    """Train, export, fold, verify and write a model version: the one-shot offline pipeline."""
    _require_torch("convert")
    from bnfold.converter.pipeline import DEFAULT_EPOCHS, ParityError
    from bnfold.converter.pipeline import convert as run_convert

    opts = _options(
        arch=arch,
        data=data,
        repo=repo,
        name=name,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        limit=limit,
        input_shape=_shape(input_shape),
        version=version,
        rtol=rtol,
        run_dir=run_dir,
    )
    try:
        with _EpochBar(arch, epochs or DEFAULT_EPOCHS.get(arch, 10)) as bar:
            result = run_convert(opts, log=_log, on_epoch=bar)
    except ParityError as e:
        console.print_json(json.dumps(e.report["comparisons"]))
        raise _fail(str(e), code=3) from None
    except _user_errors() as e:
        raise _fail(str(e)) from None
    m = result.manifest
    console.print(
        f"[bold green]{m['name']} v{m['version']}[/]: test accuracy "
        f"{m['metrics']['test_accuracy']:.4f}, BN {m['folding']['bn_before']} -> "
        f"{m['folding']['bn_after']}, parity max rel error {m['parity']['max_rel_error']:.2e} "
        f"(top-1 agreement {m['parity']['top1_agreement']:.4f}) -> {result.version_dir}"
    )


@app.command()
def demo(
    repo: Annotated[Path, typer.Option(help="Model repository to serve.")] = Path("models"),
    name: Annotated[str, typer.Option(help="Model to build if missing, and to query.")] = (
        "digits-mlp"
    ),
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8000,
    once: Annotated[
        bool, typer.Option("--once", help="Stop the service after showing the prediction.")
    ] = False,
) -> None:
    """Build the default digits model if missing, serve it, and show a prediction."""
    _require_torch("demo")
    from bnfold.converter.demo import run_demo

    try:
        code = run_demo(repo, name, host, port, once=once, log=_log, show=print)
    except (RuntimeError, OSError) as e:
        raise _fail(str(e)) from None
    except _user_errors() as e:
        raise _fail(str(e)) from None
    raise typer.Exit(code)


# Commands whose code lives beside what they drive; none of them imports torch.
app.command("fold")(cli_fold.fold)
app.command("verify")(cli_fold.verify)
app.command("serve")(serve)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
