"""Triton's ``model_warmup``: the samples a model runs before it is ready.

Each sample (``name``, ``batch_size``, ``inputs``, ``count``) gives every
input it feeds a ``data_type``, ``dims`` (without the batch dimension, as
the configuration's) and one of

- ``zero_data``: zeros (BYTES: empty strings, a length prefix of 0 each);
- ``random_data``: random values (BYTES: empty strings, as Triton does);
- ``input_data_file``: raw bytes, row-major, read from the model folder's
  ``warmup/`` subfolder through the repository's file reader (inside the
  folder, a regular file, no link out); BYTES elements are each a 4-byte
  little-endian length and the bytes (UTF-8 text, as bnfold holds BYTES).
  Extra bytes are ignored; too few is Triton's error.

A sample runs ``count`` times (0: once; at most 1000), its tensors no
larger than the model size limit. A sample that does not fit the
model, or a run that fails, fails the load, as in Triton.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.contract import ContractError, ModelConfig

from .files import read_file
from .ort_settings import as_int
from .runtime import WarmupSample
from .signature import Signature, TensorSpec
from .triton_config import datatype_of

WARMUP_DIR = "warmup"  # Triton's: <model>/warmup/<input_data_file>
SEED = 0
MAX_COUNT = 1000  # runs per sample: a load must end (Triton has no bound)


def warmup_samples(
    config: ModelConfig, signature: Signature, model_dir: Path, *, max_bytes: int
) -> list[WarmupSample]:
    """The model's ``model_warmup`` as feeds; ``ContractError`` naming the
    sample and input that do not fit."""
    samples = []
    rng = np.random.default_rng(SEED)
    for i, raw in enumerate(config.model_warmup):
        where = f"model_warmup[{i}]"
        if not isinstance(raw, dict):
            raise ContractError(f"{where} must be an object")
        name = str(raw.get("name") or where)
        batch = as_int(raw.get("batch_size", 0), f"{name}: batch_size")
        count = max(as_int(raw.get("count", 0), f"{name}: count"), 1)
        if count > MAX_COUNT:
            raise ContractError(f"warmup setting '{name}': count {count} is over {MAX_COUNT}")
        if signature.batched and not 1 <= batch <= signature.max_batch_size:
            raise ContractError(
                f"warmup setting '{name}': batch_size {batch} is outside "
                f"1..{signature.max_batch_size}"
            )
        if not signature.batched and batch > 1:
            raise ContractError(
                f"warmup setting '{name}': batch_size {batch} for a model that does not batch"
            )
        inputs = raw.get("inputs", {})
        if not isinstance(inputs, dict):
            raise ContractError(f"warmup setting '{name}': inputs must be an object")
        feeds = {}
        for input_name, spec_raw in inputs.items():
            spec = _spec(signature, name, input_name)
            feeds[input_name] = _feed(
                spec_raw,
                spec,
                batch if signature.batched else None,
                model_dir,
                rng,
                name,
                max_bytes,
            )
        missing = signature.missing_inputs(feeds)
        if missing:
            raise ContractError(f"warmup setting '{name}': no data for inputs {missing}")
        samples.append(WarmupSample(name, feeds, count))
    return samples


def _spec(signature: Signature, sample: str, name: str) -> TensorSpec:
    for spec in signature.inputs:
        if spec.name == name:
            return spec
    raise ContractError(f"warmup setting '{sample}': unexpected input '{name}'")


def _feed(
    raw: Any,
    spec: TensorSpec,
    batch: int | None,
    model_dir: Path,
    rng: np.random.Generator,
    sample: str,
    max_bytes: int,
) -> np.ndarray:
    where = f"warmup setting '{sample}', input '{spec.name}'"
    if not isinstance(raw, dict):
        raise ContractError(f"{where} must be an object")
    datatype = datatype_of(str(raw.get("data_type", "TYPE_INVALID")))
    if datatype != spec.datatype:
        raise ContractError(f"{where}: data_type {datatype} but the model expects {spec.datatype}")
    given = raw.get("dims", [])
    if not isinstance(given, list):
        raise ContractError(f"{where}: dims must be a list")
    dims = [as_int(d, f"{where}: dims") for d in given]
    wire = list(spec.shape[1:] if batch is not None else spec.shape)
    if len(dims) != len(wire) or any(
        w not in (-1, d) or d < 0 for d, w in zip(dims, wire, strict=True)
    ):
        raise ContractError(f"{where}: dims {dims} do not match the model's {wire} (-1: any)")
    shape = ([batch] if batch is not None else []) + dims
    if math.prod(shape) * max(spec.dtype.itemsize, 4) > max_bytes:
        raise ContractError(f"{where}: dims {dims} are over the {max_bytes}-byte limit")
    kinds = [k for k in ("zero_data", "random_data", "input_data_file") if k in raw]
    if len(kinds) != 1:
        raise ContractError(f"{where}: give one of zero_data, random_data, input_data_file")
    dtype = spec.dtype
    if kinds[0] == "input_data_file":
        path = model_dir / WARMUP_DIR / str(raw["input_data_file"])
        try:
            data = read_file(path, root=model_dir / WARMUP_DIR, max_bytes=max_bytes)
        except ValueError as e:
            raise ContractError(f"{where}: {e}") from None
        return _from_bytes(data, shape, spec, where, path.name)
    if dtype.kind == "O":  # BYTES: empty strings either way, as Triton's
        return np.full(shape, "", dtype=object)
    if kinds[0] == "zero_data":
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, 10, size=shape).astype(dtype)


def _from_bytes(
    data: bytes, shape: list[int], spec: TensorSpec, where: str, filename: str
) -> np.ndarray:
    count = math.prod(shape)
    if spec.dtype.kind != "O":
        need = count * spec.dtype.itemsize
        if len(data) < need:
            raise ContractError(
                f"{where}: expects {need} bytes, but the data provided from "
                f"{filename} only has {len(data)} bytes"
            )
        return np.frombuffer(data[:need], dtype=spec.dtype.newbyteorder("<")).reshape(shape)
    items: list[str] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(data):
            raise ContractError(f"{where}: {filename} holds fewer than {count} strings")
        (size,) = struct.unpack_from("<I", data, at)
        if at + 4 + size > len(data):
            raise ContractError(f"{where}: {filename} holds fewer than {count} strings")
        try:  # in memory a BYTES element is text (service/bytes_tensor.py)
            items.append(data[at + 4 : at + 4 + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise ContractError(
                f"{where}: string {len(items)} of {filename} is not UTF-8"
            ) from None
        at += 4 + size
    out = np.empty(count, dtype=object)
    out[:] = items
    return out.reshape(shape)
