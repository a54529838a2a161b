"""Triton's binary tensor data extension, both directions.

A request body is ``<JSON header><tensor bytes>...``: the HTTP header
``Inference-Header-Content-Length`` gives the JSON part's length, and each
input sent in binary carries ``parameters.binary_data_size``; its bytes
follow the JSON in input order, row-major, little-endian. Responses use the
same framing for outputs asked in binary (``parameters.binary_data`` on the
output, or ``binary_data_output`` on the request).

Everything a client claims is checked against what it sent: a header length
past the body, a size that is not the tensor's ``prod(shape) * itemsize``,
bytes left over or missing. Each is a 400, never a short read.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from . import bytes_tensor
from .errors import BadRequest

HEADER_LENGTH = "Inference-Header-Content-Length"


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """Split ``body`` into its JSON part and its binary part."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):  # '²'.isdigit() is True
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
    n = int(text)
    if n > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
    return view[:n], view[n:]


class BinaryReader:
    """Hands out the binary part of a request, one tensor at a time, in order."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def take(self, name: str, size: object) -> memoryview:
        if type(size) is not int or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
        end = self._offset + size
        if end > len(self._data):
            raise BadRequest(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(self._data) - self._offset} bytes left)"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def finish(self) -> None:
        left = len(self._data) - self._offset
        if left:
            raise BadRequest(f"{left} bytes of binary data follow the inputs that claim them")


def tensor_from_bytes(
    name: str, chunk: memoryview, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> np.ndarray:
    """A read-only view of ``chunk`` as a tensor; the size must match exactly.
    BYTES (``object``) is read element by element (service/bytes_tensor.py)."""
    if dtype.kind == "O":
        return bytes_tensor.deserialize(name, chunk, shape)
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(chunk) != expected:
        raise BadRequest(
            f"input {name!r}: binary_data_size is {len(chunk)} bytes but shape "
            f"{list(shape)} of {dtype.name} needs {expected}"
        )
    # Triton's wire format is little-endian; '<' is a no-op on x86 and ARM.
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)


def tensor_bytes(array: np.ndarray) -> bytes:
    """Row-major little-endian bytes of ``array``; BYTES as length-prefixed elements."""
    if array.dtype.kind == "O":
        return bytes_tensor.serialize(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


class StdlibList(list[Any]):
    """Values orjson must not write (NaN and infinities, which it writes as
    null): a body holding one is written by the stdlib, as NaN / Infinity."""


_ORJSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_SUBCLASS


def dump_json(value: Any) -> bytes:
    """Compact JSON, by orjson (numpy arrays written without a Python list in
    between); anything orjson refuses or must not write, by the stdlib."""
    try:
        return orjson.dumps(value, option=_ORJSON)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), default=_plain).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_body(header: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int | None]:
    """Response body and, when binary chunks follow, the JSON header's length."""
    head = dump_json(header)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)
