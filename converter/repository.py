"""Writes model versions into a model repository, atomically.

Layout and manifest fields: docs/repository.md. A version is staged in a
hidden folder beside its final place, every file fsynced, then renamed in
one ``rename(2)``: a folder named as an integer is always complete, so the
service never sees half a model, whatever happens to this process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bnfold.contract import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PBTXT_FILE,
    REFERENCE_FILE,
    STAGING_PREFIX,
    ContractError,
    Manifest,
    ModelConfig,
    check_name,
    check_version,
    json_bytes,
    next_version,
    parse_json,
)
from bnfold.converter.errors import InputError


class RepositoryError(InputError):
    """The repository or the version asked for cannot be written (exit 2)."""


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


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON; readers see the old or the new file."""
    tmp = path.with_name(f"{STAGING_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        _write_bytes(tmp, json_bytes(obj))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def merge_config(model_dir: Path, new: ModelConfig) -> ModelConfig:
    """``new`` where the model folder has no config.json; otherwise the
    existing one with the signature of the new version: its inputs and
    outputs, its preprocessing (when it has one), and ``max_batch_size`` 0
    when the new graph does not batch. Labels, batching, version policy and
    every other hand edit stay."""
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return new
    try:
        existing = ModelConfig.from_dict(parse_json(path.read_bytes(), CONFIG_FILE))
    except ContractError as e:
        raise RepositoryError(f"the existing {path} cannot be updated: {e}") from None
    return dataclasses.replace(
        existing,
        input=new.input,
        output=new.output,
        preprocessing=new.preprocessing or existing.preprocessing,
        max_batch_size=existing.max_batch_size if new.max_batch_size else 0,
    )


def write_version(
    repo: Path | str,
    name: str,
    *,
    model_onnx: bytes,
    reference_onnx: bytes,
    manifest: Mapping[str, Any],
    config: ModelConfig | Mapping[str, Any] | None = None,
    version: int | None = None,
) -> Path:
    """Write ``<repo>/<name>/<version>/`` and return its path.

    ``manifest`` gets ``name``, ``version`` and ``files`` (sha256 and size of
    both graphs) filled in here, so they always describe the bytes written;
    it and ``config`` are checked against the contract's schemas before
    anything is written, so the service never meets a file it refuses.
    ``config`` is written as ``<name>/config.json`` when the model has none;
    an existing one is hand-editable and keeps its edits: only the input and
    output signature (and the preprocessing, which comes from the data) are
    updated (:func:`merge_config`). A Triton ``config.pbtxt`` in the model
    folder is left as it is and no config.json is written beside it.
    ``version`` defaults to one above the highest.
    """
    try:
        check_name(name)
        if version is not None:
            check_version(version)
        model_dir = Path(repo) / name
        files = {MODEL_FILE: model_onnx, REFERENCE_FILE: reference_onnx}
        config_dict = None
        if config is not None and not (model_dir / PBTXT_FILE).exists():
            checked = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
            config_dict = merge_config(model_dir, checked).to_dict()
    except ContractError as e:
        raise RepositoryError(str(e)) from None
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    final = model_dir / str(version)
    if final.exists():
        raise RepositoryError(f"{final} already exists; versions are immutable")
    full_manifest = dict(manifest)
    full_manifest.update(
        name=name,
        version=version,
        files={
            fname: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for fname, data in files.items()
        },
    )
    try:
        Manifest.from_dict(full_manifest)
    except ContractError as e:
        raise RepositoryError(str(e)) from None

    staging = model_dir / f"{STAGING_PREFIX}{version}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for fname, data in files.items():
            _write_bytes(staging / fname, data)
        _write_bytes(staging / MANIFEST_FILE, json_bytes(full_manifest))
        _fsync_dir(staging)
        if config_dict is not None:
            write_json_atomic(model_dir / CONFIG_FILE, config_dict)
        elif not (model_dir / CONFIG_FILE).exists() and not (model_dir / PBTXT_FILE).exists():
            raise RepositoryError(f"{model_dir} has no {CONFIG_FILE} and none was given")
        os.rename(staging, final)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(model_dir)
    return final
