"""The offline pipeline behind ``bnfold convert``.

train -> export (BN count checked) -> put the input normalisation in front
(reference.onnx takes the data as the user has it: digits' counts 0..16,
pixels 0..255) -> fold (the normalisation into the first layer, like a BN)
-> model.onnx -> verify (PyTorch eval on normalised data vs both graphs on
the raw data) -> write the version atomically.

A version whose parity fails is never written: the repository only ever holds
models that compute what the trained network computes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from bnfold import folding
from bnfold.contract import DEFAULT_MAX_BATCH_SIZE, DEFAULT_RTOL, ParityReport, compare
from bnfold.converter import timm_models
from bnfold.converter.bn_health import bn_health
from bnfold.converter.data import Splits, load, prepare
from bnfold.converter.distributed import World
from bnfold.converter.errors import InputError, ParityFailure
from bnfold.converter.export import INPUT_NAME, OUTPUT_NAME, export_reference, torch_logits
from bnfold.converter.input_map import (
    denormalize_array,
    describe_input_map,
    fold_outcome,
    prepend_normalization,
)
from bnfold.converter.models import ArchConfig, bn_modules, build_model, default_input_shape
from bnfold.converter.repository import Written, check_target, write
from bnfold.converter.train import (
    BatchCallback,
    EpochCallback,
    TrainConfig,
    TrainResult,
    save_run,
    train,
)
from bnfold.converter.verify import run_onnx
from bnfold.converter.version import (
    CONVERT_BATCHING,
    folding_record,
    new_manifest,
    serving_config,
)

if TYPE_CHECKING:
    from bnfold.converter.quantize import QuantizeOptions

# Epochs when the user gives none: enough for each network to converge on digits
# on 2 CPU cores in about a minute or less.
DEFAULT_EPOCHS = {"mlp": 10, "cifar-cnn": 8, "fer-cnn": 5, "resnet": 8}
# Random inputs added to the held-out set when checking parity: they probe
# input regions the data never reaches (and every channel of every BN).
N_RANDOM_PARITY = 64


class ParityError(ParityFailure, RuntimeError):
    """The folded graph does not compute what the trained network computes (exit 3)."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ConvertOptions:
    arch: str = "mlp"
    data: str = "digits"
    repo: Path = Path("models")
    name: str | None = None
    input_shape: tuple[int, ...] | None = None
    epochs: int | None = None
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    seed: int = 0
    limit: int | None = None
    bn: bool = True
    version: int | None = None
    rtol: float = DEFAULT_RTOL
    run_dir: Path | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    resize: bool = False  # resample a user's data to the network's input
    # The graphs take standardised data, as the network does, instead of raw values.
    normalized_input: bool = False
    # int8 or fp16: the version is the folded graph quantized, behind its gate (issue 22).
    quantize: QuantizeOptions | None = None
    # A local state dict to start training from (random initialisation without).
    weights: Path | None = None

    def model_name(self) -> str:
        arch = self.arch.removeprefix(timm_models.PREFIX)  # ':' is not allowed in a name
        return self.name or f"{self.data.split(':', 1)[0]}-{arch}"


@dataclass
class ConvertResult:
    written: Written
    train: TrainResult

    @property
    def version_dir(self) -> Path:
        return self.written.path

    @property
    def manifest(self) -> dict[str, Any]:
        """manifest.json as written (name, version and sha256 included)."""
        return self.written.manifest.to_dict()


Log = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def train_from_options(
    opts: ConvertOptions,
    *,
    log: Log = _noop,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    world: World | None = None,
) -> tuple[TrainResult, Splits, TrainConfig]:
    shape = check_arch(opts)
    log(f"loading {opts.data}")
    dataset = load(opts.data, input_shape=shape, seed=opts.seed)
    splits = prepare(dataset, shape, seed=opts.seed, limit=opts.limit, resize=opts.resize or None)
    info = splits.info
    log(
        f"split {info['n_train']} train / {info['n_val']} val / {info['n_test']} test, "
        f"{len(splits.labels)} classes, input {list(shape)}"
    )
    extra: dict[str, Any] = {}
    if timm_models.is_timm(opts.arch):
        extra["timm"] = timm_models.version()
    if opts.weights is not None:
        digest = hashlib.sha256(opts.weights.read_bytes()).hexdigest()
        extra["init"] = {"weights": opts.weights.name, "sha256": digest}
    arch = ArchConfig(opts.arch, tuple(shape), len(splits.labels), bn=opts.bn, extra=extra)
    cfg = TrainConfig(
        epochs=opts.epochs or default_epochs(opts.arch),
        batch_size=opts.batch_size,
        lr=opts.lr,
        seed=opts.seed,
    )
    result = train(
        arch, splits, cfg, on_epoch=on_epoch, on_batch=on_batch, world=world, weights=opts.weights
    )
    return result, splits, cfg


def default_epochs(arch: str) -> int:
    return timm_models.EPOCHS if timm_models.is_timm(arch) else DEFAULT_EPOCHS[arch]


def check_arch(opts: ConvertOptions) -> tuple[int, ...]:
    """The input shape to train at; an unknown architecture, or one that cannot take
    that shape, is refused here, before any data is loaded."""
    shape = tuple(opts.input_shape or default_input_shape(opts.arch))
    try:  # the class count is not known yet; any count builds the same layers
        model = build_model(ArchConfig(opts.arch, shape, 2, bn=opts.bn))
        if timm_models.is_timm(opts.arch):  # timm's layers take any size until they run
            with torch.no_grad():
                model.eval()(torch.zeros(2, *shape))
    except InputError:
        raise
    except (ValueError, RuntimeError) as e:  # RuntimeError: too small for its convolutions
        raise InputError(f"--arch {opts.arch} cannot take input shape {list(shape)}: {e}") from None
    if opts.weights is not None and not opts.weights.is_file():
        raise InputError(f"--weights {opts.weights}: no such file")
    return shape


def check_parity(
    result: TrainResult,
    reference: onnx.ModelProto,
    folded: onnx.ModelProto,
    x_heldout: np.ndarray,
    *,
    rtol: float,
    seed: int,
    raw_heldout: np.ndarray | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> tuple[ParityReport, dict[str, Any]]:
    """PyTorch eval vs reference.onnx vs model.onnx, on held-out and random
    inputs: the three comparisons' verdict, and what the manifest adds to it.

    PyTorch gets the standardised data (``x_heldout``, and random rows drawn
    in that space); with ``raw_heldout`` the graphs get the raw data instead
    (the same rows as stored, and the random rows mapped back by
    ``preprocessing``'s pixel_scale, mean and std), so the comparison covers
    the input normalisation in front of them."""
    rng = np.random.default_rng(seed)
    x_random = rng.standard_normal((N_RANDOM_PARITY, *x_heldout.shape[1:])).astype(np.float32)
    x_all = np.concatenate([x_heldout, x_random])
    graph_in = x_all
    if raw_heldout is not None:
        assert preprocessing is not None
        raw_random = denormalize_array(
            x_random,
            preprocessing["pixel_scale"],
            preprocessing["mean"],
            preprocessing["std"],
            axis=1,
        )
        graph_in = np.concatenate([raw_heldout.astype(np.float32), raw_random])
    ref_out = run_onnx(reference, {INPUT_NAME: graph_in})[OUTPUT_NAME]
    folded_out = run_onnx(folded, {INPUT_NAME: graph_in})[OUTPUT_NAME]
    torch_out = torch_logits(result.model, x_all)
    report = ParityReport.of(
        {
            "torch_vs_reference": compare(torch_out, ref_out, rtol=rtol),
            "reference_vs_folded": compare(ref_out, folded_out, rtol=rtol),
            "torch_vs_folded": compare(torch_out, folded_out, rtol=rtol),
        }
    )
    return report, {
        "n_heldout": len(x_heldout),
        "n_random": N_RANDOM_PARITY,
        "inputs": "raw" if raw_heldout is not None else "normalized",
        "comparisons": {name: p.to_dict() for name, p in report.outputs.items()},
    }


def with_input_map(
    network: onnx.ModelProto, splits: Splits, opts: ConvertOptions
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """reference.onnx and its preprocessing: the network with the input
    normalisation in front (``normalized: false``, the graph takes raw
    values), or, with ``normalized_input``, the network as it is."""
    prep = dict(splits.preprocessing)
    if opts.normalized_input:
        return network, prep | {"normalized": True}
    reference = prepend_normalization(
        network, pixel_scale=prep["pixel_scale"], mean=prep["mean"], std=prep["std"]
    )
    return reference, prep | {"normalized": False}


def convert(
    opts: ConvertOptions,
    *,
    log: Log = _noop,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> ConvertResult:
    """Train, export, fold, verify and write one version into the repository."""
    name = opts.model_name()
    check_target(opts.repo, name, opts.version)
    result, splits, cfg = train_from_options(opts, log=log, on_epoch=on_epoch, on_batch=on_batch)
    log(
        f"test accuracy {result.metrics['test_accuracy']:.4f} after {cfg.epochs} epochs "
        f"({result.seconds:.1f} s)"
    )
    if opts.run_dir is not None:
        save_run(opts.run_dir, result, cfg, splits)
        log(f"run saved to {opts.run_dir}")

    health = bn_health(result.model, splits.x_val)
    for warning in health["warnings"]:
        log(f"warning: {warning}")

    log("exporting reference.onnx (every BatchNormalization kept)")
    network = export_reference(result.model, result.arch)
    bn_before = folding.count_bn(network)
    reference, preprocessing = with_input_map(network, splits, opts)
    if not opts.normalized_input:
        lo, hi = preprocessing["input_range"]
        log(f"reference.onnx takes the raw data ({lo:g}..{hi:g}); its normalisation runs first")
    log(f"folding {bn_before} BatchNorm layers")
    folded, report = folding.fold(reference)
    log(report.summary().describe())
    input_map = None if opts.normalized_input else fold_outcome(report.to_dict())
    log(describe_input_map(input_map))

    log("verifying PyTorch eval vs reference.onnx vs model.onnx")
    parity, details = check_parity(
        result,
        reference,
        folded,
        splits.x_test,
        rtol=opts.rtol,
        seed=opts.seed,
        raw_heldout=None if opts.normalized_input else splits.raw_test,
        preprocessing=preprocessing,
    )
    if not parity.passed:
        raise ParityError(
            f"parity failed (max rel error {parity.max_rel_error:.3g} > {opts.rtol:g} or "
            f"top-1 agreement {parity.top1_agreement}); nothing was written",
            parity.summary() | details,
        )

    manifest = new_manifest(
        name,
        folded,
        arch={**result.arch.to_dict(), "bn_count": len(bn_modules(result.model))},
        data={**splits.info, "spec": opts.data},
        training={**cfg.to_dict(), "seconds": result.seconds},
        metrics=result.metrics,
        labels=splits.labels,
        preprocessing=preprocessing,
        fold=folding_record(
            report, bn_before=bn_before, bn_health=health, input_normalization=input_map
        ),
        parity=parity,
        parity_extra=details,
        with_torch=True,
    )
    config = serving_config(
        name,
        folded,
        max_batch_size=opts.max_batch_size,
        labels=splits.labels,
        preprocessing=preprocessing,
        dynamic_batching=CONVERT_BATCHING,
    )
    if opts.quantize is not None:  # issue 22: the version is the quantized graph
        from bnfold.converter.quantize import apply_to_convert

        folded, manifest = apply_to_convert(opts, folded, manifest, splits, result, log=log)
    written = write(
        opts.repo,
        name,
        model_onnx=folded.SerializeToString(),
        reference_onnx=reference.SerializeToString(),
        manifest=manifest,
        config=config,
        version=opts.version,
    )
    log(f"wrote {written.path}")
    return ConvertResult(written, result)
