"""``bnfold import``: any ONNX model becomes a repository version, folded and proven.

The file given (a PyTorch dynamo or TorchScript export, tf2onnx/Keras,
onnxmltools...) is kept as ``reference.onnx``; its BNs are folded into
``model.onnx``; both run on ONNX Runtime CPU on the data given (``--data``)
or on generated inputs, and the version is written only when every output
agrees (:func:`bnfold.contract.compare`). ``config.json`` is completed from
the graph (names, datatypes, shapes, ``max_batch_size`` from a dynamic
first dimension), or, when the model already has one, keeps its edits.
With ``--normalize MEAN/STD`` the model's input normalisation goes in front
of the graph (:mod:`bnfold.converter.input_map`), so the version takes the
raw data (pixels 0..255 by default) and the map folds into the first layer;
that the prepended graph computes what the original computes on normalised
data is proven too. No torch: the serving image can import models too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from bnfold import folding
from bnfold.contract import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_RTOL,
    ContractError,
    ParityReport,
    Preprocessing,
    compare_outputs,
)
from bnfold.converter.errors import InputError, ParityFailure
from bnfold.converter.input_map import (
    NormalizeError,
    denormalize_array,
    describe_input_map,
    fold_outcome,
    normalize_array,
    prepend_normalization,
)
from bnfold.converter.repository import Written, check_target, write
from bnfold.converter.verify import load_model, random_inputs, read_data, run_onnx
from bnfold.converter.version import (
    count_convolutions,
    folding_record,
    fused_warning,
    new_manifest,
    serving_config,
)
from bnfold.folding.report import FoldSummary

if TYPE_CHECKING:
    from bnfold.converter.quantize import QuantizeOptions

N_RANDOM = 64

NO_BN_HINT = """\
The graph holds no BatchNormalization node, so there is nothing to fold; the
version is written as it is. If the network has BN layers, the exporter may
have merged them already: torch.onnx.export(..., dynamo=True) runs
onnxscript's optimizer, which folds Conv+BN pairs and leaves no proof of it.
To keep every BN for a verifiable fold, export with
    torch.onnx.export(model, (x,), dynamo=True, optimize=False)
or let bnfold export it: bnfold.convert_module(model, x, repo=..., name=...).
BNs that arrive decomposed into Mul/Add by per-channel constants (tf2onnx
writes them so) are folded all the same: see the fold report."""

Log = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class ImportOptions:
    model: Path
    repo: Path
    name: str
    version: int | None = None
    data: str | None = None  # npz:PATH: one array per input name, or `x` for a one input
    n_random: int = N_RANDOM  # generated rows, beside --data
    seed: int = 0
    rtol: float = DEFAULT_RTOL
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    labels: tuple[str, ...] = ()
    # (mean, std) per channel, in units of raw / input_range[1]: put the
    # normalisation in front, so the version takes the raw data.
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    input_range: tuple[float, float] = (0.0, 255.0)
    layout: str | None = None  # NCHW, NHWC or NC; None: from the input's shape
    # int8 or fp16: the version is the folded graph quantized, behind its gate (issue 22).
    quantize: QuantizeOptions | None = None


@dataclass(frozen=True)
class Normalized:
    """An imported graph with its input normalisation in front."""

    model: onnx.ModelProto
    axis: int
    pixel_scale: float
    mean: list[float]
    std: list[float]
    preprocessing: dict[str, Any] | None  # None: the input is not an image
    why_no_preprocessing: str = ""


@dataclass(frozen=True)
class ImportResult:
    written: Written
    bn_before: int
    bn_after: int
    parity: ParityReport  # reference.onnx vs model.onnx, every output
    summary: FoldSummary

    @property
    def version_dir(self) -> Path:
        return self.written.path

    @property
    def manifest(self) -> dict[str, Any]:
        """manifest.json as written (name, version and sha256 included)."""
        return self.written.manifest.to_dict()


def parity_inputs(model: onnx.ModelProto, opts: ImportOptions) -> dict[str, np.ndarray]:
    """The data given, then ``n_random`` generated rows; at least one of them."""
    parts: list[dict[str, np.ndarray]] = []
    if opts.data is not None:
        parts.append(read_data(opts.data, model))
    if opts.n_random > 0:
        try:
            parts.append(random_inputs(model, opts.n_random, seed=opts.seed))
        except InputError:
            if not parts:
                raise
    if not parts:
        raise InputError("no inputs to prove parity on: give --data or --n-random above 0")
    if len(parts) == 1:
        return parts[0]
    if _batch_axis_dynamic(model):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return parts[0]


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def fixed_batch_warning(rows: int) -> str:
    """What a graph whose batch axis has a fixed size costs the proof, and the remedy."""
    return (
        f"the graph's batch axis has a fixed size, so parity is proven on {_rows(rows)} only; "
        "export with a dynamic batch axis to prove it on more: torch.onnx.export(model, (x,), "
        "dynamo=True, optimize=False, dynamic_shapes=({0: torch.export.Dim('batch')},)), or "
        "dynamic_axes={'input': {0: 'batch'}} with the TorchScript exporter"
    )


def _batch_axis_dynamic(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    return all(
        bool(i.type.tensor_type.shape.dim) and not i.type.tensor_type.shape.dim[0].dim_value
        for i in model.graph.input
        if i.name not in inits
    )


def prove(
    reference: onnx.ModelProto, folded: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float
) -> ParityReport:
    """Every output of both graphs compared."""
    return compare_outputs(run_onnx(reference, feeds), run_onnx(folded, feeds), rtol=rtol)


def _layout(dims: list[int | None], given: str | None) -> str | None:
    """NCHW, NHWC or NC for an input of these dims (batch first), or None."""
    if given is not None:
        want = {"NC": 2, "NCHW": 4, "NHWC": 4}.get(given)
        if want is None:
            raise NormalizeError(f"--layout {given!r}: use NCHW, NHWC or NC")
        if len(dims) != want:
            raise NormalizeError(f"--layout {given} needs an input of rank {want}, not {dims}")
        return given
    if len(dims) == 2:
        return "NC"
    if len(dims) == 4:
        if dims[1] in (1, 3):
            return "NCHW"
        if dims[3] in (1, 3):
            return "NHWC"
    return None


def normalize_input(model: onnx.ModelProto, opts: ImportOptions, log: Log) -> Normalized:
    """``model`` with ``opts.normalize`` in front, and the preprocessing that says so."""
    assert opts.normalize is not None
    mean, std = (list(v) for v in opts.normalize)
    lo, hi = opts.input_range
    if hi <= 0:
        raise NormalizeError(f"--input-range {lo:g},{hi:g}: HIGH must be positive")
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise NormalizeError(f"--normalize needs a model of one input; it has {len(inputs)}")
    dims: list[int | None] = [
        d.dim_value if d.HasField("dim_value") else None
        for d in inputs[0].type.tensor_type.shape.dim
    ]
    layout = _layout(dims, opts.layout)
    channels = max(len(mean), len(std))
    if layout is None and channels > 1:
        raise NormalizeError(
            f"cannot tell the channel axis of input {inputs[0].name!r} {dims}; "
            "give --layout NCHW, NHWC or NC"
        )
    axis = 3 if layout == "NHWC" else 1
    reference = prepend_normalization(model, pixel_scale=hi, mean=mean, std=std, channel_axis=axis)
    log(
        f"the input normalisation (x / {hi:g} - mean) / std goes in front: the version takes "
        f"raw values in {lo:g}..{hi:g}"
    )
    prep: dict[str, Any] | None = None
    why = ""
    shape = dims[1:]
    if layout is not None and all(isinstance(d, int) and d > 0 for d in shape):
        c = {"NCHW": shape[0], "NHWC": shape[-1]}.get(layout, 1)
        candidate = {
            "layout": layout,
            "input_shape": shape,
            "pixel_scale": hi,
            "mean": mean,
            "std": std,
            "color": "rgb" if c == 3 else "grayscale",
            "normalized": False,
            "input_range": [lo, hi],
            "input_meaning": f"raw values in {lo:g}..{hi:g} (normalised in the graph)",
        }
        try:
            Preprocessing(**candidate)  # type: ignore[arg-type]
            prep = candidate
        except ContractError as e:
            why = str(e)
    else:
        why = f"input {inputs[0].name!r} {dims} is not an image of static size"
    if prep is None:
        log(f"no image preprocessing in config.json ({why}); /classify is off for it")
    return Normalized(reference, axis, hi, mean, std, prep, why)


def normalized_feeds(
    original: onnx.ModelProto, norm: Normalized, opts: ImportOptions
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(raw feeds for the prepended graph, normalised feeds for the original):
    ``--data`` rows as raw values, then generated rows drawn N(0, 1) in the
    normalised space and mapped back to raw."""
    (name,) = [i.name for i in norm.model.graph.input if i.name not in _inits(norm.model)]
    parts: list[np.ndarray] = []
    if opts.data is not None:
        parts.append(read_data(opts.data, norm.model)[name])
    if opts.n_random > 0:
        x = random_inputs(original, opts.n_random, seed=opts.seed)[name]
        parts.append(denormalize_array(x, norm.pixel_scale, norm.mean, norm.std, norm.axis))
    if not parts:
        raise InputError("no inputs to prove parity on: give --data or --n-random above 0")
    raw = np.concatenate(parts) if _batch_axis_dynamic(original) else parts[0]
    raw = raw.astype(np.float32)
    normalized = normalize_array(raw, norm.pixel_scale, norm.mean, norm.std, norm.axis)
    return {name: raw}, {name: normalized}


def _inits(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def import_onnx(opts: ImportOptions, *, log: Log = _noop) -> ImportResult:
    """``opts.model`` (an ONNX file) folded, proven and written as a version."""
    check_target(opts.repo, opts.name, opts.version)
    reference = load_model(opts.model)
    source = {"file": opts.model.name, "bytes": opts.model.stat().st_size}
    if opts.normalize is None:
        return import_model(reference, opts, source=source, log=log)
    norm = normalize_input(reference, opts, log)
    feeds, original_feeds = normalized_feeds(reference, norm, opts)
    expected = run_onnx(reference, original_feeds)
    source |= {"normalize": {"mean": norm.mean, "std": norm.std, "pixel_scale": norm.pixel_scale}}
    return import_model(
        norm.model,
        opts,
        source=source,
        feeds=feeds,
        expected=expected,
        expected_from="the original graph on normalised data",
        preprocessing=norm.preprocessing,
        network_bns=folding.count_bn(reference),
        log=log,
    )


def import_model(
    reference: onnx.ModelProto,
    opts: ImportOptions,
    *,
    source: dict[str, Any],
    feeds: dict[str, np.ndarray] | None = None,
    expected: dict[str, np.ndarray] | None = None,
    expected_from: str = "PyTorch eval",
    preprocessing: dict[str, Any] | None = None,
    network_bns: int | None = None,
    expected_bns: int | None = None,
    data_given: str | None = None,
    log: Log = _noop,
) -> ImportResult:
    """Fold ``reference``, prove it, write the version. ``feeds`` replaces
    the inputs of ``opts``; ``expected`` (the outputs of the network the
    graph was exported from, on ``feeds``, or of the original graph when
    ``reference`` has an input normalisation in front) adds that comparison
    too; ``preprocessing`` goes into config.json and the manifest.
    ``expected_bns`` (the module's BN layers) is how many BNs the graph
    should hold, its convolutions when not given: fewer is warned about.
    ``data_given`` says what the caller's rows in ``feeds`` were, for the
    manifest (``opts.data`` when not given)."""
    # the network's BNs (an input normalisation in front is a map, not one of them)
    bn_before = folding.count_bn(reference) if network_bns is None else network_bns
    if bn_before == 0:
        log(NO_BN_HINT)
    else:
        log(f"folding {bn_before} BatchNormalization nodes")
        warning = fused_warning(bn_before, expected_bns or count_convolutions(reference))
        if warning:
            log(f"warning: {warning}")
    folded, report = folding.fold(reference)
    summary = report.summary()
    if bn_before:
        log(summary.describe())
    feeds = parity_inputs(reference, opts) if feeds is None else feeds
    rows = len(next(iter(feeds.values())))
    if not _batch_axis_dynamic(reference):
        log(f"warning: {fixed_batch_warning(rows)}")
    comparisons: dict[str, Any] = {}
    if expected is not None:
        log(f"verifying {expected_from} vs reference.onnx on {_rows(rows)}")
        checks = compare_outputs(expected, run_onnx(reference, feeds), rtol=opts.rtol)
        key = "original_vs_reference" if opts.normalize is not None else "pytorch_vs_reference"
        comparisons[key] = {n: p.to_dict() for n, p in checks.outputs.items()}
        if not checks.passed:
            what = "the module" if key == "pytorch_vs_reference" else "the original graph"
            output, worst = checks.worst()
            raise ParityFailure(
                f"reference.onnx does not compute what {what} computes (output {output}: "
                f"max rel error {worst.max_rel_error:.3g}); nothing was written"
            )
    log(f"verifying reference.onnx vs model.onnx on {_rows(rows)}")
    parity = prove(reference, folded, feeds, opts.rtol)
    comparisons["reference_vs_folded"] = {n: p.to_dict() for n, p in parity.outputs.items()}
    if not parity.passed:
        raise ParityFailure(
            f"parity failed (max rel error {parity.max_rel_error:.3g} > {opts.rtol:g} or "
            f"top-1 agreement {parity.top1_agreement}); nothing was written"
        )
    config = serving_config(
        opts.name,
        folded,
        max_batch_size=opts.max_batch_size,
        labels=opts.labels,
        preprocessing=preprocessing,
    )
    input_map = fold_outcome(report.to_dict()) if opts.normalize is not None else None
    if opts.normalize is not None:
        log(describe_input_map(input_map))
    opset = max(
        (o.version for o in reference.opset_import if o.domain in ("", "ai.onnx")), default=0
    )
    producer = f"{reference.producer_name} {reference.producer_version}".strip()
    manifest = new_manifest(
        opts.name,
        folded,
        source=source | {"producer": producer, "opset": opset},
        labels=opts.labels,
        preprocessing=preprocessing,
        fold=folding_record(report, bn_before=bn_before, input_normalization=input_map),
        parity=parity,
        parity_extra={
            "comparisons": comparisons,
            "data": data_given or (str(opts.data) if opts.data else "generated"),
            "rows": rows,
        },
    )
    if opts.quantize is not None:  # issue 22: the version is the quantized graph
        from bnfold.converter.quantize import apply_to_import

        folded, manifest = apply_to_import(opts, folded, manifest, feeds, log=log)
    written = write(
        opts.repo,
        opts.name,
        model_onnx=folded.SerializeToString(),
        reference_onnx=reference.SerializeToString(),
        manifest=manifest,
        config=config,
        version=opts.version,
    )
    log(f"wrote {written.path}")
    return ImportResult(written, bn_before, report.bn_after, parity, summary)
