"""Triton's system shared memory extension: tensors through POSIX shared
memory instead of the request and response bodies, for clients on the
same host (``tritonclient.utils.shared_memory``).

A client creates a region (``shm_open`` under a key such as
``/input_simple``, i.e. ``/dev/shm/input_simple``), registers it by name
with its key, an offset into it and a byte size, then names it in an
input's or output's parameters (``shared_memory_region``,
``shared_memory_byte_size``, ``shared_memory_offset``): the input is read
from the region, the output written into it, and the response carries only
its datatype and shape.

Every access is checked, never trusted: the key must name a regular file
directly under ``/dev/shm`` (no path, no link); offset and byte size must
lie inside the file at registration and inside the registered range at
every use; the file's size is checked again before each access, so a
region truncated behind the server's back is a 400, not a SIGBUS; an input
must fill exactly the bytes its shape needs, an output must fit. Each region
is mapped once when registered and unmapped when unregistered and at
shutdown. Registrations belong to the process: with ``--workers N`` each
worker has its own (docs/service.md).
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import bytes_tensor
from .binary import tensor_bytes, tensor_from_bytes
from .errors import BadRequest, NotFound

SHM_ROOT = Path("/dev/shm")
MAX_REGIONS = 1024  # each holds a file descriptor and a mapping
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{what} must be a non-negative integer")
    return value


class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the file ``key``."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int, root: Path) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        stem = key[1:] if key.startswith("/") else key
        if not stem or "/" in stem or stem in (".", "..") or "\0" in stem:
            raise BadRequest(
                f"shared memory key {key!r} must name one object (such as '/input0'), not a path"
            )
        if byte_size == 0:
            raise BadRequest(f"shared memory region {name!r}: byte_size must be positive")
        path = root / stem
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BadRequest(
                f"unable to open shared memory region {name!r}: no shared memory object {key!r}"
            ) from None
        except OSError as e:
            raise BadRequest(
                f"unable to open shared memory region {name!r} ({key!r}): {e.strerror}"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadRequest(f"shared memory key {key!r} is not a shared memory object")
            if offset + byte_size > info.st_size:
                raise BadRequest(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} "
                    f"is past the end of {key!r} ({info.st_size} bytes)"
                )
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._skip = offset - start
            self._map = mmap.mmap(fd, self._skip + byte_size, offset=start)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def _span(self, offset: int, size: int, what: str) -> tuple[int, int]:
        if offset + size > self.byte_size:
            raise BadRequest(
                f"{what}: offset {offset} + byte size {size} is past the end of shared "
                f"memory region {self.name!r} ({self.byte_size} bytes)"
            )
        if os.fstat(self._fd).st_size < self.offset + self.byte_size:  # truncated since
            raise BadRequest(
                f"{what}: shared memory region {self.name!r} is smaller than when it was "
                "registered; register it again"
            )
        start = self._skip + offset
        return start, start + size

    def read(self, offset: int, size: int, what: str) -> bytes:
        a, b = self._span(offset, size, what)
        return self._map[a:b]

    def write(self, offset: int, data: bytes, what: str) -> None:
        a, b = self._span(offset, len(data), what)
        self._map[a:b] = data

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


@dataclass(frozen=True)
class Slice:
    """Where one tensor of a request lies: ``byte_size`` bytes at ``offset`` of a region."""

    region: Region
    offset: int
    byte_size: int

    def read_tensor(self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        data = self.region.read(self.offset, self.byte_size, f"input {name!r}")
        if bytes_tensor.is_bytes(dtype):
            return bytes_tensor.deserialize(name, data, shape)
        try:
            return tensor_from_bytes(name, memoryview(data), dtype, shape)
        except BadRequest as e:
            raise BadRequest(
                e.message.replace("binary_data_size is", f"{BYTE_SIZE} is", 1)
            ) from None

    def write_tensor(self, name: str, array: np.ndarray) -> int:
        data = tensor_bytes(array)
        if len(data) > self.byte_size:
            raise BadRequest(
                f"output {name!r} needs {len(data)} bytes; {BYTE_SIZE} {self.byte_size} "
                f"of shared memory region {self.region.name!r} is too small"
            )
        self.region.write(self.offset, data, f"output {name!r}")
        return len(data)


class SharedMemory:
    """The regions registered with this process, by name."""

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self.root = root
        self._regions: dict[str, Region] = {}

    def register(self, name: object, key: object, offset: object, byte_size: object) -> None:
        if not isinstance(name, str) or not name:
            raise BadRequest("a shared memory region needs a name")
        if not isinstance(key, str) or not key:
            raise BadRequest(f"shared memory region {name!r} needs a key")
        offset = _count(offset, "offset")
        byte_size = _count(byte_size, "byte_size")
        if name in self._regions:
            raise BadRequest(f"shared memory region {name!r} is already registered")
        if len(self._regions) >= MAX_REGIONS:
            raise BadRequest(f"{MAX_REGIONS} shared memory regions are registered; unregister some")
        if not self.root.is_dir():
            raise BadRequest(f"system shared memory needs {self.root} (Linux)")
        self._regions[name] = Region(name, key, offset, byte_size, self.root)

    def unregister(self, name: str | None = None) -> None:
        """Unmap ``name``, or every region when None (or empty)."""
        if not name:
            for region in self._regions.values():
                region.close()
            self._regions.clear()
            return
        if name not in self._regions:
            raise NotFound(f"no shared memory region {name!r} is registered")
        self._regions.pop(name).close()

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name:
            region = self._regions.get(name)
            if region is None:
                raise NotFound(f"no shared memory region {name!r} is registered")
            return [region.status()]
        return [r.status() for r in self._regions.values()]

    def close(self) -> None:
        self.unregister()

    def slice(self, tensor: str, params: dict[str, Any]) -> Slice | None:
        """The region a tensor's parameters name (None when they name none)."""
        name = params.get(REGION)
        if name is None:
            return None
        if not isinstance(name, str):
            raise BadRequest(f"{tensor}: {REGION} must be a string")
        region = self._regions.get(name)
        if region is None:
            raise BadRequest(f"{tensor}: unable to find system shared memory region {name!r}")
        size = params.get(BYTE_SIZE)
        if size is None:
            raise BadRequest(f"{tensor}: {BYTE_SIZE} is required with {REGION}")
        size = _count(size, f"{tensor}: {BYTE_SIZE}")
        offset = _count(params.get(OFFSET, 0), f"{tensor}: {OFFSET}")
        if offset + size > region.byte_size:
            raise BadRequest(
                f"{tensor}: {OFFSET} {offset} + {BYTE_SIZE} {size} is past the end of "
                f"shared memory region {name!r} ({region.byte_size} bytes)"
            )
        return Slice(region, offset, size)


def no_shared_memory(tensor: str, params: dict[str, Any]) -> None:
    """Where shared memory cannot be used (parity, V1): refuse it clearly."""
    if params.get(REGION) is not None:
        raise BadRequest(f"{tensor}: shared memory is not accepted here; use V2 infer")
