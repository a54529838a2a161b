"""gRPC inference messages to numpy and back (``inference.ModelInferRequest``).

Wire parsing and wire writing only: the request becomes the data plane's
``WireRequest`` (service/dataplane.py), which checks it as it checks HTTP's,
in the same order and with the same messages. An input's data is, in
Triton's order of precedence:

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
from functools import partial
from typing import Any

import numpy as np

from . import bytes_tensor
from .batching import Feeds
from .binary import tensor_bytes, tensor_from_bytes
from .dataplane import (
    InferRequest,
    InferResult,
    WireInput,
    WireOutput,
    WireRequest,
    encode_outputs,
    validate,
)
from .errors import BadRequest
from .proto import grpc_service_pb2 as pb
from .protocol import DATATYPES
from .shm import BYTE_SIZE, REGION
from .signature import Signature, TensorSpec

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
    request: pb.ModelInferRequest, signature: Signature, **checks: Any
) -> InferRequest:
    """Parse and validate a ``ModelInferRequest``; ``checks``: ``dataplane.validate``'s
    limits and the shared-memory regions inputs and outputs may name."""
    return validate(parse_request(request), signature, **checks)


class _RawContents:
    """Hands out ``raw_input_contents`` to the inputs that use them, in order."""

    def __init__(self, raw: Sequence[bytes]) -> None:
        self.raw = raw
        self.used = 0

    def read(self, name: str, has_contents: bool, contents: pb.InferTensorContents,
             spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:  # fmt: skip
        if has_contents:
            return _typed(name, spec.datatype, contents, shape)
        if self.used < len(self.raw):
            self.used += 1
            return _raw(name, spec.dtype, self.raw[self.used - 1], shape)
        raise BadRequest(
            f"input {name!r} has no data: neither raw_input_contents, contents nor "
            "a shared memory region"
        )

    def finish(self) -> None:
        if self.used != len(self.raw):
            raise BadRequest(
                f"{len(self.raw)} raw_input_contents given for {self.used} inputs that use them"
            )


def parse_request(request: pb.ModelInferRequest) -> WireRequest:
    """A ``ModelInferRequest`` as the data plane's ``WireRequest``."""
    raw = _RawContents(request.raw_input_contents)
    inputs = []
    for tensor in request.inputs:
        has_contents = tensor.HasField("contents") and bool(tensor.contents.ListFields())
        if has_contents and raw.raw:  # Triton's rule: raw contents for every input, or none
            raise BadRequest(
                "contents field must not be specified when using raw_input_contents "
                f"for {tensor.name!r} for model {request.model_name!r}"
            )
        read = partial(raw.read, tensor.name, has_contents, tensor.contents)
        shape = list(tensor.shape)
        inputs.append(
            WireInput(
                tensor.name,
                tensor.datatype,
                shape,
                parameters(tensor.parameters),
                has_contents,
                read,
            )
        )
    outputs = [WireOutput(o.name, parameters(o.parameters)) for o in request.outputs]
    return WireRequest(
        request.id, inputs, outputs or None, parameters(request.parameters), raw.finish
    )


def encode_result(result: InferResult) -> pb.ModelInferResponse:
    """Outputs in ``raw_output_contents``, one entry per output in order (an
    empty one for an output written into shared memory)."""
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id or ""
    )
    for tensor in result.outputs:
        entry = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.region is not None:  # written into the region; the entry says where
            entry.parameters[REGION].string_param = tensor.region
            entry.parameters[BYTE_SIZE].int64_param = tensor.written
            response.raw_output_contents.append(b"")
        else:
            response.raw_output_contents.append(tensor_bytes(tensor.array))
    return response


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Feeds,
    *,
    labels: Sequence[str] = (),
) -> pb.ModelInferResponse:
    """Outputs in ``raw_output_contents``; ``labels`` name a classification's classes."""
    tensors = encode_outputs(request, outputs, labels)
    return encode_result(InferResult(model_name, model_version, request.id, tensors))
