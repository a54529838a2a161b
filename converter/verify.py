"""Prove a folded graph computes what its reference computes (ONNX Runtime, no torch).

Both graphs run on ONNX Runtime's CPU provider with graph optimizations OFF
(``ORT_DISABLE_ALL``), so what is compared is the graphs as written, not what
ORT's own fusions make of them. Inputs: the held-out data given, plus
``n_random`` standard-normal samples drawn from the model's input signature.

Every output is compared with :func:`bnfold.contract.compare`, and the
verdict over all of them is the contract's :class:`~bnfold.contract.ParityReport`:

- ``max_rel_error`` = max |folded - reference| / max |reference| must be
  <= ``rtol``: 1e-5 by default for float32 (about 80 ulps of the output's
  scale: folding reorders a few multiply-adds per output, nothing more), use
  ~1e-2 for float16 models;
- ``top1_agreement`` (rank >= 2 outputs) must be >= ``min_top1`` (1.0 by
  default: every row predicts the same class).

With ``per_node=True`` every intermediate tensor whose name exists in both
graphs is compared too (folding renames a tensor whose contents change, so a
shared name means the same tensor); the first one, in the reference's
order, whose relative error exceeds ``rtol`` names the first diverging layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx.external_data_helper import (
    ExternalDataInfo,
    load_external_data_for_model,
    uses_external_data,
)
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from bnfold.contract import (
    DEFAULT_MIN_TOP1,
    DEFAULT_RTOL,
    ParityReport,
    compare,
    compare_outputs,
)
from bnfold.converter.errors import InputError

ModelLike = onnx.ModelProto | str | Path
PER_NODE_SAMPLES = 16  # enough to expose a wrong channel, small enough for every tensor
# What ONNX Runtime raises when it refuses a model or its inputs (Fail,
# InvalidArgument, InvalidGraph, NotImplemented, ...: no common base class).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    v for v in vars(_ort_state).values() if isinstance(v, type) and issubclass(v, Exception)
)


class ModelFileError(InputError):
    """A model file is missing, is not an ONNX model, or lacks its external data."""


class ModelRunError(InputError):
    """ONNX Runtime refuses a model, or the inputs given do not fit the models."""


def load_model(model: ModelLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        loaded = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise ModelFileError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if not loaded.graph.node and not loaded.graph.output:
        raise ModelFileError(f"{path}: not an ONNX model (empty graph)")
    _load_external_data(loaded, path)
    return loaded


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers, constants, subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the tensors kept beside ``path``, naming any file that is not there."""
    external = [t for t in _tensors(model.graph) if uses_external_data(t)]
    if not external:
        return
    base = path.parent
    locations = sorted({ExternalDataInfo(t).location for t in external})
    missing = [loc for loc in locations if not (base / loc).is_file()]
    if missing:
        users = [t.name for t in external if ExternalDataInfo(t).location == missing[0]]
        raise ModelFileError(
            f"{path}: its external data file {missing[0]!r} is missing (looked for "
            f"{base / missing[0]}; it holds {len(users)} tensor(s), e.g. '{users[0]}')"
        )
    try:
        load_external_data_for_model(model, str(base))
    except Exception as exc:  # a location outside the folder, a file too short, ...
        raise ModelFileError(
            f"{path}: cannot read its external data ({type(exc).__name__}: {exc})"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.removeprefix("[ONNXRuntimeError] : ").strip()


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session with every graph optimization off."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_onnx(model: ModelLike, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of ``model`` on ``feeds``, by output name."""
    sess = session(load_model(model))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def random_inputs(model: ModelLike, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` samples per input from its signature: the leading dynamic axis becomes ``n``."""
    proto = load_model(model)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in _inputs(proto):
        tt = inp.type.tensor_type
        shape = []
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif axis == 0:
                shape.append(n)
            else:
                raise InputError(
                    f"input '{inp.name}': axis {axis} has no static size, so random inputs "
                    "cannot be drawn for it; give held-out inputs (--data) and --n-random 0"
                )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype.kind == "f":
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[inp.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def _compare_outputs(
    ref: dict[str, np.ndarray],
    out: dict[str, np.ndarray],
    rtol: float,
    min_top1: float,
    rows: int,
) -> ParityReport:
    missing = set(ref) - set(out)
    if missing:
        raise ModelRunError(f"the folded model lacks the reference's outputs {sorted(missing)}")
    for name in ref:
        if ref[name].shape != out[name].shape:
            raise ModelRunError(
                f"output '{name}': the reference gives shape {ref[name].shape}, "
                f"the folded model {out[name].shape}"
            )
    return compare_outputs(ref, out, rtol=rtol, min_top1=min_top1, n_samples=rows)


def verify_onnx(
    reference: ModelLike,
    folded: ModelLike,
    inputs: dict[str, np.ndarray] | None = None,
    n_random: int = 16,
    seed: int = 0,
    rtol: float = DEFAULT_RTOL,
    min_top1: float = DEFAULT_MIN_TOP1,
    per_node: bool = False,
) -> dict[str, Any]:
    """Compare ``folded`` against ``reference``; see the module docstring for thresholds.

    Returns a JSON-able dict: ``passed``, the worst ``max_abs_error``,
    ``max_rel_error`` and ``top1_agreement`` over all outputs and input sets,
    ``n_samples``, per-set and per-output comparisons under ``sets``, and with
    ``per_node`` the intermediate comparisons and ``first_divergence``.
    """
    ref_model, folded_model = load_model(reference), load_model(folded)
    check_same_inputs(ref_model, folded_model)
    sets: dict[str, dict[str, np.ndarray]] = {}
    if inputs:
        sets["heldout"] = check_feeds(ref_model, inputs)
    if n_random > 0:
        sets["random"] = random_inputs(ref_model, n_random, seed)
    if not sets:
        raise InputError("nothing to compare: give held-out inputs or n_random > 0")
    ref_sess, folded_sess = _session(ref_model, "reference"), _session(folded_model, "folded")
    ref_names = [o.name for o in ref_sess.get_outputs()]
    folded_names = [o.name for o in folded_sess.get_outputs()]
    results: dict[str, ParityReport] = {}
    for set_name, feeds in sets.items():
        ref = dict(zip(ref_names, _run(ref_sess, ref_names, feeds, "reference"), strict=True))
        out = dict(zip(folded_names, _run(folded_sess, folded_names, feeds, "folded"), strict=True))
        results[set_name] = _compare_outputs(ref, out, rtol, min_top1, _n_rows(feeds))
    report: dict[str, Any] = ParityReport.merge(results).summary() | {
        "sets": {
            set_name: {name: p.to_dict() for name, p in result.outputs.items()}
            for set_name, result in results.items()
        }
    }
    if per_node:
        feeds = next(iter(sets.values()))
        head = {k: v[:PER_NODE_SAMPLES] for k, v in feeds.items()}
        report.update(compare_nodes(ref_model, folded_model, head, rtol))
    return report


def _session(model: onnx.ModelProto, which: str) -> ort.InferenceSession:
    try:
        return session(model)
    except ORT_ERRORS as exc:
        raise ModelRunError(
            f"ONNX Runtime cannot load the {which} model: {_one_line(exc)}"
        ) from exc


def _run(
    sess: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray], which: str
) -> list[Any]:
    try:
        return list(sess.run(names, feeds))
    except ORT_ERRORS as exc:
        raise ModelRunError(f"ONNX Runtime cannot run the {which} model: {_one_line(exc)}") from exc


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    """Each axis's static size, None where it is symbolic (the batch axis)."""
    return [
        int(d.dim_value) if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
    ]


def _describe(vi: onnx.ValueInfoProto) -> str:
    tt = vi.type.tensor_type
    dims = [
        str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim
    ]
    return f"'{vi.name}' {onnx.TensorProto.DataType.Name(tt.elem_type).lower()}[{', '.join(dims)}]"


def _fits(a: list[int | None], b: list[int | None]) -> bool:
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b, strict=True)
    )


def check_same_inputs(reference: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    """Refuse two graphs that do not take the same inputs (names, types, static sizes)."""
    ref, out = _inputs(reference), _inputs(folded)
    same = len(ref) == len(out) and all(
        r.name == o.name
        and r.type.tensor_type.elem_type == o.type.tensor_type.elem_type
        and _fits(_dims(r), _dims(o))
        for r, o in zip(ref, out, strict=True)
    )
    if not same:
        raise ModelRunError(
            "the two models take different inputs, so they cannot be compared: the reference "
            f"takes {', '.join(map(_describe, ref)) or 'none'}; the folded model takes "
            f"{', '.join(map(_describe, out)) or 'none'}"
        )


def check_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` checked against the model's inputs and cast to the types they declare.

    Numeric arrays become the declared float type (npz files hold float64 or
    uint8 pixels); a missing input, a wrong rank or static size, or a
    non-numeric array is refused with the input's name and what it takes.
    """
    out = {}
    for inp in _inputs(model):
        if inp.name not in feeds:
            raise ModelRunError(f"no array for input {_describe(inp)}; got {sorted(feeds)}")
        arr = np.asarray(feeds[inp.name])
        if not _fits(list(arr.shape), _dims(inp)) or (arr.ndim and arr.shape[0] == 0):
            raise ModelRunError(f"input {_describe(inp)} cannot take an array of shape {arr.shape}")
        want = np.dtype(helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))
        to_float = want.kind == "f" and arr.dtype.kind in "biuf"
        if to_float or (want.kind in "iu" and arr.dtype.kind in "iu"):
            arr = arr.astype(want, copy=False)
        elif want != arr.dtype:
            raise ModelRunError(f"input {_describe(inp)} cannot take an array of {arr.dtype}")
        out[inp.name] = arr
    return out


def _n_rows(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def _float_values(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Float tensors produced by nodes, with their inferred types, in graph order."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    infos = {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    out: dict[str, onnx.ValueInfoProto] = {}
    for node in model.graph.node:
        for name in node.output:
            vi = infos.get(name)
            if vi is None or not vi.type.HasField("tensor_type"):
                continue
            if np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).kind == "f":
                out[name] = vi
    return out


def _with_outputs(model: onnx.ModelProto, values: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(v for v in values if v.name not in present)
    return m


def compare_nodes(
    reference: onnx.ModelProto,
    folded: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    rtol: float = DEFAULT_RTOL,
) -> dict[str, Any]:
    """Compare every tensor name the two graphs share; name the first that diverges."""
    ref_values, folded_values = _float_values(reference), _float_values(folded)
    shared = [name for name in ref_values if name in folded_values]
    producer = {  # unnamed nodes are called as the fold report calls them
        o: n.name or f"{n.op_type}_{i}"
        for i, n in enumerate(reference.graph.node)
        for o in n.output
    }
    ref = run_onnx(_with_outputs(reference, [ref_values[n] for n in shared]), feeds)
    out = run_onnx(_with_outputs(folded, [folded_values[n] for n in shared]), feeds)
    nodes: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    for name in shared:
        if ref[name].shape != out[name].shape:
            entry = {
                "tensor": name,
                "node": producer[name],
                "passed": False,
                "error": "shape differs",
            }
        else:
            parity = compare(ref[name], out[name], rtol=rtol, min_top1=0.0)
            entry = {
                "tensor": name,
                "node": producer[name],
                "passed": parity.passed,
                "max_abs_error": parity.max_abs_error,
                "max_rel_error": parity.max_rel_error,
            }
        nodes.append(entry)
        if first is None and not entry["passed"]:
            first = entry
    return {"per_node": nodes, "first_divergence": first}


def read_data(spec: str, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``--data npz:PATH`` (``PATH`` alone is taken as an .npz too) as feeds
    for ``model``: one array per input name, or ``x`` (or a lone array) for
    a one-input model; checked against the model's inputs."""
    kind, sep, path_text = spec.partition(":")
    if not sep:
        kind, path_text = "npz", spec
    if kind != "npz" or not path_text:
        raise InputError(f"--data {spec!r}: expected npz:PATH")
    path = Path(path_text)
    if not path.is_file():
        raise InputError(f"--data: {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # a zip that is not an npz, a pickled array, ...
        raise InputError(f"--data: {path}: not an .npz file ({exc})") from exc
    names = [i.name for i in _inputs(model)]
    if set(names) <= set(arrays):
        feeds = {n: arrays[n] for n in names}
    elif len(names) == 1 and "x" in arrays:
        feeds = {names[0]: arrays["x"]}
    elif len(names) == 1 and len(arrays) == 1:
        feeds = {names[0]: next(iter(arrays.values()))}
    else:
        raise InputError(
            f"--data: {path} has arrays {sorted(arrays)}; the model needs {names} (or 'x')"
        )
    try:
        return check_feeds(model, feeds)
    except InputError as exc:
        raise InputError(f"--data: {path}: {exc}") from None
