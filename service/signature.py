"""What a served model accepts and returns, checked before it runs.

The graph is the ground truth (ONNX Runtime's input/output metadata);
``config.json`` must agree with it and may pin dimensions the graph leaves
symbolic. A request's names, datatypes and shapes are checked against the
merged signature, so a mistake is a 400 naming the tensor, not an ONNX
Runtime stack trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnfold.contract import ONNX_DATATYPES, GraphTensor, ModelConfig, TensorConfig

from .errors import BadRequest
from .protocol import DATATYPES


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # full shape, batch dimension included; -1: any size

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model does not batch; shapes are taken as they are

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        expected = [s.name for s in self.inputs]
        raise BadRequest(f"unknown input {name!r}; the model expects {expected}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise BadRequest(f"unknown output {name!r}; the model returns {self.output_names()}")

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def check_input(
        self, name: str, datatype: object, shape: object, max_elements: int
    ) -> tuple[TensorSpec, tuple[int, ...]]:
        """Validate one request input's header; returns its spec and shape."""
        spec = self.input(name)
        if datatype != spec.datatype:
            raise BadRequest(
                f"input {name!r}: datatype {datatype} but the model expects {spec.datatype}"
            )
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise BadRequest(f"input {name!r}: shape must be a list of integers")
        dims = tuple(shape)
        if any(d < 0 for d in dims):
            raise BadRequest(f"input {name!r}: shape {list(dims)} has a negative dimension")
        if len(dims) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(dims, spec.shape, strict=True)
        ):
            raise BadRequest(
                f"input {name!r}: shape {list(dims)} does not match the model's "
                f"{list(spec.shape)} (-1: any size)"
            )
        if self.batched and not 1 <= dims[0] <= self.max_batch_size:
            raise BadRequest(
                f"input {name!r}: batch size {dims[0]} is outside 1..{self.max_batch_size}"
            )
        if math.prod(dims) > max_elements:
            raise BadRequest(f"input {name!r}: shape {list(dims)} is larger than any body allowed")
        return spec, dims


def build_signature(
    config: ModelConfig,
    graph_inputs: list[GraphTensor],
    graph_outputs: list[GraphTensor],
    *,
    source: str = "config.json",
) -> Signature:
    """Merge the configuration (read from ``source``) with the graph; raises
    ``ValueError`` naming the mismatch."""
    batched = config.max_batch_size > 0
    size = config.max_batch_size
    inputs = _merge("input", config.input, graph_inputs, batched, size, source)
    outputs = _merge("output", config.output, graph_outputs, batched, size, source)
    return Signature(inputs, outputs, config.max_batch_size)


def _merge(
    kind: str,
    configured: list[TensorConfig],
    graph: list[GraphTensor],
    batched: bool,
    max_batch_size: int,
    source: str,
) -> tuple[TensorSpec, ...]:
    by_name = {c.name: c for c in configured}
    graph_names = [g[0] for g in graph]
    if set(by_name) != set(graph_names):
        raise ValueError(
            f"{source} {kind}s {sorted(by_name)} do not match the graph's {sorted(graph_names)}"
        )
    specs = []
    for name, onnx_type, graph_shape in graph:
        cfg = by_name[name]
        datatype = ONNX_DATATYPES.get(onnx_type)
        if datatype is None:
            raise ValueError(f"{kind} {name!r} has unsupported type {onnx_type}")
        if datatype != cfg.datatype:
            raise ValueError(f"{kind} {name!r}: {source} says {cfg.datatype}, graph {datatype}")
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in graph_shape]
        if batched:
            if not dims:
                raise ValueError(f"{kind} {name!r} is a scalar but max_batch_size > 0")
            if dims[0] != -1 and not (dims[0] == 1 and max_batch_size == 1):
                raise ValueError(
                    f"{kind} {name!r}: graph batch dimension is fixed at {dims[0]} "
                    f"but max_batch_size is {max_batch_size}"
                )
            head, dims = [-1], dims[1:]
        else:
            head = []
        if len(dims) != len(cfg.shape):
            raise ValueError(
                f"{kind} {name!r}: {source} shape {cfg.shape} has rank {len(cfg.shape)}, "
                f"the graph {len(dims)}{' after the batch dimension' if batched else ''}"
            )
        merged = []
        for g, c in zip(dims, cfg.shape, strict=True):
            if g != -1 and c != -1 and g != c:
                raise ValueError(f"{kind} {name!r}: {source} shape {cfg.shape} vs graph {dims}")
            merged.append(g if g != -1 else c)
        specs.append(TensorSpec(name, datatype, tuple(head + merged)))
    return tuple(specs)


def generate_inputs(signature: Signature, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` rows drawn from N(0, 1) (integers 0..9, booleans fair, strings
    of digits 0..9) per input."""
    if not signature.batched and n != 1:
        raise BadRequest("this model has no batch dimension: use n=1 or send inputs")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        dims = list(spec.shape)
        if signature.batched:
            dims[0] = n
        if any(d < 0 for d in dims):
            raise BadRequest(f"input {spec.name!r} has a variable dimension; send inputs instead")
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.random(dims) < 0.5
        elif spec.dtype.kind == "O":  # BYTES: ONNX strings
            feeds[spec.name] = rng.integers(0, 10, size=dims).astype(str).astype(object)
        else:
            feeds[spec.name] = rng.integers(0, 10, size=dims).astype(spec.dtype)
    return feeds
