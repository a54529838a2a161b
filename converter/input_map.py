"""The input normalisation as the first per-channel affine map of a graph.

A network is trained on standardised data, ``x = (raw / pixel_scale - mean[c])
/ std[c]``, but people have the raw values (digits' ink counts 0..16, 8-bit
pixels 0..255). :func:`prepend_normalization` puts that map in front of the
graph, so the graph takes the raw values; the fold engine then folds it into
the first layer like any BN (forward into the first Conv/Gemm/MatMul). Where
the first layer pads with zeros, its bias cannot take the shift exactly, and
one elementwise ``Add`` stays on the input: the fold report says so
(:func:`fold_outcome`).

The map is written as the fold engine reads a BN: ``Mul`` by ``1 / (pixel_scale
* std[c])`` then ``Add`` of ``-mean[c] / std[c]``, constants laid along the
channel axis (the feature axis of a flat input); for a one-channel image,
whose map is one number, as a ``BatchNormalization`` (mean 0, var 1,
epsilon 0) over axis 1, since a Mul/Add pair of scalars is not read as a BN.

No torch: ``bnfold import --normalize`` uses it in the serving image too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.converter.errors import InputError
from bnfold.folding.report import INPUT_MAP

PREFIX = INPUT_MAP  # the fold report recognises the map by this name
# Ops that read only the input's shape (exporters compute batch sizes with
# them); they keep reading the raw input, so the map has the layers alone.
SHAPE_ONLY = ("Shape", "Size")


class NormalizeError(InputError):
    """The normalisation asked for does not fit the model (exit 2)."""


def scale_shift(
    pixel_scale: float, mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` per channel (float64) with ``s * raw + t = (raw / pixel_scale - mean) / std``."""
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (channels,))
    d = np.broadcast_to(np.asarray(std, dtype=np.float64), (channels,))
    if np.any(d == 0) or pixel_scale <= 0:
        raise NormalizeError("std must have no zero entry and pixel_scale must be positive")
    return 1.0 / (pixel_scale * d), -m / d


def normalize_array(
    raw: np.ndarray, pixel_scale: float, mean: Sequence[float], std: Sequence[float], axis: int
) -> np.ndarray:
    """What the prepended map computes, in float64, cast to float32."""
    shape = [1] * raw.ndim
    shape[axis] = -1
    m = np.asarray(mean, dtype=np.float64).reshape(shape)
    d = np.asarray(std, dtype=np.float64).reshape(shape)
    return ((raw.astype(np.float64) / pixel_scale - m) / d).astype(np.float32)


def denormalize_array(
    x: np.ndarray, pixel_scale: float, mean: Sequence[float], std: Sequence[float], axis: int
) -> np.ndarray:
    """The raw values whose normalisation is ``x`` (float64, cast to float32)."""
    shape = [1] * x.ndim
    shape[axis] = -1
    m = np.asarray(mean, dtype=np.float64).reshape(shape)
    d = np.asarray(std, dtype=np.float64).reshape(shape)
    return ((x.astype(np.float64) * d + m) * pixel_scale).astype(np.float32)


def _graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise NormalizeError(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "an input normalisation needs exactly one"
        )
    return inputs[0]


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def prepend_normalization(
    model: onnx.ModelProto,
    *,
    pixel_scale: float,
    mean: Sequence[float],
    std: Sequence[float],
    channel_axis: int = 1,
) -> onnx.ModelProto:
    """A copy of ``model`` whose one input takes raw values: the map
    ``(raw / pixel_scale - mean[c]) / std[c]`` along ``channel_axis`` runs
    first, then the graph as it was. The input keeps its name and type."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inp = _graph_input(out)
    dims = _dims(inp)
    rank = len(dims)
    elem = inp.type.tensor_type.elem_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    if dtype.kind != "f":
        raise NormalizeError(f"input {inp.name!r} is {dtype}, not a float tensor")
    if rank < 2:
        raise NormalizeError(f"input {inp.name!r} has rank {rank}; need a batch axis and more")
    axis = channel_axis % rank
    if axis == 0:
        raise NormalizeError("the channel axis cannot be the batch axis")
    channels = max(len(mean), len(std))
    size = dims[axis]
    if channels > 1 and size != channels:
        raise NormalizeError(
            f"{channels} channels of mean/std but input {inp.name!r} has "
            f"{size if size is not None else 'a variable size'} along axis {axis}"
        )
    if any(o.name == inp.name for o in g.output):
        raise NormalizeError(f"input {inp.name!r} is also a graph output")
    normalized = f"{inp.name}_normalized"
    for node in g.node:
        if node.op_type in SHAPE_ONLY:  # the same shape either way: keep the raw input
            continue
        for i, name in enumerate(node.input):
            if name == inp.name:
                node.input[i] = normalized

    if size is not None and size > 1:
        s, t = scale_shift(pixel_scale, mean, std, size)
        shape = [size] + [1] * (rank - axis - 1)
        consts = {
            f"{PREFIX}.scale": s.reshape(shape),
            f"{PREFIX}.shift": t.reshape(shape),
        }
        scaled = f"{inp.name}_scaled"
        nodes = [
            helper.make_node("Mul", [inp.name, f"{PREFIX}.scale"], [scaled], f"{PREFIX}_scale"),
            helper.make_node("Add", [scaled, f"{PREFIX}.shift"], [normalized], f"{PREFIX}_shift"),
        ]
    else:  # one number: a BatchNormalization over axis 1, which the fold engine reads as a BN
        bn_channels = dims[1]
        if bn_channels is None:
            raise NormalizeError(f"input {inp.name!r} has a variable size along axis 1")
        s, t = scale_shift(pixel_scale, mean, std, 1)
        consts = {
            f"{PREFIX}.scale": np.full(bn_channels, s[0]),
            f"{PREFIX}.shift": np.full(bn_channels, t[0]),
            f"{PREFIX}.mean": np.zeros(bn_channels),
            f"{PREFIX}.var": np.ones(bn_channels),
        }
        nodes = [
            helper.make_node(
                "BatchNormalization",
                [inp.name, *consts],
                [normalized],
                PREFIX,
                epsilon=0.0,
            )
        ]
    g.initializer.extend(numpy_helper.from_array(v.astype(dtype), k) for k, v in consts.items())
    existing = list(g.node)
    del g.node[:]
    g.node.extend([*nodes, *existing])
    onnx.checker.check_model(out)
    return out


def fold_outcome(report: dict[str, Any]) -> dict[str, Any] | None:
    """The fold report's entry for the input normalisation: where it went
    (``folded`` into the first layer, or ``partial`` with what stayed and why)."""
    for entry in report.get("bns", []):
        if str(entry.get("name", "")).startswith(PREFIX):
            return {
                key: entry[key]
                for key in ("status", "folded_into", "residual", "reasons")
                if key in entry
            }
    return None


def describe_input_map(outcome: dict[str, Any] | None) -> str:
    """One line on where the input normalisation went."""
    if outcome is None:
        return "the graph takes normalised input (no input normalisation in it)"
    into = ", ".join(outcome.get("folded_into", [])) or "nothing"
    if outcome["status"] == "folded":
        return f"input normalisation folded into {into}: free at run time"
    left = "; ".join(outcome.get("residual", []))
    why = next((r for r in outcome.get("reasons", []) if "cannot enter" in r), "")
    why = why.split(": ", 1)[1] if why.startswith(("backward: ", "forward: ")) else why
    return f"input normalisation: folded into {into}, {left} stays on the input" + (
        f" ({why})" if why else ""
    )


_NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"


def parse_normalize(text: str) -> tuple[list[float], list[float]]:
    """``MEAN/STD``, each a comma-separated list with one value per channel
    (or one for all): ``0.5/0.25``, ``0.485,0.456,0.406/0.229,0.224,0.225``."""
    usage = (
        f"--normalize {text!r}: expected MEAN/STD, each one value or one per channel, "
        "comma-separated (e.g. 0.5/0.25 or 0.485,0.456,0.406/0.229,0.224,0.225)"
    )
    parts = text.replace(" ", "").split("/")
    if len(parts) != 2:
        raise NormalizeError(usage)
    lists = []
    for part in parts:
        items = part.split(",")
        if not all(re.fullmatch(_NUMBER, v) for v in items):
            raise NormalizeError(usage)
        lists.append([float(v) for v in items])
    mean, std = lists
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise NormalizeError(
            f"--normalize {text!r}: {len(mean)} means but {len(std)} standard deviations"
        )
    if any(v <= 0 for v in std):
        raise NormalizeError(f"--normalize {text!r}: every standard deviation must be positive")
    n = max(len(mean), len(std))
    return mean * (n if len(mean) == 1 else 1), std * (n if len(std) == 1 else 1)


def parse_range(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` (e.g. ``0,255``)."""
    items = text.replace(" ", "").split(",")
    if len(items) != 2 or not all(re.fullmatch(_NUMBER, v) for v in items):
        raise NormalizeError(f"--input-range {text!r}: expected LOW,HIGH (e.g. 0,255)")
    lo, hi = float(items[0]), float(items[1])
    if not lo < hi:
        raise NormalizeError(f"--input-range {text!r}: LOW must be below HIGH")
    return lo, hi
