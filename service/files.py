"""Reading repository files without trusting them.

Whoever can write into the model repository must not be able to make the
server read anything else, hang, or run out of memory. So every file the
service reads from the repository (config.json, manifest.json, the two
graphs, external data) is

- resolved first, symlinks included, and refused unless the real path lies
  inside the repository (a symlink that stays inside is fine);
- opened without blocking and without following a last-moment symlink, and
  refused unless it is a regular file (a FIFO would block the reader
  forever, ``/dev/zero`` would never end);
- read up to a byte limit, checked again on what was actually read (a file
  that grows while being read).

Each refusal is a ``ValueError`` whose message is the reason shown in the
repository index.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Small JSON files of a version: generous, but far from a memory problem.
MAX_JSON_BYTES = 16 << 20


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``root``."""
    try:
        return path.resolve(strict=False).is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def resolve_inside(path: Path, root: Path) -> Path:
    """The real path of ``path``; ``ValueError`` if it is missing or escapes ``root``."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise ValueError(f"{path.name} is missing") from None
    except (OSError, RuntimeError) as e:  # a symlink loop, a permission
        raise ValueError(f"{path.name} cannot be resolved: {e}") from None
    if not real.is_relative_to(root.resolve()):
        raise ValueError(f"{path.name} is a link out of the model repository; refused")
    return real


def read_file(path: Path, *, root: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``, a regular file inside ``root`` of at most ``max_bytes``."""
    real = resolve_inside(path, root)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as e:
        raise ValueError(f"{path.name} cannot be opened: {e.strerror}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path.name} is not a regular file; refused")
        if info.st_size > max_bytes:
            raise ValueError(
                f"{path.name} is {info.st_size} bytes, over the {max_bytes}-byte limit"
            )
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path.name} is over the {max_bytes}-byte limit")
    return data


def regular_size(path: Path, *, root: Path) -> int:
    """Size of ``path``, a regular file inside ``root`` (external data)."""
    real = resolve_inside(path, root)
    info = real.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path.name} is not a regular file; refused")
    return info.st_size
