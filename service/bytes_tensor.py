"""BYTES tensors: the Open Inference Protocol's strings, in every encoding.

- JSON: ``"data": ["a", "b"]``, one string per element, row-major;
- binary (HTTP's binary extension, gRPC's ``raw_input_contents``, shared
  memory): each element as a 4-byte little-endian length, then its bytes;
- gRPC typed contents: ``bytes_contents``, one bytes value per element.

In memory a BYTES tensor is a numpy array of ``object`` holding ``str``,
which is what ONNX Runtime takes and returns for ``tensor(string)``. ONNX
strings are UTF-8, so an element that is not valid UTF-8 is refused (400)
rather than handed to the model. Every length is checked against the bytes
actually there: a length past the end, bytes left over, or a count of
elements that is not the shape's are 400s, never a short read.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import BadRequest

OBJECT = np.dtype(object)
LENGTH = struct.Struct("<I")  # each element's length prefix
_LENGTH = LENGTH
# Triton's limit on nested JSON arrays in tensor data (HTTP_MAX_JSON_NESTING_DEPTH).
MAX_JSON_DEPTH = 100


class StringCount(BadRequest):
    """Length-prefixed BYTES elements that are not the count the shape
    gives: Triton's words, which name the model (``for_model``)."""

    def __init__(self, name: str, expected: int, got: int) -> None:
        self.input, self.expected, self.got = name, expected, got
        super().__init__(self.for_model(""))

    def for_model(self, model: str) -> str:
        where = f"inference input {self.input!r}" + (f" for model {model!r}" if model else "")
        if self.got > self.expected:  # Triton stops at the first element too many
            return (
                f"unexpected number of string elements {self.got} for {where}, "
                f"expecting {self.expected}"
            )
        return f"expected {self.expected} string elements for {where}, got {self.got}"


def is_bytes(dtype: np.dtype[Any]) -> bool:
    return dtype == OBJECT


def _text(name: str, value: bytes | bytearray | memoryview, index: int) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"input {name!r}: element {index} is not valid UTF-8") from None


def from_elements(name: str, elements: Sequence[str], shape: Sequence[int]) -> np.ndarray:
    """A BYTES tensor of ``shape`` from its elements, row-major."""
    count = math.prod(shape)
    if len(elements) != count:
        raise BadRequest(
            f"input {name!r}: {len(elements)} elements given, shape {list(shape)} needs {count}"
        )
    array = np.empty(len(elements), dtype=OBJECT)
    array[:] = list(elements)
    return array.reshape(tuple(shape))


def from_values(name: str, values: Iterable[bytes], shape: Sequence[int]) -> np.ndarray:
    """From gRPC ``bytes_contents``: one bytes value per element."""
    return from_elements(name, [_text(name, v, i) for i, v in enumerate(values)], shape)


def flatten(name: str, data: list[Any]) -> list[Any]:
    """The values of nested JSON lists, row-major, without recursion; lists
    nested as deep as Triton's limit are refused with its message."""
    flat: list[Any] = []
    stack: list[tuple[object, int]] = [(item, 1) for item in reversed(data)]
    while stack:  # depth-first, row-major
        item, depth = stack.pop()
        if depth >= MAX_JSON_DEPTH:
            raise BadRequest(
                f"input {name!r}: JSON nesting depth exceeds maximum allowed limit "
                f"({MAX_JSON_DEPTH})"
            )
        if isinstance(item, list):
            stack.extend((inner, depth + 1) for inner in reversed(item))
        else:
            flat.append(item)
    return flat


def from_json(name: str, data: object, shape: Sequence[int]) -> np.ndarray:
    """From JSON ``data``: strings, as a flat or nested list."""
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: data must be a list")
    flat = flatten(name, data)
    if not all(isinstance(item, str) for item in flat):
        raise BadRequest(f"input {name!r}: BYTES data must hold only strings")
    return from_elements(name, flat, shape)


def deserialize(name: str, chunk: bytes | memoryview, shape: Sequence[int]) -> np.ndarray:
    """From length-prefixed elements; the chunk must hold exactly ``prod(shape)``."""
    view = memoryview(chunk).cast("B")
    count = math.prod(shape)
    elements: list[str] = []
    offset = 0
    end = len(view)
    while offset < end:
        if len(elements) == count and end - offset >= 4:
            raise StringCount(name, count, count + 1)
        if len(elements) == count:
            raise BadRequest(
                f"input {name!r}: {end - offset} bytes follow the {count} elements of "
                f"shape {list(shape)}"
            )
        if end - offset < 4:
            raise BadRequest(f"input {name!r}: element {len(elements)} has a truncated length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if length > end - offset:
            raise BadRequest(
                f"input {name!r}: element {len(elements)} claims {length} bytes, "
                f"{end - offset} are left"
            )
        elements.append(_text(name, view[offset : offset + length], len(elements)))
        offset += length
    if len(elements) != count:
        raise StringCount(name, count, len(elements))
    return from_elements(name, elements, shape)


def element_bytes(value: object) -> bytes:
    """One element of an output as bytes: str as UTF-8, bytes as they are."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")


def serialize(array: np.ndarray) -> bytes:
    """Length-prefixed elements, row-major."""
    parts: list[bytes] = []
    for value in array.ravel():
        raw = element_bytes(value)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def to_json(array: np.ndarray) -> list[str]:
    """Elements as JSON strings (bytes that are not UTF-8 are decoded with
    replacement: JSON cannot carry them; ask for binary output instead)."""
    return [
        v if isinstance(v, str) else element_bytes(v).decode("utf-8", "replace")
        for v in array.ravel()
    ]


def to_values(array: np.ndarray) -> list[bytes]:
    """Elements for gRPC ``bytes_contents``."""
    return [element_bytes(v) for v in array.ravel()]
