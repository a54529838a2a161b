"""Writes model versions into a model repository, atomically.

Layout and manifest fields: docs/repository.md. A version is staged in a
hidden folder beside its final place, every file fsynced, then renamed in
one ``rename(2)``: a folder named as an integer is always complete, so the
service never sees half a model, whatever happens to this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"[0-9]{1,18}")
STAGING_PREFIX = ".tmp-"


class RepositoryError(Exception):
    """The repository or the version asked for cannot be written."""


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(model_dir: Path) -> list[int]:
    """Complete versions of a model, ascending."""
    if not model_dir.is_dir():
        return []
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and VERSION_RE.fullmatch(p.name) and int(p.name)
    )


def next_version(model_dir: Path) -> int:
    existing = versions(model_dir)
    return existing[-1] + 1 if existing else 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON; readers see the old or the new file."""
    tmp = path.with_name(f"{STAGING_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        _write_bytes(tmp, _json_bytes(obj))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_version(
    repo: Path | str,
    name: str,
    *,
    model_onnx: bytes,
    reference_onnx: bytes,
    manifest: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    version: int | None = None,
) -> Path:
    """Write ``<repo>/<name>/<version>/`` and return its path.

    ``manifest`` gets ``name``, ``version`` and ``files`` (sha256 and size of
    both graphs) filled in here, so they always describe the bytes written.
    ``config`` replaces ``<name>/config.json`` when given, or is written when
    the model has none. ``version`` defaults to one above the highest.
    """
    check_name(name)
    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    if version < 1:
        raise RepositoryError(f"version must be a positive integer, got {version}")
    final = model_dir / str(version)
    if final.exists():
        raise RepositoryError(f"{final} already exists; versions are immutable")

    files = {"model.onnx": model_onnx, "reference.onnx": reference_onnx}
    full_manifest = dict(manifest)
    full_manifest.update(
        name=name,
        version=version,
        files={
            fname: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for fname, data in files.items()
        },
    )

    staging = model_dir / f"{STAGING_PREFIX}{version}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for fname, data in files.items():
            _write_bytes(staging / fname, data)
        _write_bytes(staging / "manifest.json", _json_bytes(full_manifest))
        _fsync_dir(staging)
        if config is not None:
            write_json_atomic(model_dir / "config.json", dict(config))
        elif not (model_dir / "config.json").exists():
            raise RepositoryError(f"{model_dir} has no config.json and none was given")
        os.rename(staging, final)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(model_dir)
    return final
