"""Inference bodies to numpy and back: V2 JSON tensors, the binary
extension, and KServe V1 ``instances``.

Each input is checked against the model's signature before a single value
is converted: name, datatype, shape (rank, fixed dimensions, batch size),
then the data: element count, numbers only, integer range, finite floats.
JSON tensor data is converted by numpy in one call (flat or nested lists
alike); binary data is viewed in place with ``np.frombuffer``.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from .errors import BadRequest, InferenceFailed, PayloadTooLarge
from .outputs import OutputOptions, finish, output_options
from .protocol import DATATYPE_OF
from .shm import BYTE_SIZE, REGION, Regions, Slice, no_shared_memory
from .signature import Signature


@dataclass
class InferRequest:
    id: str | None
    feeds: Feeds
    rows: int  # batch size (1 for models without a batch axis)
    outputs: list[tuple[str, bool]]  # (name, binary) in response order
    timeout_s: float | None  # from parameters.timeout (microseconds)
    batched: bool = False  # the model has a batch axis (classification is per row)
    options: dict[str, OutputOptions] = field(default_factory=dict)  # outputs asked more of


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient can send either),
    refusing anything that inflates past ``limit``."""
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
        raise PayloadTooLarge(f"decompressed body is over {limit} bytes")
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


def numbers(name: str, data: object, dtype: np.dtype[Any]) -> np.ndarray:
    """``data`` (flat or nested lists) as an array of ``dtype``, refusing
    strings, nulls, ragged lists, floats for integers and out-of-range values."""
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: data must be a list")
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


def _check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input {name!r} contains NaN or Inf")


def decode_infer(
    body: bytes,
    header_length: str | None,
    signature: Signature,
    *,
    max_elements: int,
    allow_nonfinite: bool,
    shm: Regions | None = None,
) -> InferRequest:
    """Parse and validate a V2 inference request (JSON or binary framing);
    ``shm`` holds the shared-memory regions inputs and outputs may name."""
    json_part, binary_part = split_body(body, header_length)
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
    feeds, rows = decode_inputs(
        inputs,
        signature,
        binary=binary_part,
        max_elements=max_elements,
        allow_nonfinite=allow_nonfinite,
        shm=shm,
    )
    binary_default = params.get("binary_data_output") is True
    outputs, options = _requested_outputs(request.get("outputs"), signature, binary_default, shm)
    timeout = _timeout(params.get("timeout"))
    return InferRequest(request_id, feeds, rows, outputs, timeout, signature.batched, options)


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
    feeds: Feeds = {}
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest("each input must be an object with a name")
        name = entry["name"]
        if name in feeds:
            raise BadRequest(f"input {name!r} is given twice")
        spec, shape = signature.check_input(
            name, entry.get("datatype"), entry.get("shape"), max_elements
        )
        in_params = _object(entry.get("parameters"), f"input {name!r}: parameters")
        size = in_params.get("binary_data_size")
        where = _shm_slice(f"input {name!r}", in_params, shm)
        if where is not None:
            if entry.get("data") is not None or size is not None:
                raise BadRequest(f"input {name!r} has data besides its shared memory region")
            array = where.read_tensor(name, spec.dtype, shape)
        elif size is not None:
            if entry.get("data") is not None:
                raise BadRequest(f"input {name!r} has both data and binary_data_size")
            array = _tensor_from_bytes(name, reader.take(name, size), spec.dtype, shape)
        else:
            if entry.get("data") is None:
                raise BadRequest(f"input {name!r} has neither data nor binary_data_size")
            if spec.dtype.kind == "O":  # BYTES: strings
                array = bytes_tensor.from_json(name, entry["data"], shape)
            else:
                array = numbers(name, entry["data"], spec.dtype)
            if array.size != math.prod(shape):
                raise BadRequest(
                    f"input {name!r}: {array.size} values given, shape {list(shape)} "
                    f"needs {math.prod(shape)}"
                )
            array = array.reshape(shape)
        if not allow_nonfinite:
            _check_finite(name, array)
        feeds[name] = array
    reader.finish()

    missing = [s.name for s in signature.inputs if s.name not in feeds]
    if missing:
        raise BadRequest(f"missing inputs {missing}")
    rows = 1
    if signature.batched:
        sizes = {name: a.shape[0] for name, a in feeds.items()}
        if len(set(sizes.values())) > 1:
            raise BadRequest(f"inputs disagree on the batch size: {sizes}")
        rows = next(iter(sizes.values()))
    return feeds, rows


def _shm_slice(tensor: str, params: dict[str, Any], shm: Regions | None) -> Slice | None:
    if shm is None:
        no_shared_memory(tensor, params)
        return None
    return shm.slice(tensor, params)


def _requested_outputs(
    requested: object,
    signature: Signature,
    binary_default: bool,
    shm: Regions | None = None,
) -> tuple[list[tuple[str, bool]], dict[str, OutputOptions]]:
    if requested is None:
        return [(name, binary_default) for name in signature.output_names()], {}
    if not isinstance(requested, list):
        raise BadRequest("outputs must be a list")
    known = signature.output_names()
    outputs = []
    options: dict[str, OutputOptions] = {}
    for entry in requested:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest("each requested output must be an object with a name")
        name = entry["name"]
        if name not in known:
            raise BadRequest(f"unknown output {name!r}; the model returns {known}")
        params = _object(entry.get("parameters"), f"output {name!r}: parameters")
        option = output_options(name, signature.output(name).datatype, params, shm)
        if not option.plain:
            options[name] = option
        binary = params.get("binary_data", binary_default)
        outputs.append((name, binary is True))
    return outputs, options


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise BadRequest("parameters.timeout must be a non-negative integer (microseconds)")
    return value / 1e6 if value else None


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


def encode_infer(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Feeds,
    *,
    labels: Sequence[str] = (),
) -> tuple[bytes, dict[str, str]]:
    """V2 response body and headers; binary outputs follow the JSON header.
    ``labels`` name the classes of a classification output."""
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        header["id"] = request.id
    entries = []
    chunks: list[bytes] = []
    for name, binary in request.outputs:
        array = finish(name, outputs[name], request.options.get(name), labels, request.batched)
        datatype = DATATYPE_OF.get(array.dtype)
        if datatype is None:
            raise InferenceFailed(f"output {name!r} has unsupported dtype {array.dtype}")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        where = request.options[name].shm if name in request.options else None
        if where is not None:  # written into the region; the response says where
            written = where.write_tensor(name, array)
            entry["parameters"] = {REGION: where.region.name, BYTE_SIZE: written}
        elif binary:
            raw = tensor_bytes(array)
            chunks.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = json_data(array)
        entries.append(entry)
    header["outputs"] = entries
    body, json_length = encode_body(header, chunks)
    if json_length is None:
        return body, {"Content-Type": "application/json"}
    return body, {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(json_length),
    }


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
            _check_finite(spec.name, array)
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
