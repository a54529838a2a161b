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

The client owns the object and may do anything to it at any time, so every
access is checked, never trusted:

- the key must name one object directly under ``/dev/shm`` (no path, no
  link, a regular file); offset and byte size must lie inside it at
  registration and inside the registered range at every use;
- the object is never mapped: a region is an open file descriptor, read
  with ``preadv`` and written with ``pwrite``. A read past the end of an
  object truncated behind the server's back returns short (a 400 for that
  request) where a mapping would raise SIGBUS and kill the process;
- an input's declared byte size is compared with what its shape needs
  before a byte is read, so a request never copies more than the tensor;
- regions are reference-counted (Triton's lifetime rule): each request
  holds the regions it names for as long as it runs (``SharedMemory.
  request``); unregistering removes the name at once for new requests and
  closes the descriptor when the last request using it finishes. Unregister
  of a name that is not registered succeeds, as in Triton.

Error messages are Triton's (``src/shared_memory_manager.cc`` and its HTTP
and gRPC front ends), so clients written against Triton read the same text.
Registrations belong to the process: with ``--workers N`` each worker has
its own (docs/service.md).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import bytes_tensor
from .binary import tensor_bytes
from .errors import BadRequest, NotFound, ShmUnopenable, Unimplemented

SHM_ROOT = Path("/dev/shm")
# Keys Triton keeps for its Python backend's own regions; refused as Triton does.
RESERVED_PREFIX = "triton_python_backend_shm_region_"
MAX_REGIONS = 1024  # each holds a file descriptor
# A BYTES input's size cannot be derived from its shape; this bounds what one
# such input may make the server read (numeric inputs need exactly their shape).
MAX_BYTES_INPUT = 1 << 30
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
# Triton's words when client shared memory is off (its --allow-client-shm).
DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm' "
    "(BNFOLD_ALLOW_CLIENT_SHM=true) to enable."
)


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"Unable to parse '{what}'")
    return value


class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the object ``key``,
    held open by its descriptor while registered or in use."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int, root: Path) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._users = 0
        self._gone = False  # unregistered: closes when the last user is done
        stem = key.lstrip("/")
        if not stem:
            raise BadRequest(
                f"cannot register shared memory region '{name}' - invalid shm key '{key}'"
            )
        if stem.startswith(RESERVED_PREFIX):
            raise BadRequest(
                f"cannot register shared memory region '{name}' with key '{key}' as the key "
                f"contains the reserved prefix '{RESERVED_PREFIX}'"
            )
        # shm_open refuses a name with a slash in it; links and other files are
        # refused with the same words, so the reply says nothing of what is there.
        cannot_open = ShmUnopenable(key)
        if "/" in stem or stem in (".", "..") or "\0" in stem:
            raise cannot_open
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(root / stem, flags)
        except OSError:
            raise cannot_open from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise cannot_open
            if byte_size == 0 or offset + byte_size > os.fstat(fd).st_size:
                raise BadRequest(f"failed to register shared memory region '{name}': invalid args")
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

    def _invalid(self) -> BadRequest:
        # The object is smaller than when it was registered (Triton's words
        # for a region whose size cannot be trusted).
        return BadRequest(f"Invalid shared memory region: '{self.key}'")

    def read(self, offset: int, size: int) -> bytearray:
        """``size`` bytes at ``offset`` of the region; a 400 if the object is shorter now."""
        buf = bytearray(size)
        view = memoryview(buf)
        done, start = 0, self.offset + offset
        while done < size:
            try:
                n = os.preadv(self._fd, [view[done:]], start + done)
            except OSError:
                raise self._invalid() from None
            if n <= 0:  # end of the object: truncated behind the server's back
                raise self._invalid()
            done += n
        return buf

    def write(self, offset: int, data: bytes) -> None:
        """``data`` at ``offset`` of the region; a 400 if the object is shorter now.
        (Should it shrink between the check and the write, ``pwrite`` extends it:
        no signal either way.)"""
        start = self.offset + offset
        try:
            if os.fstat(self._fd).st_size < start + len(data):
                raise self._invalid()
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, view[done:], start + done)
        except OSError:
            raise self._invalid() from None

    # --- lifetime (called under SharedMemory's lock)
    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._gone and self._users == 0:
            os.close(self._fd)

    def retire(self) -> None:
        """Unregistered: close now if unused, else when the last user releases."""
        self._gone = True
        if self._users == 0:
            os.close(self._fd)


@dataclass(frozen=True)
class Slice:
    """Where one tensor of a request lies: ``byte_size`` bytes at ``offset`` of a region."""

    region: Region
    offset: int
    byte_size: int
    model: str = ""

    def read_tensor(self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        if bytes_tensor.is_bytes(dtype):
            if self.byte_size > MAX_BYTES_INPUT:
                raise BadRequest(
                    f"input '{name}': {BYTE_SIZE} {self.byte_size} is over the "
                    f"{MAX_BYTES_INPUT}-byte limit for a BYTES input"
                )
            raw = memoryview(self.region.read(self.offset, self.byte_size))
            return bytes_tensor.deserialize(name, raw, shape)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.byte_size != expected:  # before reading: never copy more than the tensor
            model = f" for model '{self.model}'" if self.model else ""
            raise BadRequest(
                f"input byte size mismatch for input '{name}'{model}. "
                f"Expected {expected}, got {self.byte_size}"
            )
        data = self.region.read(self.offset, expected)
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)

    def write_tensor(self, name: str, array: np.ndarray) -> int:
        data = tensor_bytes(array)
        if len(data) > self.byte_size:
            raise BadRequest(
                f"shared memory size specified with the request for output '{name}' "
                f"({self.byte_size} bytes) should be at least {len(data)} bytes to hold "
                "the results"
            )
        self.region.write(self.offset, data)
        return len(data)


SIZE_MAX = 2**64 - 1  # Triton's size_t: an offset and byte size past it overflow there


@dataclass
class Regions:
    """The regions one request uses, held (reference-counted) until it ends;
    ``SharedMemory.request`` makes one and releases it."""

    shm: SharedMemory
    model: str = ""
    held: list[Region] = field(default_factory=list)

    def slice(self, tensor: str, params: dict[str, Any]) -> Slice | None:
        """The region a tensor's parameters name (None when they name none)."""
        name = params.get(REGION)
        if name is None:
            return None
        if not isinstance(name, str):
            raise BadRequest(f"Unable to parse '{REGION}'")
        size = _count(params.get(BYTE_SIZE, 0), BYTE_SIZE)
        offset = _count(params.get(OFFSET, 0), OFFSET)
        region = self.shm.acquire(name)
        self.held.append(region)
        if offset >= region.byte_size:
            raise BadRequest(f"Invalid offset for shared memory region: '{name}'")
        if size > SIZE_MAX - offset:  # Triton's check (and words) before the bounds
            raise BadRequest(
                f"Integer overflow detected: byte_size ({size}) + offset ({offset}) exceeds "
                f"maximum value ({SIZE_MAX}) for region '{name}'"
            )
        if offset + size > region.byte_size:
            raise BadRequest(f"Invalid offset + byte size for shared memory region: '{name}'")
        return Slice(region, offset, size, self.model)


class SharedMemory:
    """The regions registered with this process, by name."""

    def __init__(self, root: Path = SHM_ROOT, *, allowed: bool = True) -> None:
        self.root = root
        self.allowed = allowed  # off: register and unregister refused, nothing registered
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()  # requests may read in worker threads

    def register(self, name: object, key: object, offset: object, byte_size: object) -> None:
        if not self.allowed:
            raise Unimplemented(DISABLED)
        if not isinstance(name, str) or not name:
            raise BadRequest("'region name' is necessary to register system shared memory region")
        if not isinstance(key, str) or not key:
            raise BadRequest("Shared memory register request has no 'key' field")
        offset = _count(offset, "offset")
        byte_size = _count(byte_size, "byte_size")
        with self._lock:
            if name in self._regions:
                raise BadRequest(f"shared memory region '{name}' already in manager")
            if len(self._regions) >= MAX_REGIONS:
                raise BadRequest(
                    f"failed to register shared memory region '{name}': {MAX_REGIONS} "
                    "regions are registered; unregister some"
                )
            if not self.root.is_dir():
                raise BadRequest(
                    "Shared memory feature is currently not supported on this platform"
                )
            self._regions[name] = Region(name, key, offset, byte_size, self.root)

    def unregister(self, name: str | None = None) -> None:
        """Forget ``name`` (every region when None or empty); an unknown name is
        no error. A region in use closes when its last request finishes."""
        if not self.allowed:
            raise Unimplemented(DISABLED)
        with self._lock:
            names = [name] if name else list(self._regions)
            for n in names:
                region = self._regions.pop(n, None)
                if region is not None:
                    region.retire()

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if name:
                region = self._regions.get(name)
                if region is None:
                    raise NotFound(f"Unable to find system shared memory region: '{name}'")
                return [region.status()]
            return [r.status() for r in self._regions.values()]

    def close(self) -> None:
        """Every region unregistered (at shutdown; allowed or not)."""
        with self._lock:
            for region in self._regions.values():
                region.retire()
            self._regions.clear()

    def acquire(self, name: str) -> Region:
        with self._lock:
            region = self._regions.get(name)
            if region is None:  # Triton's NOT_FOUND (shared_memory_manager.cc)
                raise NotFound(f"Unable to find shared memory region: '{name}'")
            region.acquire()
            return region

    @contextmanager
    def request(self, model: str = "") -> Iterator[Regions]:
        """The regions one request of ``model`` names, held until the block ends."""
        regions = Regions(self, model)
        try:
            yield regions
        finally:
            with self._lock:
                for region in regions.held:
                    region.release()


@contextmanager
def using(shm: SharedMemory | None, model: str = "") -> Iterator[Regions | None]:
    """``shm.request(model)``, or None where shared memory is off: the block a
    data plane wraps around decoding, running and encoding one request."""
    if shm is None:
        yield None
        return
    with shm.request(model) as regions:
        yield regions


def no_shared_memory(tensor: str, params: dict[str, Any]) -> None:
    """Where shared memory cannot be used (parity, V1): refuse it clearly."""
    if params.get(REGION) is not None:
        raise BadRequest(f"{tensor}: shared memory is not accepted here; use V2 infer")
