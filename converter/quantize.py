"""Fold, then quantize: int8 and fp16 versions behind the same proof (issue 22).

A folded float32 graph becomes a graph of lower precision, and that graph is
compared with the float32 one on held-out data before it may become a
version (docs/quantization.md):

- **int8**: ONNX Runtime's static quantization in QDQ format, weights int8
  symmetric per output channel, activations int8 per tensor, calibrated on
  the model's own data (the converter's training split, or ``--data``) with
  MinMax, Percentile or Entropy. Before it, ONNX Runtime's shape inference
  runs on the folded graph, and nothing else: ``quant_pre_process``'s
  optimizer pass (which would fuse Conv+BN itself, where it can) is off, since
  the BNs are already folded. Weights keep 7 bits of their 8
  (``reduce_range``) by default: on x86 CPUs without VNNI, ONNX Runtime's
  fused int8 kernels add pairs of products in 16 bits, which saturate with
  full-range weights (measured on this project's AVX2 machine: the digits MLP's
  largest output error went from 1% as written to 18% as served).
- **fp16**: float16 weights and compute, float32 inputs and outputs (ONNX
  Runtime's ``float16`` converter, ``keep_io_types``); the ops of
  :data:`FP16_FLOAT32_OPS` stay in float32. A folded weight or bias beyond
  float16's range (|x| > 65504, e.g. after a BN whose running variance is
  near zero) is refused, naming the layer and the BNs folded into it.

The gate (:func:`gate`) runs the float32 graph and the new one on held-out
rows, on ONNX Runtime CPU twice: as written (optimizations off) and as
served (all optimizations on, the fused int8 kernels). Top-1 agreement, the
accuracy drop on labelled rows and the largest output error relative to the
output's scale must each meet :class:`Thresholds`; with a PyTorch network
(``bnfold convert``) its outputs are compared too. A graph that fails is
not written (exit 3) and the report names the first diverging layer
(:func:`bnfold.converter.verify.compare_nodes` on the tensors both graphs
share).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import typer

import bnfold
from bnfold.contract import (
    CONFIG_FILE,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_RTOL,
    MANIFEST_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    ContractError,
    Manifest,
    ModelConfig,
    compare,
    complete_config,
    parse_json,
    scan_versions,
)
from bnfold.converter.errors import InputError, ParityFailure
from bnfold.converter.verify import check_feeds, compare_nodes, load_model, run_onnx

if TYPE_CHECKING:
    from bnfold.converter.data import Splits
    from bnfold.converter.importer import ImportOptions
    from bnfold.converter.pipeline import ConvertOptions
    from bnfold.converter.train import TrainResult

Precision = Literal["int8", "fp16"]
PRECISIONS: tuple[str, ...] = ("int8", "fp16")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy")
# Fewer rows than this calibrate activation ranges on too little of the data
# (one batch of a CNN's training loop); --data with fewer is refused.
MIN_CALIBRATION_ROWS = 64
# More rows cost calibration time (Entropy/Percentile keep histograms) and
# moved no range measurably on the converter's networks.
MAX_CALIBRATION_ROWS = 512
CALIBRATION_BATCH = 32
FP16_MAX = 65504.0
# Kept in float32 under fp16: ONNX Runtime's converter's default list (ML
# operators, TopK, NonMaxSuppression, Range, CumSum, Min/Max, Upsample:
# float16 kernels missing or index arithmetic), plus exponentials and
# reductions, whose intermediate sums leave float16's range first.
FP16_FLOAT32_OPS: tuple[str, ...] = (
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer",
    "FeatureVectorizer", "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor",
    "Normalizer", "OneHotEncoder", "RandomUniformLike", "SVMClassifier", "SVMRegressor",
    "Scaler", "TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble", "ZipMap",
    "NonMaxSuppression", "TopK", "RoiAlign", "Range", "CumSum", "Min", "Max", "Upsample",
    "Exp", "Pow", "Softmax", "LogSoftmax", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "ReduceLogSumExp",
)  # fmt: skip
PER_NODE_ROWS = 16  # rows for the per-layer comparison of a failed gate

Log = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class Thresholds:
    """What the new graph must meet against the float32 one, on held-out rows."""

    min_agreement: float  # share of rows with the same top-1 class
    max_accuracy_drop: float  # accuracy points (0..100) lost on labelled rows
    max_rel_error: float  # max |new - float32| / max |float32|, per output


# int8: agreement and accuracy are what int8 is judged by; 10% of the output's
# scale lets rounding through (1-3% on the converter's networks) and catches
# a saturated kernel or a wrong scale. fp16: ~10 float16 ulps of the scale.
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "int8": Thresholds(min_agreement=0.99, max_accuracy_drop=1.0, max_rel_error=0.1),
    "fp16": Thresholds(min_agreement=0.999, max_accuracy_drop=0.1, max_rel_error=1e-2),
}


@dataclass(frozen=True)
class QuantizeOptions:
    precision: str = "int8"
    method: str = "minmax"  # int8 calibration: minmax, percentile or entropy
    calibration_rows: int = MAX_CALIBRATION_ROWS
    reduce_range: bool = True  # int8: 7-bit weights (see the module docstring)
    min_agreement: float | None = None  # None: DEFAULT_THRESHOLDS[precision]
    max_accuracy_drop: float | None = None
    max_rel_error: float | None = None
    seed: int = 0  # which rows of --data calibrate and which are held out

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision!r}: use {' or '.join(PRECISIONS)}")
        if self.method not in CALIBRATION_METHODS:
            raise InputError(
                f"--calibration {self.method!r}: use one of {', '.join(CALIBRATION_METHODS)}"
            )
        if self.calibration_rows < MIN_CALIBRATION_ROWS:
            raise InputError(f"--calibration-rows must be at least {MIN_CALIBRATION_ROWS}")

    @property
    def thresholds(self) -> Thresholds:
        default = DEFAULT_THRESHOLDS[self.precision]
        given = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(Thresholds)
            if getattr(self, f.name) is not None
        }
        return dataclasses.replace(default, **given)


class Float16Overflow(ParityFailure):
    """A folded weight or bias does not fit float16 (exit 3, nothing written)."""


class GateFailure(ParityFailure):
    """The new graph does not compute what the float32 graph computes (exit 3)."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class HeldOut:
    """Rows to prove the new graph on: graph feeds, labels where known, what they are."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    description: str
    torch_logits: np.ndarray | None = None  # PyTorch's outputs on the same rows


@dataclass(frozen=True)
class Calibration:
    feeds: dict[str, np.ndarray]
    description: str


# --------------------------------------------------------------------------- float16


def _folded_into(fold_report: dict[str, Any] | None) -> dict[str, list[str]]:
    """Layer name -> the BNs the fold report says went into it."""
    out: dict[str, list[str]] = {}
    for bn in (fold_report or {}).get("bns", []):
        for layer in bn.get("folded_into", []):
            out.setdefault(layer, []).append(bn["name"])
    return out


def check_float16_range(model: onnx.ModelProto, fold_report: dict[str, Any] | None = None) -> None:
    """Refuse a graph whose float constants leave float16's range, naming the layer."""
    consumers: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(node.name or f"{node.op_type}_{i}")
    tensors = [*model.graph.initializer]
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute]
    bns = _folded_into(fold_report)
    for tensor in tensors:
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            continue
        values = onnx.numpy_helper.to_array(tensor)
        if not values.size:
            continue
        peak = float(np.max(np.abs(values)))
        if peak <= FP16_MAX:
            continue
        layers = consumers.get(tensor.name) or ["(no consumer)"]
        folded = [b for layer in layers for b in bns.get(layer, [])]
        hint = (
            f"; BN {', '.join(repr(b) for b in folded)} folded into it (a running variance "
            "near zero makes gamma / sqrt(var + eps) huge)"
            if folded
            else ""
        )
        raise Float16Overflow(
            f"fp16 refused: layer '{layers[0]}' has '{tensor.name}' with |x| up to {peak:.4g}, "
            f"beyond float16's largest value {FP16_MAX:g}{hint}; nothing was written"
        )


def to_float16(
    model: onnx.ModelProto, fold_report: dict[str, Any] | None = None
) -> onnx.ModelProto:
    """float16 weights and compute, float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    check_float16_range(model, fold_report)
    return convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(FP16_FLOAT32_OPS), disable_shape_infer=False
    )


# --------------------------------------------------------------------------- int8


def calibration_rows(available: int, opts: QuantizeOptions) -> int:
    """Rows that calibrate: whole batches (the histogram calibrators stack
    batches, so all must have one size), at most ``opts.calibration_rows``."""
    return min(available, opts.calibration_rows) // CALIBRATION_BATCH * CALIBRATION_BATCH


def to_int8(
    model: onnx.ModelProto, calibration: dict[str, np.ndarray], opts: QuantizeOptions
) -> onnx.ModelProto:
    """Static QDQ quantization calibrated on ``calibration`` (:func:`calibration_rows`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rows = calibration_rows(_rows(calibration), opts)
    batches = [
        {k: v[i : i + CALIBRATION_BATCH] for k, v in calibration.items()}
        for i in range(0, rows, CALIBRATION_BATCH)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[opts.method]
    with tempfile.TemporaryDirectory(prefix="bnfold-quantize-") as tmp:
        folded, shaped, out = (Path(tmp) / n for n in ("folded.onnx", "shaped.onnx", "q.onnx"))
        onnx.save(model, str(folded))
        try:  # symbolic shape inference first; it refuses some Constant forms
            quant_pre_process(str(folded), str(shaped), skip_optimization=True)
        except Exception:
            quant_pre_process(
                str(folded), str(shaped), skip_optimization=True, skip_symbolic_shape=True
            )
        # the calibrators print their progress; stdout is the CLI's answer (the version's path)
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(shaped),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=opts.reduce_range,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        return onnx.load(str(out))


# --------------------------------------------------------------------------- the gate


def _rows(feeds: dict[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def served_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs as ``bnfold serve`` computes them on CPU: every optimization on."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _comparable(reference: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a tensor renamed where another kind of node makes it than
    in ``reference`` (the QDQ quantizer drops a ReLU before a QuantizeLinear
    and lets the layer write its name), so only like is compared with like."""
    ref_op = {o: n.op_type for n in reference.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    renamed: dict[str, str] = {}
    for node in m.graph.node:
        for i, name in enumerate(node.output):
            if name in ref_op and ref_op[name] != node.op_type and name not in outputs:
                renamed[name] = node.output[i] = f"{name}__{node.op_type}"
    for node in m.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    return m


def _worst(comparisons: dict[str, dict[str, Any]]) -> dict[str, Any]:
    every = list(comparisons.values())
    top1 = [c["top1_agreement"] for c in every if c["top1_agreement"] is not None]
    return {
        "max_abs_error": max(c["max_abs_error"] for c in every),
        "max_rel_error": max(c["max_rel_error"] for c in every),
        "top1_agreement": min(top1) if top1 else None,
    }


def _accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    first = next(iter(outputs.values()))
    if first.ndim != 2 or len(first) != len(labels):
        return None
    return float(np.mean(np.argmax(first, axis=-1) == labels))


def gate(
    folded: onnx.ModelProto,
    new: onnx.ModelProto,
    heldout: HeldOut,
    thresholds: Thresholds,
) -> dict[str, Any]:
    """The new graph against the float32 one (and PyTorch's outputs where
    given) on the held-out rows; see the module docstring."""
    t = thresholds
    expected = run_onnx(folded, heldout.feeds)
    runs = {
        "as_written": run_onnx(new, heldout.feeds),
        "as_served": served_outputs(new, heldout.feeds),
    }
    comparisons: dict[str, dict[str, Any]] = {}
    for how, actual in runs.items():
        for name, want in expected.items():
            parity = compare(want, actual[name], rtol=t.max_rel_error, min_top1=t.min_agreement)
            comparisons[f"float32_vs_{how}:{name}"] = parity.to_dict()
    if heldout.torch_logits is not None:
        name = next(iter(expected))
        for how, actual in runs.items():
            parity = compare(
                heldout.torch_logits, actual[name], rtol=t.max_rel_error, min_top1=t.min_agreement
            )
            comparisons[f"torch_vs_{how}:{name}"] = parity.to_dict()
    worst = _worst(comparisons)
    acc32 = _accuracy(expected, heldout.labels)
    accs = [a for a in (_accuracy(r, heldout.labels) for r in runs.values()) if a is not None]
    acc = min(accs) if accs else None
    drop = None if acc32 is None or acc is None else round((acc32 - acc) * 100, 6)
    failures = [
        f"{k}: max rel error {c['max_rel_error']:.3g} > {t.max_rel_error:g}"
        for k, c in comparisons.items()
        if not c["max_rel_error"] <= t.max_rel_error
    ] + [
        f"{k}: top-1 agreement {c['top1_agreement']:.4f} < {t.min_agreement:g}"
        for k, c in comparisons.items()
        if c["top1_agreement"] is not None and c["top1_agreement"] < t.min_agreement
    ]
    if drop is not None and drop > t.max_accuracy_drop:
        failures.append(
            f"accuracy {acc:.4f} vs float32 {acc32:.4f}: {drop:.2f} points lost "
            f"> {t.max_accuracy_drop:g}"
        )
    record: dict[str, Any] = {
        "passed": not failures,
        **worst,
        "accuracy_float32": acc32,
        "accuracy": acc,
        "accuracy_drop_points": drop,
        "n_samples": _rows(heldout.feeds),
        "data": heldout.description,
        "thresholds": dataclasses.asdict(t),
        "failures": failures,
        "comparisons": comparisons,
    }
    if failures:
        head = {k: v[:PER_NODE_ROWS] for k, v in heldout.feeds.items()}
        nodes = compare_nodes(folded, _comparable(folded, new), head, rtol=t.max_rel_error)
        record["first_divergence"] = nodes["first_divergence"]
    return record


# --------------------------------------------------------------------------- one graph


def quantize_graph(
    folded: onnx.ModelProto,
    opts: QuantizeOptions,
    heldout: HeldOut,
    calibration: Calibration | None,
    *,
    fold_report: dict[str, Any] | None = None,
    log: Log = _noop,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The new graph and its record for the manifest; GateFailure when it fails."""
    if opts.precision == "int8":
        if calibration is None:
            raise InputError("int8 needs calibration data: give --data npz:PATH")
        n_cal = _rows(calibration.feeds)
        if n_cal < MIN_CALIBRATION_ROWS:
            raise InputError(
                f"int8 calibration needs at least {MIN_CALIBRATION_ROWS} rows; "
                f"{calibration.description} has {n_cal}"
            )
        used = calibration_rows(n_cal, opts)
        log(f"quantizing to int8 (QDQ, {opts.method}, {used} rows of {calibration.description})")
        new = to_int8(folded, calibration.feeds, opts)
        details: dict[str, Any] = {
            "format": "QDQ",
            "weights": "int8, symmetric, per output channel"
            + (", 7-bit range (reduce_range)" if opts.reduce_range else ""),
            "activations": "int8, asymmetric, per tensor",
            "calibration": {
                "data": calibration.description,
                "method": opts.method,
                "rows": used,
                "batch": CALIBRATION_BATCH,
            },
        }
    else:
        log("converting to float16 (float32 inputs and outputs)")
        new = to_float16(folded, fold_report)
        kept = sorted({n.op_type for n in folded.graph.node} & set(FP16_FLOAT32_OPS))
        details = {"io": "float32", "ops_kept_float32": kept}
    thresholds = opts.thresholds
    log(f"gating {opts.precision} against float32 on {_rows(heldout.feeds)} held-out rows")
    result = gate(folded, new, heldout, thresholds)
    record: dict[str, Any] = {
        "precision": opts.precision,
        **details,
        "ops": {"float32": len(folded.graph.node), opts.precision: len(new.graph.node)},
        "bytes": {"float32": folded.ByteSize(), opts.precision: new.ByteSize()},
        "gate": result,
        "onnxruntime": ort.__version__,
    }
    if not result["passed"]:
        first = result.get("first_divergence")
        where = (
            f"; first diverging layer '{first['node']}' (tensor '{first['tensor']}', "
            f"max rel error {first.get('max_rel_error', float('nan')):.3g})"
            if first
            else "; no layer diverges as written: ONNX Runtime's fused kernels do"
            if any(k.startswith("float32_vs_as_written") and c["passed"]
                   for k, c in result["comparisons"].items())
            else ""
        )  # fmt: skip
        raise GateFailure(
            f"{opts.precision} gate failed ({'; '.join(result['failures'][:3])}){where}; "
            "nothing was written",
            record,
        )
    acc = result["accuracy"]
    log(
        f"{opts.precision} gate passed: top-1 agreement {result['top1_agreement']:.4f}, max rel "
        f"error {result['max_rel_error']:.3g}"
        + (
            f", accuracy {acc:.4f} (float32 {result['accuracy_float32']:.4f})"
            if acc is not None
            else ""
        )
    )
    return new, record


def as_parity(record: dict[str, Any]) -> dict[str, Any]:
    """The gate in the terms of a manifest's ``parity`` (what /parity shows)."""
    g = record["gate"]
    return {
        "passed": g["passed"],
        "max_abs_error": g["max_abs_error"],
        "max_rel_error": g["max_rel_error"],
        "top1_agreement": g["top1_agreement"],
        "n_samples": g["n_samples"],
        "rtol": g["thresholds"]["max_rel_error"],
        "min_top1": g["thresholds"]["min_agreement"],
        "against": "the float32 folded graph",
        "comparisons": g["comparisons"],
    }


def quantized_manifest(
    manifest: dict[str, Any], record: dict[str, Any], source: dict[str, Any]
) -> dict[str, Any]:
    """``manifest`` (of the float32 version) for the quantized graph: its
    precision and record, the gate as its parity, the float32 parity kept
    under ``quantization.source``."""
    out = {k: v for k, v in manifest.items() if k not in ("name", "version", "files")}
    out["created"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out["precision"] = record["precision"]
    out["quantization"] = {**record, "source": {**source, "parity": manifest.get("parity")}}
    out["parity"] = as_parity(record)
    out["versions"] = {**manifest.get("versions", {}), "bnfold": bnfold.__version__,
                       "onnxruntime": ort.__version__}  # fmt: skip
    return out


# --------------------------------------------------------------------------- data


def split_npz(
    spec: str, model: onnx.ModelProto, seed: int, precision: str
) -> tuple[HeldOut, Calibration | None]:
    """``--data npz:PATH`` rows, shuffled with ``seed``: for int8, half calibrate
    (at least :data:`MIN_CALIBRATION_ROWS`) and the other half are held out;
    for fp16 every row is held out. An array ``y`` gives labels."""
    from bnfold.converter.verify import read_data

    feeds = read_data(spec, model)
    path = Path(spec.partition(":")[2] if spec.startswith("npz:") else spec)
    with np.load(path, allow_pickle=False) as data:
        labels = np.asarray(data["y"]).astype(np.int64) if "y" in data.files else None
    n = _rows(feeds)
    if labels is not None and len(labels) != n:
        raise InputError(f"--data: {path}: y has {len(labels)} rows, the inputs {n}")
    order = np.random.default_rng(seed).permutation(n)
    if precision == "fp16":
        return HeldOut(feeds, labels, f"{path.name} ({n} rows)"), None
    if n < 2 * MIN_CALIBRATION_ROWS:
        raise InputError(
            f"--data: {path} has {n} rows; int8 needs at least {2 * MIN_CALIBRATION_ROWS} "
            f"({MIN_CALIBRATION_ROWS} to calibrate, as many held out)"
        )
    cal, held = np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    heldout = HeldOut(
        {k: v[held] for k, v in feeds.items()},
        labels[held] if labels is not None else None,
        f"{path.name}, {len(held)} held-out rows",
    )
    return heldout, Calibration(
        {k: v[cal] for k, v in feeds.items()}, f"{path.name}, {len(cal)} rows"
    )


def converter_data(manifest: dict[str, Any], model: onnx.ModelProto) -> tuple[HeldOut, Calibration]:
    """The training split (calibration) and test split (held out) of the data
    a ``bnfold convert`` version was trained on, made again from its manifest,
    as the graph takes them (raw values, or standardised)."""
    from bnfold.converter.data import load, prepare

    data, pre = manifest.get("data") or {}, manifest.get("preprocessing") or {}
    if not data.get("spec") or not manifest.get("arch"):
        raise InputError(
            "this version was not trained by bnfold convert, so there is no data set to "
            "calibrate on: give --data npz:PATH"
        )
    shape = tuple(manifest["arch"]["input_shape"])
    seed = int(data.get("seed", 0))
    dataset = load(data["spec"], input_shape=shape, seed=seed)
    splits = prepare(
        dataset, shape, seed=seed, limit=data.get("limit"), resize=bool(data.get("resized")) or None
    )
    if len(splits.y_test) != data.get("n_test", len(splits.y_test)):
        raise InputError(f"{data['spec']}: the test split no longer has {data['n_test']} rows")
    return converter_splits(splits, model, normalized=bool(pre.get("normalized", True)))


def converter_splits(
    splits: Splits, model: onnx.ModelProto, *, normalized: bool
) -> tuple[HeldOut, Calibration]:
    from bnfold.converter.input_map import denormalize_array

    (name,) = [
        i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    spec = splits.info.get("name", "data")
    if normalized:
        train, test = splits.x_train, splits.x_test
    else:
        p = splits.preprocessing
        train = denormalize_array(splits.x_train, p["pixel_scale"], p["mean"], p["std"], axis=1)
        assert splits.raw_test is not None
        test = splits.raw_test
    pick = np.random.default_rng(0).permutation(len(train))[:MAX_CALIBRATION_ROWS]
    calibration = Calibration(
        check_feeds(model, {name: train[np.sort(pick)]}),
        f"{spec} training split ({len(pick)} of {len(train)} rows)",
    )
    heldout = HeldOut(
        check_feeds(model, {name: test}), splits.y_test, f"{spec} test split ({len(test)} rows)"
    )
    return heldout, calibration


# --------------------------------------------------------------------------- the hooks


def apply_to_convert(
    opts: ConvertOptions,
    folded: onnx.ModelProto,
    manifest: Manifest,
    splits: Splits,
    result: TrainResult,
    *,
    log: Log = _noop,
) -> tuple[onnx.ModelProto, Manifest]:
    """``bnfold convert --precision``: the folded graph quantized and gated
    (against PyTorch too), and the manifest that says so."""
    from bnfold.converter.export import torch_logits

    q = opts.quantize
    assert q is not None
    heldout, calibration = converter_splits(splits, folded, normalized=opts.normalized_input)
    heldout = dataclasses.replace(heldout, torch_logits=torch_logits(result.model, splits.x_test))
    report = (manifest.folding or {}).get("report")
    new, record = quantize_graph(folded, q, heldout, calibration, fold_report=report, log=log)
    source = {"graph": "float32 folded graph of this conversion", "sha256": _sha(folded)}
    return new, _quantized(manifest, record, source)


def apply_to_import(
    opts: ImportOptions,
    folded: onnx.ModelProto,
    manifest: Manifest,
    feeds: dict[str, np.ndarray],
    *,
    log: Log = _noop,
) -> tuple[onnx.ModelProto, Manifest]:
    """``bnfold import --precision``: calibrated and held out on ``--data``
    (fp16 without it: on the proof's generated rows)."""
    q = opts.quantize
    assert q is not None
    if opts.data is not None:
        heldout, calibration = split_npz(opts.data, folded, q.seed, q.precision)
    elif q.precision == "fp16":
        heldout, calibration = HeldOut(feeds, None, f"{_rows(feeds)} generated rows"), None
    else:
        raise InputError(
            "--precision int8 calibrates on the model's own data: give --data npz:PATH"
        )
    report = (manifest.folding or {}).get("report")
    new, record = quantize_graph(folded, q, heldout, calibration, fold_report=report, log=log)
    source = {"graph": "float32 folded graph of this import", "sha256": _sha(folded)}
    return new, _quantized(manifest, record, source)


def _quantized(manifest: Manifest, record: dict[str, Any], source: dict[str, Any]) -> Manifest:
    """:func:`quantized_manifest` of a typed manifest; name, version and files
    stay the writer's to fill in."""
    out = quantized_manifest(manifest.to_dict(), record, source)
    keep = {k: v for k, v in manifest.to_dict().items() if k in ("name", "version", "files")}
    return Manifest.from_dict(out | keep)


def _sha(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


@dataclass(frozen=True)
class QuantizeResult:
    version_dir: Path
    record: dict[str, Any]


def quantize_version(
    repo: Path,
    name: str,
    opts: QuantizeOptions,
    *,
    source_version: int | None = None,
    version: int | None = None,
    data: str | None = None,
    log: Log = _noop,
) -> QuantizeResult:
    """``bnfold quantize``: a new version of ``name`` from a float32 one (the
    highest by default). A version with a manifest is folded already; a bare
    ``model.onnx`` (a Triton repository) is folded first and proven, as
    ``bnfold import`` does. model.onnx of the new version is the quantized
    graph; reference.onnx is the source's (the network with its BNs)."""
    from bnfold import folding
    from bnfold.converter.importer import prove
    from bnfold.converter.repository import RepositoryError, write_version
    from bnfold.converter.verify import random_inputs
    from bnfold.converter.version import folding_record

    model_dir = Path(repo) / name
    versions = scan_versions(model_dir).valid
    if not versions:
        raise RepositoryError(f"{model_dir} has no version to quantize")
    src = versions[-1] if source_version is None else source_version
    if src not in versions:
        raise RepositoryError(f"{model_dir / str(src)} is not a version")
    if version is not None and (model_dir / str(version)).exists():
        raise RepositoryError(f"{model_dir / str(version)} already exists; versions are immutable")
    src_dir = model_dir / str(src)
    manifest: dict[str, Any] = {}
    if (src_dir / MANIFEST_FILE).exists():
        try:
            raw = parse_json((src_dir / MANIFEST_FILE).read_bytes(), MANIFEST_FILE)
            checked = Manifest.from_dict(raw)
        except ContractError as e:
            raise RepositoryError(f"{src_dir}: {e}") from None
        if checked.precision not in (None, "fp32"):
            raise InputError(f"{src_dir} is {checked.precision}; quantize a float32 version")
        for fname in (MODEL_FILE, REFERENCE_FILE):
            if fname in checked.files and _file_sha(src_dir / fname) != checked.sha256(fname):
                raise RepositoryError(f"{src_dir / fname} does not match its manifest's sha256")
        manifest = raw
        folded = load_model(src_dir / MODEL_FILE)
        reference_bytes = (src_dir / REFERENCE_FILE).read_bytes()
    else:  # a bare model.onnx: fold it and prove the fold first
        reference = load_model(src_dir / MODEL_FILE)
        folded, fold_report = folding.fold(reference)
        parity = prove(reference, folded, random_inputs(reference, 64), DEFAULT_RTOL)
        if not parity.passed:
            raise ParityFailure(f"the fold of {src_dir / MODEL_FILE} failed its parity proof")
        log(f"folded {src_dir / MODEL_FILE}: {fold_report.summary().describe()}")
        manifest = {
            "format": 1,
            "folding": folding_record(fold_report, bn_before=fold_report.bn_before),
            "parity": parity.summary(),
        }
        reference_bytes = reference.SerializeToString()
    if data is not None:
        heldout, calibration = split_npz(data, folded, opts.seed, opts.precision)
    elif opts.precision == "fp16" and not (manifest.get("data") or {}).get("spec"):
        rows = random_inputs(folded, 64, seed=opts.seed)  # as bnfold import proves without --data
        heldout, calibration = HeldOut(rows, None, "64 generated rows"), None
    else:
        heldout, cal = converter_data(manifest, folded)
        calibration = cal if opts.precision == "int8" else None
    report = (manifest.get("folding") or {}).get("report")
    new, record = quantize_graph(folded, opts, heldout, calibration, fold_report=report, log=log)
    source = {"version": src, "sha256": _sha(folded)}
    version_dir = write_version(
        repo,
        name,
        model_onnx=new.SerializeToString(),
        reference_onnx=reference_bytes,
        manifest=quantized_manifest(manifest, record, source),
        config=None if (model_dir / CONFIG_FILE).exists() else _completed_config(name, new),
        version=version,
    )
    log(f"wrote {version_dir}")
    return QuantizeResult(version_dir, record)


def _completed_config(name: str, model: onnx.ModelProto) -> ModelConfig:
    """config.json for a bare model folder, completed from the graph as the
    service (and Triton) would complete it."""
    from bnfold.converter.verify import session

    sess = session(model)
    inputs = [(a.name, a.type, list(a.shape)) for a in sess.get_inputs()]
    outputs = [(a.name, a.type, list(a.shape)) for a in sess.get_outputs()]
    return complete_config(
        None, name, inputs, outputs, default_max_batch_size=DEFAULT_MAX_BATCH_SIZE
    )


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summary(record: dict[str, Any]) -> str:
    g = record["gate"]
    parts = [
        f"top-1 agreement {g['top1_agreement']:.4f}" if g["top1_agreement"] is not None else "",
        f"max rel error {g['max_rel_error']:.3g}",
        f"accuracy {g['accuracy']:.4f} (float32 {g['accuracy_float32']:.4f})"
        if g["accuracy"] is not None
        else "",
        f"{record['bytes']['float32']} -> {record['bytes'][record['precision']]} bytes",
    ]
    return ", ".join(p for p in parts if p)


# --------------------------------------------------------------------------- the command

PrecisionName = Literal["int8", "fp16"]
MethodName = Literal["minmax", "percentile", "entropy"]


def quantize_command(
    name: Annotated[str, typer.Argument(help="Model in the repository.")],
    repo: Annotated[Path, typer.Option(help="Model repository.")] = Path("models"),
    precision: Annotated[
        PrecisionName, typer.Option(metavar="int8|fp16", help="Precision of the new version.")
    ] = "int8",
    from_version: Annotated[
        int | None,
        typer.Option(min=1, help="The float32 version to start from.", show_default="highest"),
    ] = None,
    version: Annotated[
        int | None, typer.Option(min=1, help="Version to write.", show_default="highest + 1")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="npz:PATH (arrays per input name or x, labels in y): half its rows "
            f"calibrate int8 (at least {MIN_CALIBRATION_ROWS}), the other half are held out "
            "for the gate; fp16 holds out every row.",
            show_default="the version's own data: training split to calibrate, test split "
            "held out (versions written by bnfold convert)",
        ),
    ] = None,
    calibration: Annotated[
        MethodName,
        typer.Option(metavar="minmax|percentile|entropy", help="int8 calibration method."),
    ] = "minmax",
    calibration_rows: Annotated[
        int,
        typer.Option(min=MIN_CALIBRATION_ROWS, help="int8: at most this many calibration rows."),
    ] = MAX_CALIBRATION_ROWS,
    reduce_range: Annotated[
        bool,
        typer.Option(
            "--reduce-range/--full-range",
            help="int8: 7-bit weights, which ONNX Runtime's int8 kernels on x86 CPUs without "
            "VNNI need to compute without saturating.",
        ),
    ] = True,
    min_agreement: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Least share of held-out rows with the same top-1 class.",
            show_default="int8 0.99, fp16 0.999",
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Most accuracy points lost on labelled held-out rows.",
            show_default="int8 1.0, fp16 0.1",
        ),
    ] = None,
    max_rel_error: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Largest output error, relative to the float32 output's scale.",
            show_default="int8 0.1, fp16 0.01",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Which --data rows calibrate, which are held out.")] = 0,
) -> None:
    """Write an int8 or fp16 version of a folded model, gated against its float32 graph."""
    from rich.markup import escape

    from bnfold.converter.console import console

    opts = QuantizeOptions(
        precision=precision,
        method=calibration,
        calibration_rows=calibration_rows,
        reduce_range=reduce_range,
        min_agreement=min_agreement,
        max_accuracy_drop=max_accuracy_drop,
        max_rel_error=max_rel_error,
        seed=seed,
    )
    result = quantize_version(
        repo,
        name,
        opts,
        source_version=from_version,
        version=version,
        data=data,
        log=lambda line: console.print(f"[dim]·[/] {escape(line)}"),
    )
    console.print(f"[bold green]{escape(name)} v{result.version_dir.name}[/] ({precision}): "
                  f"{escape(summary(result.record))}")  # fmt: skip
    typer.echo(str(result.version_dir))
