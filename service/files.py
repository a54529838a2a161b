"""Reading repository files without trusting them.

Whoever can write into the model repository must not be able to make the
server read anything else, hang, or run out of memory, nor learn what lies
outside it. So every file the service reads from a model folder
(config.json, config.pbtxt, label files, manifest.json, the two graphs,
external data) is

- opened relative to a descriptor of the repository's root, following no
  link on any component: ``openat2`` with ``RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS`` where the kernel has it (Linux 5.6), else a walk
  that opens each folder with ``O_NOFOLLOW | O_DIRECTORY`` relative to the
  one before. A folder swapped for a link between a check and the open
  cannot redirect it: there is no check apart from the open;
- refused with one wording whatever the reason (missing, a link, a path
  out of the repository), so a refusal says nothing of what lies outside;
- opened without blocking and refused unless it is a regular file (a FIFO
  would block the reader forever, ``/dev/zero`` would never end);
- read from that one descriptor up to a byte limit, checked again on what
  was actually read (a file that grows while being read).

Each refusal is a ``ValueError`` whose message is the reason shown in the
repository index.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Small JSON files of a version: generous, but far from a memory problem.
MAX_JSON_BYTES = 16 << 20

# openat2(2): one syscall number on every architecture (Linux 5.6+).
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_OPENAT2_ARCHES = {"x86_64", "aarch64", "arm64"}
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """openat2 through libc's ``syscall``; ``usable`` turns False at the
    first ENOSYS (an older kernel, a seccomp filter) for the walk instead."""

    def __init__(self) -> None:
        self.usable = sys.platform == "linux" and platform.machine() in _OPENAT2_ARCHES
        self._syscall = None
        if self.usable:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                self._syscall = libc.syscall
                self._syscall.restype = ctypes.c_long
            except (OSError, AttributeError):
                self.usable = False

    def __call__(self, dir_fd: int, relative: str, flags: int) -> int:
        how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        assert self._syscall is not None
        fd = self._syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(os.fsencode(relative)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return int(fd)


_openat2 = _Openat2()


def refused(path: Path) -> ValueError:
    """The one refusal for a file that cannot be opened inside the repository:
    missing, a link, a path out of it all read the same."""
    return ValueError(f"{path.name} is missing or not a file inside the model repository; refused")


def _relative_parts(path: Path, root: Path) -> list[str]:
    """``path`` as components below ``root`` (lexically: nothing is resolved)."""
    try:
        parts = list(Path(os.path.normpath(path)).relative_to(os.path.normpath(root)).parts)
    except ValueError:
        raise refused(path) from None
    # normpath keeps a leading "..", and a path that named ".." to climb back
    # in went through a folder that may be a link: refuse both.
    if not parts or ".." in parts or ".." in Path(path).parts:
        raise refused(path)
    return parts


def _walk(root_fd: int, parts: list[str]) -> int:
    """The file ``parts`` below ``root_fd``, each folder opened without following a link."""
    fd = root_fd
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = next_fd
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        if fd != root_fd:
            os.close(fd)


def open_inside(path: Path, root: Path) -> int:
    """A read-only, non-blocking descriptor of ``path``, a regular file below
    ``root`` reached through no link; ``ValueError`` otherwise. The caller
    closes it."""
    parts = _relative_parts(path, root)
    # The repository's own folder may be a link (a mounted volume); below it, none.
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise refused(path) from None
    try:
        fd = -1
        if _openat2.usable:
            try:
                fd = _openat2(root_fd, os.path.join(*parts), _FILE_FLAGS)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise refused(path) from None
                _openat2.usable = False
        if fd < 0:
            try:
                fd = _walk(root_fd, parts)
            except OSError:
                raise refused(path) from None
    finally:
        os.close(root_fd)
    # What was opened, by the name it has below the root (openat2 raises no
    # audit event of its own; auditors see every file the service reads).
    sys.audit("open", os.fspath(path), "r", _FILE_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path.name} is not a regular file; refused")
    except BaseException:
        os.close(fd)
        raise
    return fd


def present(path: Path) -> bool:
    """Whether a file is there to be read, a link counting as one (then
    refused when opened): deciding by whether a link's target exists would
    tell a client what lies outside the repository."""
    return os.path.lexists(path)


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``root`` (an early,
    friendlier refusal for folders; opening goes through :func:`open_inside`)."""
    try:
        return path.resolve(strict=False).is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def read_fd(fd: int, name: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of the open regular file ``fd`` (which it closes)."""
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise ValueError(f"{name} is {size} bytes, over the {max_bytes}-byte limit")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{name} is over the {max_bytes}-byte limit")
    return data


def read_file(path: Path, *, root: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``, a regular file inside ``root`` of at most ``max_bytes``."""
    return read_fd(open_inside(path, root), path.name, max_bytes)


def regular_size(path: Path, *, root: Path) -> int:
    """Size of ``path``, a regular file inside ``root`` (external data)."""
    fd = open_inside(path, root)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_range(path: Path, *, root: Path, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of ``path`` (external data), from one descriptor."""
    fd = open_inside(path, root)
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise ValueError(f"{path.name} is shorter than its declared offset and length")
    return data


def embed_external_data(data: bytes, version_dir: Path, root: Path) -> bytes:
    """The graph ``data`` with its external data read in (through
    :func:`read_range`, from inside ``root`` only) and stored in the graph, so
    that ONNX Runtime opens no file by name. ``runtime.external_data_files``
    has checked the locations, offsets and lengths against the declared
    shapes; a graph over protobuf's 2 GiB once embedded is refused."""
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(data)
    for tensor in tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        declared = int(np.prod(list(tensor.dims), dtype=np.int64)) * itemsize
        offset = int(entries.get("offset", 0))
        length = int(entries.get("length", declared))
        location = version_dir / entries.get("location", "")
        tensor.raw_data = read_range(location, root=root, offset=offset, length=length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    if model.ByteSize() >= 2**31 - 1:
        raise ValueError("the graph with its external data is over protobuf's 2 GiB; refused")
    return model.SerializeToString()


def tensors(graph: object) -> Iterator[Any]:
    """Every tensor a graph stores: initializers, sparse ones, node
    attributes, subgraphs."""
    yield from graph.initializer  # type: ignore[attr-defined]
    for sparse in graph.sparse_initializer:  # type: ignore[attr-defined]
        yield sparse.values
        yield sparse.indices
    for node in graph.node:  # type: ignore[attr-defined]
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from tensors(attr.g)
            for sub in attr.graphs:
                yield from tensors(sub)
