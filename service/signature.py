"""What a served model accepts and returns, checked before it runs.

The graph is the ground truth (ONNX Runtime's input/output metadata);
``config.json`` must agree with it and may pin dimensions the graph leaves
symbolic. A request's names, datatypes and shapes are checked against the
merged signature, so a mistake is a 400 naming the tensor, not an ONNX
Runtime stack trace.

Triton's ``reshape`` and ``optional`` are honoured here: a spec's
``shape`` is what the wire carries (the configuration's ``dims``), its
``graph_shape`` what the graph is fed (the ``reshape``), and the runtime
converts between them (service/runtime.py, ``Runtime.adopt``). An input
the graph holds a default for (an initializer of the same name, which
ONNX Runtime lets a feed override) may be listed in the configuration;
an ``optional`` input may be left out of a request: the graph then runs
on its default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnfold.contract import ONNX_DATATYPES, GraphTensor, ModelConfig, TensorConfig

from .errors import BadRequest
from .protocol import DATATYPES

# Triton counts elements in int64 and bytes in uint64 (size_t).
INT64_MAX, UINT64_MAX = 2**63 - 1, 2**64 - 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # full shape, batch dimension included; -1: any size
    graph_shape: tuple[int, ...] | None = None  # what the graph sees (reshape); None: shape
    optional: bool = False  # a request may leave it out
    has_default: bool = False  # the graph has an initializer default for it

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
        raise BadRequest(f"unknown input '{name}'; the model expects {expected}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise BadRequest(f"unknown output {name!r}; the model returns {self.output_names()}")

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def missing_inputs(self, given: object) -> list[str]:
        """Inputs a request must send and ``given`` (names) lacks: every input
        except an ``optional`` one the graph has a default for."""
        return [
            s.name
            for s in self.inputs
            if s.name not in given  # type: ignore[operator]
            and not (s.optional and s.has_default)
        ]

    def reshapes(self) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """``(inputs, outputs)``: for each tensor whose graph shape differs from
        its wire shape, the shape to reshape to, batch dimension excluded
        when batched (inputs: to the graph's; outputs: to the wire's)."""
        skip = 1 if self.batched else 0
        into = {s.name: s.graph_shape[skip:] for s in self.inputs if s.graph_shape is not None}
        back = {s.name: s.shape[skip:] for s in self.outputs if s.graph_shape is not None}
        return into, back

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
        count = math.prod(dims)  # Triton's overflow checks, in its words, come first
        if count > INT64_MAX:
            raise BadRequest(
                f"input {name!r}: shape {list(dims)} causes total element count to exceed "
                f"maximum size of {INT64_MAX}"
            )
        if spec.datatype != "BYTES" and count * spec.dtype.itemsize > UINT64_MAX:
            raise BadRequest(
                f"byte size overflow for input {name!r}: {count} elements of {spec.datatype}"
            )
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
    defaults: Sequence[GraphTensor] = (),
) -> Signature:
    """Merge the configuration (read from ``source``) with the graph; raises
    ``ValueError`` naming the mismatch. ``defaults`` are the graph's inputs
    with an initializer default (ONNX Runtime's overridable initializers):
    the configuration may list them, and need not."""
    batched = config.max_batch_size > 0
    size = config.max_batch_size
    inputs = _merge("input", config.input, graph_inputs, batched, size, source, list(defaults))
    outputs = _merge("output", config.output, graph_outputs, batched, size, source, [])
    return Signature(inputs, outputs, config.max_batch_size)


def _merge(
    kind: str,
    configured: list[TensorConfig],
    graph: list[GraphTensor],
    batched: bool,
    max_batch_size: int,
    source: str,
    defaults: Sequence[GraphTensor],
) -> tuple[TensorSpec, ...]:
    by_name = {c.name: c for c in configured}
    graph_names = [g[0] for g in graph]
    default_names = {g[0] for g in defaults}
    listed = [*graph, *(g for g in defaults if g[0] in by_name)]
    if set(by_name) != {g[0] for g in listed}:
        raise ValueError(
            f"{source} {kind}s {sorted(by_name)} do not match the graph's {sorted(graph_names)}"
            + (f" (with defaults {sorted(default_names)})" if default_names else "")
        )
    specs = []
    for name, onnx_type, graph_shape in listed:
        cfg = by_name[name]
        datatype = ONNX_DATATYPES.get(onnx_type)
        if datatype is None:
            raise ValueError(f"{kind} {name!r} has unsupported type {onnx_type}")
        if datatype != cfg.datatype:
            raise ValueError(f"{kind} {name!r}: {source} says {cfg.datatype}, graph {datatype}")
        if cfg.optional and batched:
            raise ValueError(
                f"optional input '{name}' is not supported for models that support batching"
            )
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
        reshape = cfg.reshape
        if reshape is None and not dims and not batched and cfg.shape and set(cfg.shape) == {1}:
            reshape = []  # Triton's rule: a scalar may be configured as [1] (or [1, 1])
        seen = cfg.shape if reshape is None else reshape
        what = "shape" if reshape is None else "reshape"
        if len(dims) != len(seen):
            raise ValueError(
                f"{kind} {name!r}: {source} {what} {seen} has rank {len(seen)}, "
                f"the graph {len(dims)}{' after the batch dimension' if batched else ''}"
            )
        merged = []
        for g, c in zip(dims, seen, strict=True):
            if g != -1 and c != -1 and g != c:
                raise ValueError(f"{kind} {name!r}: {source} {what} {seen} vs graph {dims}")
            merged.append(g if g != -1 else c)
        optional = bool(cfg.optional) and kind == "input"
        has_default = name in default_names
        if reshape is None:
            specs.append(
                TensorSpec(name, datatype, tuple(head + merged), None, optional, has_default)
            )
            continue
        _check_reshape(kind, name, source, cfg.shape, merged)
        specs.append(
            TensorSpec(
                name, datatype, tuple(head + cfg.shape), tuple(head + merged), optional, has_default
            )
        )
    return tuple(specs)


def _check_reshape(kind: str, name: str, source: str, wire: list[int], graph: list[int]) -> None:
    """Triton's rule: the same number of elements on both sides. A variable
    dimension (-1) on one side needs one on the other (at most one each:
    what one side's size leaves is the other's)."""
    vary_wire, vary_graph = wire.count(-1), graph.count(-1)
    if vary_wire > 1 or vary_graph > 1 or (vary_wire == 0) != (vary_graph == 0):
        raise ValueError(
            f"{kind} {name!r}: {source} dims {wire} and reshape {graph}: a variable "
            "dimension (-1) must appear once on both sides or on neither"
        )
    if vary_wire == 0 and math.prod(wire) != math.prod(graph):
        raise ValueError(
            f"{kind} {name!r}: {source} dims {wire} hold {math.prod(wire)} elements, "
            f"the reshape {graph} {math.prod(graph)}"
        )


def generate_inputs(signature: Signature, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` rows drawn from N(0, 1) (integers 0..9, booleans fair, strings
    of digits 0..9) per input; an optional input with a default in the graph
    is left out (the graph's default is what a request without it runs on)."""
    if not signature.batched and n != 1:
        raise BadRequest("this model has no batch dimension: use n=1 or send inputs")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        if spec.optional and spec.has_default:
            continue
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
