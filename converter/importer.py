"""``bnfold import``: any ONNX model becomes a repository version, folded and proven.

The file given (a PyTorch dynamo or TorchScript export, tf2onnx/Keras,
onnxmltools...) is kept as ``reference.onnx``; its BNs are folded into
``model.onnx``; both run on ONNX Runtime CPU on the data given (``--data``)
or on generated inputs, and the version is written only when every output
agrees (:func:`bnfold.contract.compare`). ``config.json`` is completed from
the graph (names, datatypes, shapes, ``max_batch_size`` from a dynamic
first dimension), or, when the model already has one, keeps its edits.
No torch: the serving image can import models too.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime

import bnfold
from bnfold import folding
from bnfold.contract import (
    DEFAULT_RTOL,
    ONNX_DATATYPES,
    Parity,
    check_name,
    check_version,
    compare,
    complete_config,
)
from bnfold.converter.errors import InputError, ParityFailure
from bnfold.converter.repository import RepositoryError, write_version
from bnfold.converter.verify import load_model, random_inputs, read_data, run_onnx, session

DEFAULT_MAX_BATCH = 64
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
    max_batch_size: int = DEFAULT_MAX_BATCH
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportResult:
    version_dir: Path
    bn_before: int
    bn_after: int
    parity: Parity
    manifest: dict[str, Any]


def check_target(opts: ImportOptions) -> None:
    """Refuse a bad name or an existing version before any work."""
    check_name(opts.name)
    if opts.version is not None:
        check_version(opts.version)
        if (opts.repo / opts.name / str(opts.version)).exists():
            raise RepositoryError(
                f"{opts.repo / opts.name / str(opts.version)} already exists; versions are "
                "immutable (leave --version out to write the next one)"
            )


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


def _batch_axis_dynamic(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    return all(
        bool(i.type.tensor_type.shape.dim) and not i.type.tensor_type.shape.dim[0].dim_value
        for i in model.graph.input
        if i.name not in inits
    )


def _signature(model: onnx.ModelProto) -> tuple[list[Any], list[Any]]:
    sess = session(model)
    return (
        [(a.name, a.type, list(a.shape)) for a in sess.get_inputs()],
        [(a.name, a.type, list(a.shape)) for a in sess.get_outputs()],
    )


def _described(tensor: Any) -> dict[str, Any]:
    name, onnx_type, shape = tensor
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    return {"name": name, "datatype": ONNX_DATATYPES.get(onnx_type, onnx_type), "shape": dims}


def prove(
    reference: onnx.ModelProto, folded: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float
) -> tuple[Parity, dict[str, dict[str, Any]]]:
    """Every output of both graphs compared; the worst, and each by name."""
    expected, actual = run_onnx(reference, feeds), run_onnx(folded, feeds)
    per_output = {name: compare(want, actual[name], rtol=rtol) for name, want in expected.items()}
    worst = max(per_output.values(), key=lambda p: (not p.passed, p.max_rel_error))
    return worst, {name: p.to_dict() for name, p in per_output.items()}


def import_onnx(opts: ImportOptions, *, log: Log = _noop) -> ImportResult:
    """``opts.model`` (an ONNX file) folded, proven and written as a version."""
    check_target(opts)
    reference = load_model(opts.model)
    source = {"file": opts.model.name, "bytes": opts.model.stat().st_size}
    return import_model(reference, opts, source=source, log=log)


def import_model(
    reference: onnx.ModelProto,
    opts: ImportOptions,
    *,
    source: dict[str, Any],
    feeds: dict[str, np.ndarray] | None = None,
    expected: dict[str, np.ndarray] | None = None,
    log: Log = _noop,
) -> ImportResult:
    """Fold ``reference``, prove it, write the version. ``feeds`` replaces
    the inputs of ``opts``; ``expected`` (the outputs of the network the
    graph was exported from, on ``feeds``) adds that comparison too."""
    bn_before = folding.count_bn(reference)
    if bn_before == 0:
        log(NO_BN_HINT)
    else:
        log(f"folding {bn_before} BatchNormalization nodes")
    folded, report = folding.fold(reference)
    bn_after = folding.count_bn(folded)
    if bn_before:
        log(f"{bn_before - bn_after} of {bn_before} folded away; {bn_after} left")
    feeds = parity_inputs(reference, opts) if feeds is None else feeds
    rows = len(next(iter(feeds.values())))
    comparisons: dict[str, Any] = {}
    if expected is not None:
        log(f"verifying PyTorch eval vs reference.onnx on {rows} rows")
        exported = run_onnx(reference, feeds)
        checks = {n: compare(want, exported[n], rtol=opts.rtol) for n, want in expected.items()}
        comparisons["pytorch_vs_reference"] = {n: p.to_dict() for n, p in checks.items()}
        failed = [n for n, p in checks.items() if not p.passed]
        if failed:
            raise ParityFailure(
                f"reference.onnx does not compute what the module computes (output {failed[0]}: "
                f"max rel error {checks[failed[0]].max_rel_error:.3g}); nothing was written"
            )
    log(f"verifying reference.onnx vs model.onnx on {rows} rows")
    parity, per_output = prove(reference, folded, feeds, opts.rtol)
    comparisons["reference_vs_folded"] = per_output
    if not parity.passed:
        raise ParityFailure(
            f"parity failed (max rel error {parity.max_rel_error:.3g} > {opts.rtol:g} or "
            f"top-1 agreement {parity.top1_agreement}); nothing was written"
        )
    inputs, outputs = _signature(folded)
    config = complete_config(
        None, opts.name, inputs, outputs, default_max_batch_size=opts.max_batch_size
    )
    config.labels = list(opts.labels)
    opset = max(
        (o.version for o in reference.opset_import if o.domain in ("", "ai.onnx")), default=0
    )
    producer = f"{reference.producer_name} {reference.producer_version}".strip()
    manifest: dict[str, Any] = {
        "format": 1,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source | {"producer": producer, "opset": opset},
        "labels": config.labels,
        "inputs": [_described(t) for t in inputs],
        "outputs": [_described(t) for t in outputs],
        "folding": {
            "folded": bn_after < bn_before,
            "bn_before": bn_before,
            "bn_after": bn_after,
            "report": report.to_dict(),
        },
        "parity": parity.to_dict()
        | {"comparisons": comparisons, "data": str(opts.data) if opts.data else "generated"},
        "versions": {
            "bnfold": bnfold.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }
    version_dir = write_version(
        opts.repo,
        opts.name,
        model_onnx=folded.SerializeToString(),
        reference_onnx=reference.SerializeToString(),
        manifest=manifest,
        config=config,
        version=opts.version,
    )
    log(f"wrote {version_dir}")
    return ImportResult(version_dir, bn_before, bn_after, parity, manifest)
