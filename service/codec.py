"""Inference bodies to numpy and back: V2 JSON tensors, the binary
extension, and KServe V1 ``instances``.

Wire parsing and wire writing only: a V2 body becomes the data plane's
``WireRequest`` (service/dataplane.py checks it against the model's
signature, as it checks gRPC's, before a single value is converted), and
an ``InferResult`` becomes a V2 body. An input's data is read once its
header passed: JSON tensor data converted by numpy in one call (flat or
nested lists alike; numbers only, integer range, element count), binary
data viewed in place with ``np.frombuffer``. A header length of 0 is
Triton's raw binary request (the body is the single input's bytes).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import orjson

from . import bytes_tensor
from .batching import Feeds
from .binary import (
    HEADER_LENGTH,
    BinaryReader,
    StdlibList,
    encode_body,
    split_body,
    tensor_bytes,
)
from .binary import tensor_from_bytes as _tensor_from_bytes
from .dataplane import (
    InferRequest,
    InferResult,
    WireInput,
    WireOutput,
    WireRequest,
    check_finite,
    encode_outputs,
    region_parameters,
    validate,
    validate_inputs,
)
from .errors import MAX_INPUT_HINT, BadRequest, InputTooLarge
from .protocol import DATATYPE_OF
from .shm import Regions
from .signature import Signature, TensorSpec


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient can send either),
    refusing anything that inflates past ``limit`` (Triton's words and 400)."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"body is not valid {encoding}: {e}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise InputTooLarge(
            f"Decompressed data size exceeds the maximum allowed value of {limit} bytes. "
            f"{MAX_INPUT_HINT}"
        )
    return out


def _load_json(data: bytes | memoryview) -> Any:
    # orjson parses a 63 KB tensor body ~10x faster than json.loads (and
    # reads a memoryview without a copy); what it refuses (NaN literals,
    # integers past 64 bits, bad UTF-8, deep nesting) goes to the stdlib,
    # which accepts or refuses it as before, with its own message.
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data if isinstance(data, bytes) else bytes(data))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"malformed JSON: {e}") from None
    except RecursionError:  # [[[[...]]]] past the interpreter's depth
        raise BadRequest("malformed JSON: nested too deeply") from None


def nesting(data: list[Any]) -> int:
    """How deep lists nest along the first element (the rank of data that is not ragged)."""
    depth = 0
    value: Any = data
    while isinstance(value, list) and depth <= bytes_tensor.MAX_JSON_DEPTH:
        depth += 1
        value = value[0] if value else None
    return depth


def numbers(name: str, data: object, dtype: np.dtype[Any]) -> np.ndarray:
    """``data`` (flat or nested lists) as an array of ``dtype``, refusing
    strings, nulls, ragged lists, floats for integers and out-of-range values."""
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: data must be a list")
    if nesting(data) > 32:  # numpy builds at most 64 dimensions: flatten first
        data = bytes_tensor.flatten(name, data)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise BadRequest(f"input {name!r}: data is ragged (rows of different lengths)") from None
    kind = array.dtype.kind
    if array.size == 0:
        return np.zeros(array.shape, dtype=dtype)
    if kind not in "biuf":
        raise BadRequest(f"input {name!r}: data must hold only numbers (got {array.dtype.name})")
    if dtype.kind == "b":
        if kind != "b":
            raise BadRequest(f"input {name!r}: BOOL data must be true/false")
    elif kind == "b":
        raise BadRequest(f"input {name!r}: true/false given for {DATATYPE_OF[dtype]} data")
    elif dtype.kind in "iu":
        if kind == "f":
            raise BadRequest(f"input {name!r}: {DATATYPE_OF[dtype]} data must be integers")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise BadRequest(f"input {name!r}: values outside {DATATYPE_OF[dtype]} range")
    with np.errstate(over="ignore"):  # 1e300 as FP32 is inf, refused by the finite check
        return array.astype(dtype, copy=False)


def _object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def decode_infer(
    body: bytes, header_length: str | None, signature: Signature, **checks: Any
) -> InferRequest:
    """Parse and validate a V2 inference request (JSON or binary framing);
    ``checks``: ``dataplane.validate``'s limits and the shared-memory
    regions inputs and outputs may name."""
    return validate(parse_infer(body, header_length, signature), signature, **checks)


def parse_infer(
    body: bytes, header_length: str | None, signature: Signature, model: str = ""
) -> WireRequest:
    """A V2 request body as the data plane's ``WireRequest``: the JSON
    header and, after it, the binary part its inputs claim in order. A
    header length of 0 is Triton's raw binary request: the whole body is
    the model's single input."""
    json_part, binary_part = split_body(body, header_length)
    if header_length is not None and len(json_part) == 0:
        return _raw_request(signature, binary_part, model)
    request = _load_json(body if header_length is None else json_part)  # no copy for pure JSON
    if not isinstance(request, dict):
        raise BadRequest("the inference request must be a JSON object")
    params = _object(request.get("parameters"), "parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs must be a non-empty list")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    reader = BinaryReader(binary_part)
    return WireRequest(
        request_id,
        wire_inputs(inputs, reader),
        _wire_outputs(request.get("outputs")),
        params,
        reader.finish,
    )


def decode_inputs(
    inputs: list[Any],
    signature: Signature,
    *,
    binary: memoryview = memoryview(b""),
    max_elements: int,
    allow_nonfinite: bool,
    shm: Regions | None = None,
) -> tuple[Feeds, int]:
    """V2 request ``inputs`` (parsed JSON objects) as feeds and their batch
    size, each checked against ``signature``; ``binary`` holds the bytes of
    the inputs sent with ``binary_data_size``."""
    reader = BinaryReader(binary)
    return validate_inputs(
        wire_inputs(inputs, reader),
        signature,
        max_elements=max_elements,
        allow_nonfinite=allow_nonfinite,
        shm=shm,
        finish_wire=reader.finish,
    )


def wire_inputs(inputs: list[Any], reader: BinaryReader) -> list[WireInput]:
    """V2 request ``inputs`` (parsed JSON objects) for the data plane; each
    one's data is ``data``, or its ``binary_data_size`` bytes from ``reader``."""
    wire = []
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest("each input must be an object with a name")
        name = entry["name"]
        params = _object(entry.get("parameters"), f"input {name!r}: parameters")
        data = entry.get("data")
        size = params.get("binary_data_size")
        wire.append(
            WireInput(
                name,
                entry.get("datatype"),
                entry.get("shape"),
                params,
                data is not None or size is not None,
                partial(_read_input, name, data, size, reader),
            )
        )
    return wire


def _read_input(
    name: str,
    data: object,
    size: object,
    reader: BinaryReader,
    spec: TensorSpec,
    shape: tuple[int, ...],
) -> np.ndarray:
    if size is not None:
        if data is not None:
            raise BadRequest(f"input {name!r} has both data and binary_data_size")
        return _tensor_from_bytes(name, reader.take(name, size), spec.dtype, shape)
    if data is None:
        raise BadRequest(f"input {name!r} has neither data nor binary_data_size")
    if spec.dtype.kind == "O":  # BYTES: strings
        array = bytes_tensor.from_json(name, data, shape)
    else:
        array = numbers(name, data, spec.dtype)
    if array.size != math.prod(shape):
        raise BadRequest(
            f"input {name!r}: {array.size} values given, shape {list(shape)} "
            f"needs {math.prod(shape)}"
        )
    return array.reshape(shape)


def _wire_outputs(requested: object) -> list[WireOutput] | None:
    if requested is None:
        return None
    if not isinstance(requested, list):
        raise BadRequest("outputs must be a list")
    outputs = []
    for entry in requested:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest("each requested output must be an object with a name")
        name = entry["name"]
        outputs.append(
            WireOutput(name, _object(entry.get("parameters"), f"output {name!r}: parameters"))
        )
    return outputs


def _raw_request(signature: Signature, body: memoryview, model: str) -> WireRequest:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``):
    the body is the single input's bytes, its shape deduced as Triton does
    (batch 1; at most one variable dimension; BYTES only for shape [1], the
    body being the one element); every output comes back in binary."""
    if len(signature.inputs) != 1:
        raise BadRequest(
            "Raw request must only have 1 input (found 1) to be deduced but got "
            f"{len(signature.inputs)} inputs in {model!r} model configuration"
        )
    spec = signature.inputs[0]
    dims = list(spec.shape[1:] if signature.batched else spec.shape)
    variable = [i for i, d in enumerate(dims) if d < 0]
    fixed = math.prod(d for d in dims if d >= 0)
    data: bytes | memoryview = body
    if spec.datatype == "BYTES":
        if variable or fixed != 1:
            raise BadRequest(
                f"For BYTE datatype raw input {spec.name!r}, the model must have input shape [1]"
            )
        data = bytes_tensor.LENGTH.pack(len(body)) + bytes(body)
    else:
        if len(variable) > 1:
            raise BadRequest(
                f"The shape of the raw input {spec.name!r} can not be deduced because there "
                "are more than one variable-sized dimension"
            )
        if variable:
            dims[variable[0]] = len(body) // max(1, fixed * spec.dtype.itemsize)
    shape = [1, *dims] if signature.batched else dims
    reader = BinaryReader(memoryview(data))
    params = {"binary_data_size": len(data)}
    read = partial(_read_input, spec.name, None, len(data), reader)
    wire = WireInput(spec.name, spec.datatype, shape, params, True, read)
    return WireRequest(None, [wire], None, {"binary_data_output": True}, reader.finish)


def json_data(array: np.ndarray) -> Any:
    """An output's flat JSON ``data``: the numpy array itself, written by
    orjson without a Python list in between (float32 in its shortest
    round-trip form); BYTES as strings; non-finite floats as a list, which
    the writer renders as NaN / Infinity like the stdlib."""
    if array.dtype.kind == "O":
        return bytes_tensor.to_json(array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return StdlibList(array.ravel().tolist())
    if array.dtype.byteorder == ">" or array.dtype == np.float16:
        return array.ravel().tolist()
    return np.ascontiguousarray(array.ravel())


def encode_result(result: InferResult, binary_default: bool) -> tuple[bytes, dict[str, str]]:
    """V2 response body and headers; binary outputs follow the JSON header
    (an output's ``binary_data``, else the request's ``binary_data_output``)."""
    header: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
    }
    if result.id is not None:
        header["id"] = result.id
    entries = []
    chunks: list[bytes] = []
    for tensor in result.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if tensor.region is not None:  # written into the region; the response says where
            entry["parameters"] = region_parameters(tensor)
        elif tensor.parameters.get("binary_data", binary_default) is True:
            raw = tensor_bytes(tensor.array)
            chunks.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = json_data(tensor.array)
        entries.append(entry)
    header["outputs"] = entries
    body, json_length = encode_body(header, chunks)
    if json_length is None:
        return body, {"Content-Type": "application/json"}
    return body, {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(json_length),
    }


def encode_infer(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Feeds,
    *,
    labels: Sequence[str] = (),
) -> tuple[bytes, dict[str, str]]:
    """V2 response body and headers for ``outputs`` of ``request``;
    ``labels`` name the classes of a classification output."""
    tensors = encode_outputs(request, outputs, labels)
    result = InferResult(model_name, model_version, request.id, tensors)
    return encode_result(result, request.parameters.get("binary_data_output") is True)


# --- KServe V1 ---------------------------------------------------------------


def decode_v1(body: bytes, signature: Signature, *, allow_nonfinite: bool) -> tuple[Feeds, int]:
    """``{"instances": [...]}`` as feeds: one row per instance; an instance is
    the input's value, or an object naming each input when there are several."""
    request = _load_json(body)
    if not isinstance(request, dict) or not isinstance(request.get("instances"), list):
        raise BadRequest('the request must be {"instances": [...]}')
    instances = request["instances"]
    if not instances:
        raise BadRequest("instances is empty")
    if not signature.batched:
        raise BadRequest("V1 predict needs a model with a batch dimension; use V2 infer")
    columns: dict[str, list[Any]]
    if len(signature.inputs) == 1:
        columns = {signature.inputs[0].name: instances}
    else:
        if not all(isinstance(i, dict) for i in instances):
            raise BadRequest("this model has several inputs: each instance must be an object")
        columns = {}
        for spec in signature.inputs:
            if not all(spec.name in i for i in instances):
                raise BadRequest(f"an instance lacks input {spec.name!r}")
            columns[spec.name] = [i[spec.name] for i in instances]
    feeds: Feeds = {}
    for spec in signature.inputs:
        array = numbers(spec.name, columns[spec.name], spec.dtype)
        signature.check_input(spec.name, spec.datatype, list(array.shape), array.size or 1)
        if not allow_nonfinite:
            check_finite(spec.name, array)
        feeds[spec.name] = array
    return feeds, len(instances)


def encode_v1(outputs: Feeds, names: list[str]) -> bytes:
    if len(names) == 1:
        predictions: list[Any] = outputs[names[0]].tolist()
    else:
        columns = {n: outputs[n].tolist() for n in names}
        rows = len(next(iter(columns.values())))
        predictions = [{n: columns[n][i] for n in names} for i in range(rows)]
    return json.dumps({"predictions": predictions}, separators=(",", ":")).encode()
