"""Writes model versions into a model repository, crash-safe.

Layout and manifest fields: docs/repository.md. A version is staged in a
hidden folder beside its final place, every file fsynced, then renamed in
one ``rename(2)``: a folder named as an integer is always complete, so the
service never sees half a model, whatever happens to this process.

``config.json`` changes with the version, never apart from it. When a write
changes it (a new signature) and versions are already there, the steps are
(:data:`STEPS`; a crash after any of them leaves a repository that a
restarted server serves as before, or serves the new version whole):

1. ``staged``: the version folder written and fsynced, hidden;
2. ``journal``: a hidden journal (:data:`JOURNAL_FILE`) names the version,
   the config.json as it was, the pinned one and the new one;
3. ``pinned``: config.json replaced by the one as it was, its
   ``version_policy`` pinned to the versions it serves now, so the new
   version's folder changes nothing for a server that restarts;
4. ``renamed``: the version folder renamed into place;
5. ``config``: config.json replaced by the new one (the new version serves);
6. ``done``: the journal removed.

The next write finishes what a crashed one left (:func:`recover`): the new
config when its version is in place, the old one when it is not, unless
config.json was edited by hand since. With no version yet, or no config.json
to pin, config.json is written before (first version) or after (a model
without config.json) the rename. Every ``OSError`` (a full disk, a
read-only filesystem, a permission) is a :class:`RepositoryError` naming
the path and the error, after the repository is put back as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
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
    FileEntry,
    Manifest,
    ModelConfig,
    SpecificVersions,
    VersionPolicy,
    check_name,
    check_version,
    json_bytes,
    next_version,
    parse_json,
    scan_versions,
)
from bnfold.converter.errors import InputError

# Hidden (readers skip it): what a write that changes config.json is doing.
JOURNAL_FILE = f"{STAGING_PREFIX}config-journal.json"
STEPS = ("staged", "journal", "pinned", "renamed", "config", "done")


class RepositoryError(InputError):
    """The repository or the version asked for cannot be written (exit 2)."""


def _reached(step: str) -> None:
    """Called after each step of :data:`STEPS` that a write takes; tests
    replace it to kill the writer there."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is None:  # a write or a flush (a full disk) names no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON; readers see the old or the new file."""
    tmp = path.with_name(f"{STAGING_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        _write_bytes(tmp, json_bytes(obj))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _read_config(path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(parse_json(path.read_bytes(), CONFIG_FILE))
    except ContractError as e:
        raise RepositoryError(f"the existing {path} cannot be updated: {e}") from None


def merge_config(model_dir: Path, new: ModelConfig) -> ModelConfig:
    """``new`` where the model folder has no config.json; otherwise the
    existing one with the signature of the new version: its inputs and
    outputs, its preprocessing (when it has one), and ``max_batch_size`` 0
    when the new graph does not batch. Labels, batching, version policy and
    every other hand edit stay."""
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return new
    existing = _read_config(path)
    return dataclasses.replace(
        existing,
        input=new.input,
        output=new.output,
        preprocessing=new.preprocessing or existing.preprocessing,
        max_batch_size=existing.max_batch_size if new.max_batch_size else 0,
    )


def pinned(config: ModelConfig, available: list[int]) -> ModelConfig:
    """``config`` serving exactly the versions it serves now out of ``available``."""
    serving = config.policy.select(available)
    return dataclasses.replace(
        config, version_policy=VersionPolicy(specific=SpecificVersions(serving))
    )


def recover(model_dir: Path) -> str | None:
    """Finish a write that crashed while changing config.json (the journal
    is there): the new config.json when its version is in place, the one
    before when it is not; a config.json edited since is left alone. Returns
    what was done, or None when there was nothing to do."""
    journal_path = model_dir / JOURNAL_FILE
    if not journal_path.exists():
        return None
    try:
        journal = json.loads(journal_path.read_bytes())
        int(journal["version"]), journal["pinned"], journal["before"], journal["new"]
    except (ValueError, KeyError, TypeError) as e:
        raise RepositoryError(f"{journal_path} cannot be read ({e}); remove it") from None
    config_path = model_dir / CONFIG_FILE
    current = json.loads(config_path.read_bytes()) if config_path.exists() else None
    done = "left config.json as edited by hand"
    if current == journal["pinned"]:
        committed = (model_dir / str(journal["version"])).is_dir()
        write_json_atomic(config_path, journal["new" if committed else "before"])
        done = f"config.json of version {journal['version']} " + (
            "installed" if committed else "rolled back"
        )
    journal_path.unlink()
    _fsync_dir(model_dir)
    return done


@dataclass(frozen=True)
class Written:
    """What :func:`write` put into the repository."""

    path: Path  # <repo>/<name>/<version>
    manifest: Manifest
    config: ModelConfig | None  # config.json as written; None: left as it was


def write_version(
    repo: Path | str,
    name: str,
    *,
    model_onnx: bytes,
    reference_onnx: bytes,
    manifest: Manifest | Mapping[str, Any],
    config: ModelConfig | Mapping[str, Any] | None = None,
    version: int | None = None,
) -> Path:
    """:func:`write` for callers holding JSON objects; returns the version's folder."""
    check_target(repo, name, version)
    try:
        if not isinstance(manifest, Manifest):
            draft = dict(manifest) | {"name": name, "version": version or 1, "files": {}}
            manifest = Manifest.from_dict(draft)
        if config is not None and not isinstance(config, ModelConfig):
            config = ModelConfig.from_dict(config)
    except ContractError as e:
        raise RepositoryError(str(e)) from None
    return write(
        repo,
        name,
        model_onnx=model_onnx,
        reference_onnx=reference_onnx,
        manifest=manifest,
        config=config,
        version=version,
    ).path


def check_target(repo: Path | str, name: str, version: int | None) -> Path:
    """The model folder of ``name``; refuses a bad name or version, and a
    version that exists: versions are immutable."""
    try:
        check_name(name)
        if version is not None:
            check_version(version)
    except ContractError as e:
        raise RepositoryError(str(e)) from None
    model_dir = Path(repo) / name
    if version is not None and (model_dir / str(version)).exists():
        raise RepositoryError(
            f"{model_dir / str(version)} already exists; versions are immutable "
            "(leave the version out to write the next one)"
        )
    return model_dir


def write(
    repo: Path | str,
    name: str,
    *,
    model_onnx: bytes,
    reference_onnx: bytes,
    manifest: Manifest,
    config: ModelConfig | None = None,
    version: int | None = None,
) -> Written:
    """Write ``<repo>/<name>/<version>/`` and return what was written.

    ``manifest``'s ``name``, ``version`` and ``files`` (sha256 and size of
    both graphs) are set here, so they always describe the bytes written.
    ``config`` is written as ``<name>/config.json`` when the model has none;
    an existing one is hand-editable and keeps its edits: only the input and
    output signature (and the preprocessing, which comes from the data) are
    updated (:func:`merge_config`). A Triton ``config.pbtxt`` in the model
    folder is left as it is and no config.json is written beside it.
    ``version`` defaults to one above the highest. See the module docstring
    for the order of the steps.
    """
    model_dir = check_target(repo, name, version)
    try:
        return _write(model_dir, name, model_onnx, reference_onnx, manifest, config, version)
    except OSError as e:
        where = e.filename or model_dir
        raise RepositoryError(
            f"cannot write {where}: {e.strerror or e} (the repository is as it was)"
        ) from None


def _write(
    model_dir: Path,
    name: str,
    model_onnx: bytes,
    reference_onnx: bytes,
    manifest: Manifest,
    config: ModelConfig | None,
    version: int | None,
) -> Written:
    model_dir.mkdir(parents=True, exist_ok=True)
    recover(model_dir)
    config_path = model_dir / CONFIG_FILE
    before = _read_config(config_path) if config_path.exists() else None
    new_config = None
    if config is not None and not (model_dir / PBTXT_FILE).exists():
        new_config = merge_config(model_dir, config)
        if new_config == before:
            new_config = None  # nothing to change: the rename alone commits
    elif not config_path.exists() and not (model_dir / PBTXT_FILE).exists():
        raise RepositoryError(f"{model_dir} has no {CONFIG_FILE} and none was given")
    if version is None:
        version = next_version(model_dir)
    final = model_dir / str(version)
    if final.exists():
        raise RepositoryError(f"{final} already exists; versions are immutable")
    files = {MODEL_FILE: model_onnx, REFERENCE_FILE: reference_onnx}
    try:
        written = dataclasses.replace(
            manifest,
            name=name,
            version=version,
            files={
                fname: FileEntry(hashlib.sha256(data).hexdigest(), len(data))
                for fname, data in files.items()
            },
        )
        Manifest.from_dict(written.to_dict())  # what the service will read back
    except ContractError as e:
        raise RepositoryError(str(e)) from None

    available = scan_versions(model_dir).valid
    # config.json alone while nothing serves; pinned while the new version appears
    config_first = new_config is not None and not available
    pin = new_config is not None and available and before is not None
    staging = model_dir / f"{STAGING_PREFIX}{version}-{secrets.token_hex(4)}"
    journal = model_dir / JOURNAL_FILE
    renamed = False
    staging.mkdir()
    try:
        for fname, data in files.items():
            _write_bytes(staging / fname, data)
        _write_bytes(staging / MANIFEST_FILE, json_bytes(written.to_dict()))
        _fsync_dir(staging)
        _reached("staged")
        if pin:
            assert before is not None and new_config is not None
            held = pinned(before, available)
            record = {
                "version": version,
                "before": before.to_dict(),
                "pinned": held.to_dict(),
                "new": new_config.to_dict(),
            }
            write_json_atomic(journal, record)
            _reached("journal")
            write_json_atomic(config_path, held.to_dict())
            _reached("pinned")
        elif config_first:
            assert new_config is not None
            write_json_atomic(config_path, new_config.to_dict())
        os.rename(staging, final)  # the version's commit point
        renamed = True
        _fsync_dir(model_dir)
        _reached("renamed")
        if new_config is not None and not config_first:
            write_json_atomic(config_path, new_config.to_dict())
            _reached("config")
        if pin:
            journal.unlink()
            _fsync_dir(model_dir)
            _reached("done")
    except BaseException:
        _undo(model_dir, staging, final if renamed else None, before, pin or config_first)
        raise
    return Written(final, written, new_config if new_config is not None else before)


def _undo(
    model_dir: Path,
    staging: Path,
    final: Path | None,
    before: ModelConfig | None,
    config_touched: bool,
) -> None:
    """Put the repository back as it was after a failed write (best effort:
    what cannot be undone now, :func:`recover` finishes on the next write)."""
    try:
        if final is not None:
            os.rename(final, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if config_touched:
            config_path = model_dir / CONFIG_FILE
            if before is not None:
                write_json_atomic(config_path, before.to_dict())
            else:
                config_path.unlink(missing_ok=True)
        (model_dir / JOURNAL_FILE).unlink(missing_ok=True)
        _fsync_dir(model_dir)
    except OSError:
        pass
