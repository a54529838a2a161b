"""Prove a folded graph computes what its reference computes (ONNX Runtime, no torch).

Both graphs run on ONNX Runtime's CPU provider with graph optimizations OFF
(``ORT_DISABLE_ALL``), so what is compared is the graphs as written, not what
ORT's own fusions make of them. Inputs: the held-out data given, plus
``n_random`` standard-normal samples drawn from the model's input signature.

Every output is compared with :func:`bnfold.contract.compare`:

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

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from bnfold.contract import DEFAULT_MIN_TOP1, DEFAULT_RTOL, compare

ModelLike = onnx.ModelProto | str | Path
PER_NODE_SAMPLES = 16  # enough to expose a wrong channel, small enough for every tensor


class ModelFileError(ValueError):
    """A model file is missing or is not an ONNX model."""


def load_model(model: ModelLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        loaded = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise ModelFileError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if not loaded.graph.node and not loaded.graph.output:
        raise ModelFileError(f"{path}: not an ONNX model (empty graph)")
    return loaded


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
                raise ValueError(f"input '{inp.name}': axis {axis} has no static size")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype.kind == "f":
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[inp.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def _compare_outputs(
    ref: dict[str, np.ndarray], out: dict[str, np.ndarray], rtol: float, min_top1: float
) -> dict[str, dict[str, Any]]:
    missing = set(ref) - set(out)
    if missing:
        raise ValueError(f"folded model lacks outputs {sorted(missing)}")
    return {
        name: compare(ref[name], out[name], rtol=rtol, min_top1=min_top1).to_dict() for name in ref
    }


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
    sets: dict[str, dict[str, np.ndarray]] = {}
    if inputs:
        sets["heldout"] = _coerce(inputs, ref_model)
    if n_random > 0:
        sets["random"] = random_inputs(ref_model, n_random, seed)
    if not sets:
        raise ValueError("nothing to compare: give held-out inputs or n_random > 0")
    ref_sess, folded_sess = session(ref_model), session(folded_model)
    ref_names = [o.name for o in ref_sess.get_outputs()]
    folded_names = [o.name for o in folded_sess.get_outputs()]
    results: dict[str, Any] = {}
    for set_name, feeds in sets.items():
        ref = dict(zip(ref_names, ref_sess.run(ref_names, feeds), strict=True))
        out = dict(zip(folded_names, folded_sess.run(folded_names, feeds), strict=True))
        results[set_name] = _compare_outputs(ref, out, rtol, min_top1)
    every = [c for per_set in results.values() for c in per_set.values()]
    top1 = [c["top1_agreement"] for c in every if c["top1_agreement"] is not None]
    report: dict[str, Any] = {
        "passed": all(c["passed"] for c in every),
        "max_abs_error": max(c["max_abs_error"] for c in every),
        "max_rel_error": max(c["max_rel_error"] for c in every),
        "top1_agreement": min(top1) if top1 else None,
        "n_samples": sum(_n_rows(feeds) for feeds in sets.values()),
        "rtol": rtol,
        "min_top1": min_top1,
        "sets": results,
    }
    if per_node:
        feeds = next(iter(sets.values()))
        head = {k: v[:PER_NODE_SAMPLES] for k, v in feeds.items()}
        report.update(compare_nodes(ref_model, folded_model, head, rtol))
    return report


def _coerce(feeds: dict[str, np.ndarray], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Cast float arrays to the float type each input declares (npz files hold float64)."""
    types = {i.name: i.type.tensor_type.elem_type for i in _inputs(model)}
    out = {}
    for name, value in feeds.items():
        arr = np.asarray(value)
        want = np.dtype(helper.tensor_dtype_to_np_dtype(types[name])) if types.get(name) else None
        if want is not None and want.kind == "f" and arr.dtype.kind == "f" and arr.dtype != want:
            arr = arr.astype(want)
        out[name] = arr
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
