"""``bnfold``: train, export, fold, verify, convert, import and serve BatchNorm networks.

The command line sits above both wings (it is the one module that names
both): the converter's commands and ``serve``.

Each command loads its implementation when it runs, and only then:
train, export, convert and demo import torch in their bodies; fold and
verify live in :mod:`bnfold.converter.cli_fold` and serve in
:mod:`bnfold.service.cli`, imported by :class:`Group` when one of them is
the command given. So ``bnfold fold`` loads neither torch nor uvicorn, and
``bnfold fold``, ``verify`` and ``serve`` work without torch (the serving
image).

Every command exits 0 on success, 2 on a usage or input error, 3 on a
parity failure and 1 on a bug (with its traceback): see
:mod:`bnfold.converter.errors`, whose ``COMMAND_EXIT_CODES`` says which of
them each command can return (its ``--help`` footer lists those only).
Expected failures are caught once, in :meth:`Group.invoke`, and shown as
one line.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import typer
import typer.main
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from bnfold.converter.console import console, require_torch
from bnfold.converter.errors import (
    EXIT_BUG,
    EXIT_CODES_HELP,
    exit_code,
    exit_codes_help,
    message,
)

if TYPE_CHECKING:
    from bnfold.converter.pipeline import ConvertOptions

# click's Context, Command and Parameter: typer vendors click from 0.2x on
# (typer._click) and used the click package before, so they are typed Any.
Context = Any
ClickCommand = Any


# The commands whose code is imported only when they run: module:function,
# and the one line `bnfold --help` shows for them (their docstring's first
# line; a test keeps the two equal).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "fold": (
        "bnfold.converter.cli_fold:fold",
        "Fold every BatchNormalization (node or Mul/Add chain) into its neighbours, exactly.",
    ),
    "verify": (
        "bnfold.converter.cli_fold:verify",
        "Run both models on ONNX Runtime (optimizations off) and compare their outputs.",
    ),
    "import": (
        "bnfold.converter.cli_import:import_model",
        "Fold any ONNX model's BatchNorms, prove the result, and write it as a repository version.",
    ),
    "quantize": (
        "bnfold.converter.quantize:quantize_command",
        "Write an int8 or fp16 version of a folded model, gated against its float32 graph.",
    ),
    "serve": (
        "bnfold.service.cli:serve",
        "Serve a model repository over the Open Inference Protocol (KServe V2).",
    ),
}
COMMAND_ORDER = (
    "train", "export", "fold", "verify", "convert", "import", "quantize", "serve", "demo",
    "sample-image",
)  # fmt: skip


def _hide_flag_types(params: list[Any]) -> list[Any]:
    """typer's rich help shows ``<bool>`` beside every flag; a flag takes no value."""
    for p in params:
        if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
            p.metavar = ""
    return params


# The narrowest help column that still reads: typer's option table shrinks every
# column to fit the terminal and cuts option names (`--no-strict-readine…`).
MIN_HELP_COLUMN = 30


def _rich_help_fits(command: Any, ctx: Context) -> bool:
    """Whether typer's option table fits the terminal with every option name whole:
    its name and type columns at full width, and room for the help beside them."""
    from rich.console import Console
    from typer import rich_utils

    width = rich_utils.MAX_WIDTH or Console().width
    columns = [0] * 5  # long names, short names, their negations (both), value type
    for param in command.get_params(ctx):
        names = [*param.opts], [*param.secondary_opts]
        cells = [
            ",".join(n for n in names[0] if n.startswith("--")),
            ",".join(n for n in names[0] if not n.startswith("--")),
            ",".join(n for n in names[1] if n.startswith("--")),
            ",".join(n for n in names[1] if not n.startswith("--")),
            str(getattr(param, "display_type_rich", lambda **_: "")(ctx=ctx) or ""),
        ]
        columns = [max(c, len(cell)) for c, cell in zip(columns, cells, strict=True)]
    # each column padded by one on both sides, the panel's two borders and margins
    return sum(columns) + 2 * 6 + 4 + MIN_HELP_COLUMN <= width


class Command(TyperCommand):
    """A bnfold command: flags (``--help`` too) show no value type in ``--help``,
    and a terminal too narrow for typer's option table gets click's plain help,
    which puts a long option name on a line of its own instead of cutting it."""

    def get_params(self, ctx: Context) -> list[Any]:
        return _hide_flag_types(super().get_params(ctx))

    def format_help(self, ctx: Context, formatter: Any) -> None:
        if _rich_help_fits(self, ctx):
            return super().format_help(ctx, formatter)
        return super(TyperCommand, self).format_help(ctx, formatter)


class LazyCommands(MutableMapping[str, Any]):
    """A group's commands by name, where a lazy one is imported at its first lookup.

    Names and membership need no import (``bnfold --help`` and typo
    suggestions use only those); ``commands[name]`` is always the real
    command, as click's API promises.
    """

    def __init__(self, loaded: Mapping[str, Any], load: Callable[[str], Any]) -> None:
        self._loaded = dict(loaded)
        self._load = load

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            if name not in LAZY_COMMANDS:
                raise KeyError(name)
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in LAZY_COMMANDS

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._loaded
        yield from (n for n in LAZY_COMMANDS if n not in self._loaded)

    def __len__(self) -> int:
        return len(self._loaded.keys() | LAZY_COMMANDS.keys())


class Group(TyperGroup):
    """The ``bnfold`` group: lazy commands, and one place that turns errors into exit codes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = LazyCommands(self.commands, self._load)
        # Stand-ins that only describe a lazy command, for `bnfold --help`.
        self._stubs = {
            name: Command(
                name=name, help=short, short_help=short, rich_markup_mode=self.rich_markup_mode
            )
            for name, (_, short) in LAZY_COMMANDS.items()
        }

    def get_params(self, ctx: Context) -> list[Any]:
        return _hide_flag_types(super().get_params(ctx))

    def list_commands(self, ctx: Context) -> list[str]:
        order = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(self.commands, key=lambda n: order.get(n, len(order)))

    def get_command(self, ctx: Context, name: str) -> ClickCommand | None:
        """The command, or a lazy one's stand-in: listing commands imports nothing."""
        commands = self.commands
        if isinstance(commands, LazyCommands) and not commands.is_loaded(name):
            return self._stubs.get(name)
        return super().get_command(ctx, name)

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, ClickCommand | None, list[str]]:
        """The command to run: a lazy one is imported here."""
        name, cmd, rest = super().resolve_command(ctx, args)
        if name is not None and name in LAZY_COMMANDS:
            cmd = self.commands[name]
        return name, cmd, rest

    def _load(self, name: str) -> ClickCommand:
        target, _ = LAZY_COMMANDS[name]
        module, _, attr = target.partition(":")
        function = getattr(importlib.import_module(module), attr)
        one = typer.Typer(
            add_completion=False,
            pretty_exceptions_enable=False,
            rich_markup_mode=self.rich_markup_mode,
        )
        one.command(name, cls=Command, epilog=exit_codes_help(name))(function)
        return typer.main.get_command(one)

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            code = exit_code(exc)
            if code is None:  # a bug, or click's own exit and usage errors
                raise
            console.print(f"[bold red]error:[/] {escape(message(exc))}")
            raise typer.Exit(code) from None


app = typer.Typer(
    name="bnfold",
    help=(
        "Train BatchNorm networks, fold every BN into its neighbours at the ONNX level, "
        "prove the folded graph computes what was trained, and serve it over the Open "
        "Inference Protocol."
    ),
    epilog=EXIT_CODES_HELP,
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def command(name: str) -> Any:
    """A command of the group, whose help ends with the exit codes it can return."""
    return app.command(name, cls=Command, epilog=exit_codes_help(name))


def _print_version(value: bool) -> None:
    if value:
        import bnfold

        typer.echo(f"bnfold {bnfold.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


# The architectures of bnfold.converter.models (which imports torch), for
# --arch to refuse any other before a command loads torch; a test keeps the
# two lists equal.
ArchName = Literal["mlp", "cifar-cnn", "fer-cnn", "resnet"]
ARCHITECTURES: tuple[str, ...] = get_args(ArchName)
DATA_HELP = (
    "Data set: digits (scikit-learn's embedded 8x8 digits, resized to the network's input), "
    "synthetic (seeded), npz:PATH (arrays x, y), cifar10:PATH (binary batches) or "
    "fer2013:PATH (CSV)."
)

TIMM_PREFIX = "timm:"  # bnfold.converter.timm_models.PREFIX, without importing torch


def _arch(value: str) -> str:
    """Refuse an architecture before any command loads torch; a timm name's form is
    checked here too (a hub reference never reaches timm)."""
    if value in ARCHITECTURES:
        return value
    if value.startswith(TIMM_PREFIX):
        from bnfold.converter.errors import InputError
        from bnfold.converter.timm_models import model_name

        try:
            model_name(value)
        except InputError as e:
            raise typer.BadParameter(str(e).removeprefix(f"--arch {value}: ")) from None
        return value
    choices = ", ".join(repr(a) for a in ARCHITECTURES)
    raise typer.BadParameter(f"{value!r} is not one of {choices}, or timm:NAME")


Arch = Annotated[
    str,
    typer.Option(
        "--arch",
        "-a",
        metavar="<name>",
        callback=_arch,
        help="Architecture: mlp, cifar-cnn, fer-cnn, resnet, or timm:NAME (a BatchNorm model "
        "of timm's registry, e.g. timm:resnet10t: random init or --weights, never downloaded; "
        "the timm extra).",
    ),
]
Weights = Annotated[
    Path | None,
    typer.Option(
        help="Start training from this local state dict (.safetensors, or a torch file loaded "
        "with weights_only) instead of random weights; it must fit the model built for the "
        "data (classes, input channels).",
        show_default="random init",
    ),
]
Data = Annotated[str, typer.Option("--data", "-d", help=DATA_HELP)]
Epochs = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Training epochs: mlp 10, cifar-cnn 8, fer-cnn 5, resnet 8, timm:NAME 3 unless given.",
        show_default="per architecture",
    ),
]
BatchSize = Annotated[int, typer.Option(min=2, help="Training batch size.")]
Lr = Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")]
Seed = Annotated[int, typer.Option(help="Seed for the split, initialisation and shuffling.")]
Resize = Annotated[
    bool,
    typer.Option(
        "--resize",
        help="Resample data whose samples do not have the network's input shape (resize "
        "images, convert channels). The embedded digits and synthetic sets always are; "
        "other data of the wrong shape is refused without it.",
    ),
]
Limit = Annotated[
    int | None,
    typer.Option(
        min=10,
        help="Use at most this many samples (stratified), for quick runs.",
        show_default="all",
    ),
]
InputShape = Annotated[
    str | None,
    typer.Option(
        help="Network input shape without the batch axis, e.g. 64 or 1,48,48; the data is "
        "resized to it. mlp takes 64, cifar-cnn, resnet and timm:NAME 3,32,32, fer-cnn 1,48,48 "
        "unless given.",
        show_default="the architecture's",
    ),
]


# bnfold convert/import --precision (docs/quantization.md): fp32 is the folded
# graph itself; int8 and fp16 are written by bnfold.converter.quantize.
PrecisionName = Literal["fp32", "int8", "fp16"]
Precision = Annotated[
    PrecisionName,
    typer.Option(
        metavar="fp32|int8|fp16",
        help="Precision of the version written: int8 (static QDQ quantization calibrated on "
        "the training split) or fp16 (float32 inputs and outputs), each gated against the "
        "float32 folded graph on the test split (docs/quantization.md).",
    ),
]
Calibration = Annotated[
    Literal["minmax", "percentile", "entropy"],
    typer.Option(metavar="minmax|percentile|entropy", help="int8 calibration method."),
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


def _log(message: str) -> None:
    console.print(f"[dim]·[/] {escape(message)}")


class _TrainingBar:
    """Training progress, moved per batch; it appears at the first batch and ends
    with the last epoch, so an error before training shows no bar."""

    def __init__(self, label: str, epochs: int) -> None:
        self.label, self.epochs = label, epochs
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _TrainingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _start(self, n_batches: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            self.label, total=self.epochs * n_batches, epoch=1, epochs=self.epochs, stats=""
        )

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def batch(self, epoch: int, done: int, n_batches: int) -> None:
        if self.progress is None:
            self._start(n_batches)
        self.progress.update(self.task, completed=(epoch - 1) * n_batches + done, epoch=epoch)

    def epoch(self, epoch: int, row: dict[str, float]) -> None:
        if self.progress is None:
            return
        stats = (
            f"loss {row['train_loss']:.3f}  acc {row['train_accuracy']:.3f}  "
            f"val_acc {row['val_accuracy']:.3f}"
        )
        self.progress.update(self.task, stats=stats)
        if epoch >= self.epochs:
            self._stop()


def _options(**kw: Any) -> ConvertOptions:
    from bnfold.converter.pipeline import ConvertOptions

    return ConvertOptions(**kw)


@command("train")
def train(
    arch: Arch = "mlp",
    data: Data = "digits",
    out: Annotated[
        Path | None, typer.Option(help="Run folder to write.", show_default="runs/<data>-<arch>")
    ] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = 32,
    lr: Lr = 3e-3,
    seed: Seed = 0,
    limit: Limit = None,
    resize: Resize = False,
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
    weights: Weights = None,
) -> None:
    """Train a network; write checkpoint (safetensors), metrics JSON and curves PNG."""
    shape = _shape(input_shape)
    distributed = nproc > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if distributed and compare_no_bn:
        raise typer.BadParameter(
            "--compare-no-bn trains in one process; drop --nproc for it",
            param_hint="--compare-no-bn",
        )
    require_torch("train")
    from dataclasses import replace

    from bnfold.converter.pipeline import default_epochs, train_from_options
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
        resize=resize,
        input_shape=shape,
        bn=not no_bn,
        weights=weights,
    )
    out = out or Path("runs") / f"{opts.model_name()}{'-nobn' if no_bn else ''}"
    n_epochs = epochs or default_epochs(arch)
    if distributed:
        _train_distributed(opts, out, nproc)
        return
    with _TrainingBar(arch if not no_bn else f"{arch} (no BN)", n_epochs) as bar:
        result, splits, cfg = train_from_options(
            opts, log=_log, on_epoch=bar.epoch, on_batch=bar.batch
        )
    save_run(out, result, cfg, splits)
    histories = {"BN" if not no_bn else "no BN": result.history}
    if compare_no_bn and not no_bn:
        with _TrainingBar(f"{arch} (no BN)", n_epochs) as bar:
            twin = train_arch(
                replace(result.arch, bn=False),
                splits,
                cfg,
                on_epoch=bar.epoch,
                on_batch=bar.batch,
            )
        save_run(out / "no-bn", twin, cfg, splits)
        histories["no BN"] = twin.history
        _print_comparison(result.metrics, twin.metrics, result.history, twin.history)
    plot_curves(out / "curves.png", histories)
    console.print(
        f"test accuracy [bold]{result.metrics['test_accuracy']:.4f}[/] in "
        f"{result.seconds:.1f} s; run written to {escape(str(out))}"
    )


def _train_distributed(opts: ConvertOptions, out: Path, nproc: int) -> None:
    from bnfold.converter import distributed

    world = distributed.from_env()
    if world is not None:  # launched by torchrun: this process is one rank
        run = distributed.run_rank(world, opts, out)
        if run is None:
            return
    else:
        console.print(f"training on {nproc} processes (DDP + SyncBatchNorm, gloo)")
        run = distributed.train_distributed(opts, out, nproc)
    d = run["distributed"]
    console.print(
        f"test accuracy [bold]{run['metrics']['test_accuracy']:.4f}[/] on {d['world_size']} "
        f"processes; BN running statistics differ across ranks by at most "
        f"{d['bn_running_stats_max_diff_across_ranks']:.1e}; run written to {escape(str(out))}"
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


@command("export")
def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by `bnfold train`.")],
    out: Annotated[Path, typer.Option(help="Where to write the ONNX graph.")] = Path(
        "reference.onnx"
    ),
) -> None:
    """Export a trained run to ONNX with every BatchNormalization kept (reference.onnx)."""
    require_torch("export")
    import onnx

    from bnfold.converter.export import count_batchnorm_nodes, export_reference
    from bnfold.converter.train import load_run

    loaded = load_run(run)
    proto = export_reference(loaded.model, loaded.arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, out)
    console.print(
        f"wrote {escape(str(out))}: {count_batchnorm_nodes(proto)} BatchNormalization nodes, "
        f"opset {proto.opset_import[0].version}, input {loaded.arch.input_shape} "
        "with a dynamic batch axis"
    )


@command("convert")
def convert(
    arch: Arch = "mlp",
    data: Data = "digits",
    repo: Annotated[Path, typer.Option(help="Model repository to write into.")] = Path("models"),
    name: Annotated[
        str | None,
        typer.Option(help="Model name in the repository.", show_default="<data>-<arch>"),
    ] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = 32,
    lr: Lr = 3e-3,
    seed: Seed = 0,
    limit: Limit = None,
    resize: Resize = False,
    input_shape: InputShape = None,
    version: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Version to write; one that exists is refused before training.",
            show_default="highest + 1",
        ),
    ] = None,
    rtol: Annotated[
        float,
        typer.Option(min=0.0, help="Largest parity error allowed, relative to the output scale."),
    ] = 1e-5,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Also keep the training run (checkpoint, curves) here.", show_default="not kept"
        ),
    ] = None,
    normalized_input: Annotated[
        bool,
        typer.Option(
            "--normalized-input",
            help="Write a model that takes standardised input ((raw / pixel_scale - mean) / "
            "std, as the network was trained) instead of the raw data (digits' counts 0..16, "
            "pixels 0..255), whose normalisation is then folded into the first layer.",
        ),
    ] = False,
    precision: Precision = "fp32",
    calibration: Calibration = "minmax",
    weights: Weights = None,
) -> None:
    """Train, export, fold, verify and write a model version: the one-shot offline pipeline."""
    shape = _shape(input_shape)
    require_torch("convert")
    from bnfold.converter.pipeline import ParityError, default_epochs
    from bnfold.converter.pipeline import convert as run_convert
    from bnfold.converter.quantize import QuantizeOptions
    from bnfold.folding.report import FoldSummary

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
        resize=resize,
        input_shape=shape,
        version=version,
        rtol=rtol,
        run_dir=run_dir,
        normalized_input=normalized_input,
        quantize=None if precision == "fp32" else QuantizeOptions(precision, calibration),
        weights=weights,
    )
    try:
        with _TrainingBar(arch, epochs or default_epochs(arch)) as bar:
            result = run_convert(opts, log=_log, on_epoch=bar.epoch, on_batch=bar.batch)
    except ParityError as e:
        console.print_json(json.dumps(e.report["comparisons"]))
        raise
    m = result.manifest
    if m.get("quantization"):
        from bnfold.converter.quantize import summary

        console.print(f"{m['precision']}: {escape(summary(m['quantization']))}")
    console.print(
        f"[bold green]{escape(m['name'])} v{m['version']}[/]: test accuracy "
        f"{m['metrics']['test_accuracy']:.4f}, {FoldSummary(**m['folding']['summary']).describe()}"
        f", parity max rel error {m['parity']['max_rel_error']:.2e} "
        f"(top-1 agreement {m['parity']['top1_agreement']:.4f}) -> "
        f"{escape(str(result.version_dir))}"
    )


@command("demo")
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
    require_torch("demo")
    from bnfold.converter.demo import run_demo

    code = run_demo(
        repo, name, host, port, once=once, log=_log, show=lambda line: print(line, flush=True)
    )
    raise typer.Exit(code)


@command("sample-image")
def sample_image(
    model: Annotated[str, typer.Option(help="Model whose test split the sample comes from.")] = (
        "digits-mlp"
    ),
    repo: Annotated[
        Path,
        typer.Option(
            envvar="BNFOLD_REPO",
            help="Model repository (as for serve, BNFOLD_REPO sets it too); a relative path "
            "is taken from the current folder.",
        ),
    ] = Path("models"),
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("digit.png"),
    index: Annotated[
        int, typer.Option(min=0, help="Which sample of the test split (0: the first).")
    ] = 0,
    size: Annotated[int, typer.Option(min=8, max=4096, help="Longer side in pixels.")] = 128,
    background: Annotated[
        str,
        typer.Option(
            metavar="light|dark",
            help="light: dark ink on white, as on paper; dark: as the data set stores digits "
            "(light ink on dark). Images of other data are drawn as stored.",
        ),
    ] = "light",
) -> None:
    """Write a PNG of a test-split sample of a model's data set, for /classify."""
    if background not in ("light", "dark"):
        raise typer.BadParameter("use light or dark", param_hint="--background")
    from bnfold.contract import scan_versions
    from bnfold.converter.demo import render_test_sample
    from bnfold.converter.errors import InputError

    _check_model_folder(repo, model)
    versions = scan_versions(repo / model).valid
    if not versions:
        raise InputError(f"--model {model}: {repo / model} has no valid version")
    manifest = json.loads((repo / model / str(versions[-1]) / "manifest.json").read_text())
    if not manifest.get("data"):
        raise InputError(
            f"--model {model}: v{versions[-1]} was not trained by bnfold convert, so there is "
            "no data set to take a sample from"
        )
    sample = render_test_sample(manifest, index, size=size, background=background)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(sample.png)
    console.print(
        f"wrote {escape(str(out))}: test-split sample {sample.position} of "
        f"{escape(manifest['data'].get('spec', manifest['data'].get('name', '?')))} "
        f"(data set index {sample.index}), label {escape(sample.label)}, drawn "
        f"{'dark on white' if sample.background == 'light' else 'light on dark'}"
    )


def _check_model_folder(repo: Path, model: str) -> None:
    """A repository or model that is not there, said with the folder looked in:
    the default repository is ``models`` in the current folder."""
    from bnfold.converter.errors import InputError

    where = f"{repo} ({repo.resolve()})" if not repo.is_absolute() else str(repo)
    if not repo.is_dir():
        raise InputError(
            f"no model repository at {where}: run from the folder that holds it, or give "
            "--repo (or BNFOLD_REPO)"
        )
    if not (repo / model).is_dir():
        names = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        held = f"it holds {shown}" if names else "it holds no model"
        raise InputError(f"--model {model}: no such model in repository {where}; {held}")


def main() -> None:
    try:
        app()
    except Exception:  # not an expected failure: Group.invoke showed those as one line
        traceback.print_exc()
        console.print(
            "[bold red]bnfold: unexpected error[/] (a bug; the traceback above shows where)"
        )
        sys.exit(EXIT_BUG)


if __name__ == "__main__":
    main()
