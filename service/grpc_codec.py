"""gRPC inference messages to numpy and back (``inference.ModelInferRequest``).

The same checks as the HTTP codec, in the same order and with the same
messages: each input's name, datatype and shape against the model's
signature (``Signature.check_input``) before a single value is read, then
its data. An input's data is, in Triton's order of precedence:

- ``raw_input_contents``: one bytes entry per input that carries neither
  typed contents nor a shared-memory region, in input order, row-major,
  little-endian (what ``tritonclient.grpc`` sends); its size must be the
  tensor's exactly;
- typed ``contents`` (``fp32_contents``, ``int_contents``, ...), the field
  of the input's datatype and no other, with exactly ``prod(shape)`` values
  in the datatype's range;
- a system shared-memory region (``parameters.shared_memory_region``).

Outputs come back in ``raw_output_contents`` (one entry per output, in the
order of ``outputs``), as Triton answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import bytes_tensor
from .batching import Feeds
from .binary import tensor_bytes, tensor_from_bytes
from .errors import BadRequest, InferenceFailed
from .outputs import OutputOptions, finish, output_options
from .proto import grpc_service_pb2 as pb
from .protocol import DATATYPE_OF, DATATYPES
from .shm import BYTE_SIZE, REGION, Regions, no_shared_memory
from .signature import Signature

# Datatype -> the InferTensorContents field that carries it (FP16 has none:
# it travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


@dataclass
class GrpcInferRequest:
    id: str
    feeds: Feeds
    rows: int
    outputs: list[str]  # in response order
    timeout_s: float | None
    batched: bool = False  # the model has a batch axis (classification is per row)
    options: dict[str, OutputOptions] = field(default_factory=dict)  # outputs asked more of


def parameter_value(p: pb.InferParameter) -> Any:
    """An ``InferParameter`` as the Python value it holds (None when unset)."""
    choice = p.WhichOneof("parameter_choice")
    return None if choice is None else getattr(p, choice)


def parameters(mapping: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as a plain dict, like HTTP's JSON."""
    return {key: parameter_value(value) for key, value in mapping.items()}


def _typed(
    name: str, datatype: str, contents: pb.InferTensorContents, shape: tuple[int, ...]
) -> np.ndarray:
    wanted = CONTENTS_FIELD.get(datatype)
    given = [f.name for f, _ in contents.ListFields()]
    if wanted is None:
        raise BadRequest(f"input {name!r}: {datatype} data must be sent in raw_input_contents")
    others = [g for g in given if g != wanted]
    if others:
        raise BadRequest(
            f"input {name!r}: {datatype} data goes in contents.{wanted}, not {', '.join(others)}"
        )
    values = getattr(contents, wanted)
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(
            f"input {name!r}: {len(values)} values given, shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        return bytes_tensor.from_values(name, values, shape)
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and dtype.itemsize < 4 and count:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise BadRequest(f"input {name!r}: values outside {datatype} range")
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def _raw(name: str, spec_dtype: np.dtype[Any], raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    if bytes_tensor.is_bytes(spec_dtype):
        return bytes_tensor.deserialize(name, raw, shape)
    try:
        return tensor_from_bytes(name, memoryview(raw), spec_dtype, shape)
    except BadRequest as e:  # the HTTP wording names binary_data_size
        raise BadRequest(
            e.message.replace("binary_data_size is", "raw_input_contents holds")
        ) from None


def decode_request(
    request: pb.ModelInferRequest,
    signature: Signature,
    *,
    max_elements: int,
    allow_nonfinite: bool,
    shm: Regions | None = None,
) -> GrpcInferRequest:
    """Parse and validate a ``ModelInferRequest`` against ``signature``;
    ``shm`` holds the shared-memory regions inputs and outputs may name."""
    params = parameters(request.parameters)
    if params.get("sequence_id") not in (None, 0, ""):
        raise BadRequest("sequence batching is not supported (bnfold serves stateless models)")
    if not request.inputs:
        raise BadRequest("inputs must be a non-empty list")
    raw = request.raw_input_contents
    next_raw = 0
    if raw:  # Triton's rule: raw contents for every input that has data, or none
        for tensor in request.inputs:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise BadRequest(
                    "contents field must not be specified when using raw_input_contents "
                    f"for {tensor.name!r} for model {request.model_name!r}"
                )
    feeds: Feeds = {}
    for tensor in request.inputs:
        name = tensor.name
        if name in feeds:
            raise BadRequest(f"input {name!r} is given twice")
        spec, shape = signature.check_input(name, tensor.datatype, list(tensor.shape), max_elements)
        in_params = parameters(tensor.parameters)
        where = None
        if shm is not None:
            where = shm.slice(f"input {name!r}", in_params)
        else:
            no_shared_memory(f"input {name!r}", in_params)
        has_contents = tensor.HasField("contents") and bool(tensor.contents.ListFields())
        if where is not None:
            if has_contents:
                raise BadRequest(f"input {name!r} has contents besides its shared memory region")
            array = where.read_tensor(name, spec.dtype, shape)
        elif has_contents:
            array = _typed(name, spec.datatype, tensor.contents, shape)
        elif next_raw < len(raw):
            array = _raw(name, spec.dtype, raw[next_raw], shape)
            next_raw += 1
        else:
            raise BadRequest(
                f"input {name!r} has no data: neither raw_input_contents, contents nor "
                "a shared memory region"
            )
        if not allow_nonfinite and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadRequest(f"input {name!r} contains NaN or Inf")
        feeds[name] = array
    if next_raw != len(raw):
        raise BadRequest(f"{len(raw)} raw_input_contents given for {next_raw} inputs that use them")
    missing = [s.name for s in signature.inputs if s.name not in feeds]
    if missing:
        raise BadRequest(f"missing inputs {missing}")
    rows = 1
    if signature.batched:
        sizes = {n: a.shape[0] for n, a in feeds.items()}
        if len(set(sizes.values())) > 1:
            raise BadRequest(f"inputs disagree on the batch size: {sizes}")
        rows = next(iter(sizes.values()))

    known = signature.output_names()
    outputs: list[str] = []
    options: dict[str, OutputOptions] = {}
    for requested in request.outputs:
        name = requested.name
        if name not in known:
            raise BadRequest(f"unknown output {name!r}; the model returns {known}")
        if name in outputs:
            raise BadRequest(f"output {name!r} is requested twice")
        outputs.append(name)
        datatype = signature.output(name).datatype
        option = output_options(name, datatype, parameters(requested.parameters), shm)
        if not option.plain:
            options[name] = option
    if not outputs:
        outputs = list(known)
    timeout = _timeout(params.get("timeout"))
    return GrpcInferRequest(request.id, feeds, rows, outputs, timeout, signature.batched, options)


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest("parameters.timeout must be a non-negative integer (microseconds)")
    return value / 1e6 if value else None


def encode_response(
    model_name: str,
    model_version: str,
    request: GrpcInferRequest,
    outputs: Feeds,
    *,
    labels: Sequence[str] = (),
) -> pb.ModelInferResponse:
    """Outputs in ``raw_output_contents``; ``labels`` name a classification's classes."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id
    )
    for name in request.outputs:
        array = finish(name, outputs[name], request.options.get(name), labels, request.batched)
        datatype = DATATYPE_OF.get(array.dtype)
        if datatype is None:
            raise InferenceFailed(f"output {name!r} has unsupported dtype {array.dtype}")
        tensor = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        where = request.options[name].shm if name in request.options else None
        if where is not None:  # written into the region; an empty entry keeps the order
            written = where.write_tensor(name, array)
            tensor.parameters[REGION].string_param = where.region.name
            tensor.parameters[BYTE_SIZE].int64_param = written
            response.raw_output_contents.append(b"")
        elif datatype == "BYTES":
            response.raw_output_contents.append(bytes_tensor.serialize(array))
        else:
            response.raw_output_contents.append(tensor_bytes(array))
    return response
