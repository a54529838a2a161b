"""One data plane under every front end (HTTP and gRPC), as KServe's and
MLServer's: a front end parses its wire format into a ``WireRequest``
(names, datatypes, shapes and parameters as sent, each input's data behind
a reader), and everything after that happens here, once:

    WireRequest --validate(signature)--> InferRequest --infer--> InferResult

- ``validate`` checks a request against the model's signature, in one
  order for every protocol: request parameters (Triton's reserved keys,
  no sequences, the timeout), then each input's name, datatype and shape
  before a single value is read, its shared-memory region or wire data, the
  finite check, then missing inputs and the batch size, then the requested
  outputs (known, not twice, their classification and shared memory);
- ``infer`` holds the model version for the request (a swap or unload lets
  it finish), runs it through the batcher and encodes each output to a
  neutral ``OutputTensor`` (classified, or written into its shared-memory
  region); the front end only writes it in its wire format.
- with ``--shadow-parity`` a sampled share of the requests is handed to
  the version's live parity (service/shadow.py), which compares it with the
  reference off this path: the response never waits for it. ``run`` does
  this and the batcher's part for every route, the V1 predict and classify
  routes (which decode their own bodies) too.

Shared memory is read and written here only (``_region`` and
``encode_outputs``), so a lifetime rule on regions has one place to wrap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import bytes_tensor
from . import shm as shared_memory
from .batching import Feeds, timestamps
from .errors import BadRequest, InferenceFailed
from .metrics import protocol
from .outputs import OutputOptions, finish, output_options
from .protocol import DATATYPE_OF
from .shm import BYTE_SIZE, REGION, Regions, Slice, no_shared_memory
from .signature import Signature, TensorSpec
from .state import request_id, serving_model, trace_id

if TYPE_CHECKING:
    from .model import ServedModel
    from .state import ServerState
    from .trace_file import Front, TraceFile
    from .tracing import Sampled

# Request parameters Triton gives a meaning (docs/protocol/extension_parameters.md);
# keys starting with "triton_" are Triton's own and refused.
RESERVED_PARAMETERS = (
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
    "headers",
    "binary_data_output",
)
TRITON_PREFIX = "triton_"


def _nothing() -> None:
    return None


# An input's data from the wire, read once its header passed: (spec, shape) -> array.
Reader = Callable[[TensorSpec, tuple[int, ...]], np.ndarray]


@dataclass
class WireInput:
    """One input as the wire gave it, nothing checked yet."""

    name: str
    datatype: object
    shape: object
    parameters: dict[str, Any]
    has_data: bool  # the wire carries data for it (besides any shared memory)
    read: Reader  # its data, when no shared-memory region holds it


@dataclass
class WireOutput:
    name: str
    parameters: dict[str, Any]


@dataclass
class WireRequest:
    id: str | None
    inputs: list[WireInput]
    outputs: list[WireOutput] | None  # None: every output, in the model's order
    parameters: dict[str, Any]
    finish: Callable[[], None] = _nothing  # the front end's check that every byte was claimed


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    parameters: Mapping[str, Any]  # as sent: a front end reads its wire options here
    options: OutputOptions


@dataclass
class InferRequest:
    """A request checked against the model's signature: inputs as numpy."""

    id: str | None
    feeds: Feeds
    rows: int  # batch size (1 for models without a batch axis)
    outputs: list[RequestedOutput]  # in response order
    parameters: dict[str, Any]
    timeout_s: float | None  # from parameters.timeout (microseconds)
    batched: bool = False  # the model has a batch axis (classification is per row)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray  # the output as asked for (classified when asked)
    parameters: Mapping[str, Any]  # the request's parameters for this output
    region: str | None = None  # written into this shared-memory region ...
    written: int = 0  # ... this many bytes


@dataclass
class InferResult:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor] = field(default_factory=list)


# --- validation ---------------------------------------------------------------


def check_parameters(params: Mapping[str, Any]) -> float | None:
    """The request's parameters as Triton reads them; returns the timeout (s)."""
    for key in params:
        if key.startswith(TRITON_PREFIX):
            raise BadRequest(
                "parameter keys starting with 'triton_' are reserved for Triton usage "
                "and should not be specified."
            )
    if (
        params.get("sequence_id") not in (None, 0, "")
        or params.get("sequence_start")
        or params.get("sequence_end")
    ):
        raise BadRequest("sequence batching is not supported (bnfold serves stateless models)")
    priority = params.get("priority")
    if priority is not None and (type(priority) is not int or priority < 0):
        raise BadRequest("Unable to parse 'priority'")
    output = params.get("binary_data_output")
    if output is not None and type(output) is not bool:
        raise BadRequest("Unable to parse 'binary_data_output'")
    return timeout(params.get("timeout"))


def timeout(value: object) -> float | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise BadRequest("parameters.timeout must be a non-negative integer (microseconds)")
    return value / 1e6 if value else None


def _region(tensor: str, params: dict[str, Any], shm: Regions | None) -> Slice | None:
    if shm is None:
        no_shared_memory(tensor, params)
        return None
    return shm.slice(tensor, params)


def check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input {name!r} contains NaN or Inf")


def validate_inputs(
    inputs: Sequence[WireInput],
    signature: Signature,
    *,
    max_elements: int,
    allow_nonfinite: bool,
    shm: Regions | None = None,
    finish_wire: Callable[[], None] = _nothing,
    model: str = "",
) -> tuple[Feeds, int]:
    """Each input against ``signature`` (header first, then its data); the
    feeds and their batch size. BYTES inputs whose element counts are not
    their shapes' are refused together, each in Triton's words (which name
    ``model``): Triton checks them in an order of its own."""
    feeds: Feeds = {}
    miscounted: list[str] = []
    for wire in inputs:
        name = wire.name
        if name in feeds:
            raise BadRequest(f"input {name!r} is given twice")
        spec, shape = signature.check_input(name, wire.datatype, wire.shape, max_elements)
        where = _region(f"input {name!r}", wire.parameters, shm)
        try:
            if where is not None:
                if wire.has_data:
                    raise BadRequest(f"input {name!r} has data besides its shared memory region")
                array = where.read_tensor(name, spec.dtype, shape)
            else:
                array = wire.read(spec, shape)
        except bytes_tensor.StringCount as e:
            miscounted.append(e.for_model(model))
            feeds[name] = np.empty(0)  # given, refused below
            continue
        if not allow_nonfinite:
            check_finite(name, array)
        feeds[name] = array
    if miscounted:
        raise BadRequest("; ".join(miscounted))
    finish_wire()

    missing = signature.missing_inputs(feeds)
    if missing:
        raise BadRequest(f"missing inputs {missing}")
    rows = 1
    if signature.batched:
        sizes = {name: a.shape[0] for name, a in feeds.items()}
        if len(set(sizes.values())) > 1:
            raise BadRequest(f"inputs disagree on the batch size: {sizes}")
        rows = next(iter(sizes.values()))
    return feeds, rows


def validate_outputs(
    requested: Sequence[WireOutput] | None,
    signature: Signature,
    shm: Regions | None = None,
) -> list[RequestedOutput]:
    """The outputs asked for (every one when none is named), each known,
    none twice (Triton's wording), with its options checked."""
    if requested is None:
        requested = [WireOutput(name, {}) for name in signature.output_names()]
    known = signature.output_names()
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for wire in requested:
        name = wire.name
        if name not in known:
            raise BadRequest(f"unknown output {name!r}; the model returns {known}")
        if name in seen:
            raise BadRequest(f"output {name!r} already exists in request")
        seen.add(name)
        spec = signature.output(name)
        where = _region(f"output {name!r}", wire.parameters, shm)
        option = output_options(name, spec, wire.parameters, signature.batched, where)
        outputs.append(RequestedOutput(name, wire.parameters, option))
    return outputs


def validate(
    wire: WireRequest,
    signature: Signature,
    *,
    max_elements: int,
    allow_nonfinite: bool,
    shm: Regions | None = None,
    model: str = "",
) -> InferRequest:
    """A parsed request checked against ``signature`` (of ``model``): the
    one validation every protocol goes through."""
    seconds = check_parameters(wire.parameters)
    if not wire.inputs:
        raise BadRequest("inputs must be a non-empty list")
    feeds, rows = validate_inputs(
        wire.inputs,
        signature,
        max_elements=max_elements,
        allow_nonfinite=allow_nonfinite,
        shm=shm,
        finish_wire=wire.finish,
        model=model,
    )
    outputs = validate_outputs(wire.outputs, signature, shm)
    return InferRequest(wire.id, feeds, rows, outputs, wire.parameters, seconds, signature.batched)


# --- inference and the neutral result ------------------------------------------


def encode_outputs(
    request: InferRequest, outputs: Feeds, labels: Sequence[str] = ()
) -> list[OutputTensor]:
    """Each requested output as asked: classified, or written into its
    shared-memory region (the response then says where)."""
    encoded = []
    for wanted in request.outputs:
        name, options = wanted.name, wanted.options
        array = finish(name, outputs[name], options, labels, request.batched)
        datatype = DATATYPE_OF.get(array.dtype)
        if datatype is None:
            raise InferenceFailed(f"output {name!r} has unsupported dtype {array.dtype}")
        tensor = OutputTensor(name, datatype, list(array.shape), array, wanted.parameters)
        if options.shm is not None:
            tensor.written = options.shm.write_tensor(name, array)
            tensor.region = options.shm.region.name
        encoded.append(tensor)
    return encoded


def region_parameters(tensor: OutputTensor) -> dict[str, Any]:
    """What a response says of an output written into shared memory."""
    return {REGION: tensor.region, BYTE_SIZE: tensor.written}


async def run(
    served: ServedModel,
    feeds: Feeds,
    rows: int,
    timeout_s: float,
    requested_s: float | None = None,
) -> Feeds:
    """Checked feeds through ``served``'s batcher: every route's one way to
    run a request (V2 infer over HTTP and gRPC, V1 predict, classify), so
    that each is cancelled alike when its client goes (``batching.on_queue``)
    and sampled alike by shadow parity (service/shadow.py)."""
    outputs = await served.infer(feeds, rows, timeout_s, requested_s)
    if served.live is not None:  # --shadow-parity: sampled, compared off this path
        served.live.offer(feeds, outputs, rows)
    return outputs


async def infer(
    state: ServerState,
    name: str,
    version: str | None,
    parse: Callable[[Signature], WireRequest],
    traceparent: str | None = None,
    front: Front | None = None,
) -> InferResult:
    """One inference, whatever the protocol: ``parse`` reads the wire
    request once the version serving ``name`` is known (its signature);
    the version is held until every output is encoded. Traced (request,
    queue and compute spans) when tracing is on and samples it; the
    client's W3C ``traceparent`` is then the request span's parent. In
    Triton's trace mode, ``front`` carries the protocol's stamps, and its
    protocol writes the trace once it has sent the answer."""
    if state.trace_file is not None:  # Triton's trace mode: records in the operator's file
        sampled = state.tracing.sample(name)
        if sampled is None:
            return await _infer(state, name, version, parse)
        return await _infer_to_file(state, state.trace_file, name, version, parse, sampled, front)
    spans = state.spans
    if spans is None or not state.tracing.sample(name):
        return await _infer(state, name, version, parse)
    attributes = {"bnfold.model": name, "bnfold.protocol": protocol.get()}
    attributes["bnfold.request_id"] = request_id.get()
    span = spans.request(traceparent, attributes)
    trace_id.set(spans.trace_id(span))
    stamps: list[float] = []
    marks = timestamps.set(stamps)
    error: BaseException | None = None
    try:
        result = await _infer(state, name, version, parse)
        span.set_attribute("bnfold.version", result.model_version)
        return result
    except BaseException as e:
        error = e
        raise
    finally:
        timestamps.reset(marks)
        spans.finish(span, stamps, error)


async def _infer_to_file(
    state: ServerState,
    file: TraceFile,
    name: str,
    version: str | None,
    parse: Callable[[Signature], WireRequest],
    sampled: Sampled,
    front: Front | None,
) -> InferResult:
    """One inference traced as Triton traces it (service/trace_file.py):
    its records written once it has failed, or once it is answered: by its
    protocol (``front``) after the answer is sent, else here."""
    trace = file.begin(name, sampled, front.stamps if front is not None else ())
    stamps: list[float] = []
    marks = timestamps.set(stamps)
    try:
        result = await _infer(state, name, version, parse, trace.tensors)
        trace.request_id = result.id or ""  # the request's own id, as Triton's trace has it
        if front is not None:
            front.trace = trace
        return result
    finally:
        timestamps.reset(marks)
        served = serving_model.get()
        trace.finish(served[1] if served else None, stamps)
        if front is None or front.trace is None:
            file.write(trace, trace.records(DATATYPE_OF))


async def _infer(
    state: ServerState,
    name: str,
    version: str | None,
    parse: Callable[[Signature], WireRequest],
    seen: list[tuple[Feeds, Feeds]] | None = None,
) -> InferResult:
    settings = state.settings
    async with state.serving_repository().serving(name, version) as served:
        serving_model.set((served.name, served.version_str))
        # The regions a request names stay open until its outputs are written,
        # whatever unregisters them meanwhile (Triton's lifetime rule).
        with shared_memory.using(state.shm, served.name) as regions:
            request = validate(
                parse(served.signature),
                served.signature,
                max_elements=settings.max_body_bytes,
                allow_nonfinite=settings.allow_nonfinite,
                shm=regions,
                model=served.name,
            )
            seconds = min(settings.request_timeout_s, request.timeout_s or math.inf)
            outputs = await run(served, request.feeds, request.rows, seconds, request.timeout_s)
            if seen is not None:  # trace level TENSORS: what went in and came out
                seen.append((request.feeds, outputs))
            tensors = encode_outputs(request, outputs, served.config.labels)
        return InferResult(served.name, served.version_str, request.id, tensors)
