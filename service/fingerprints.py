"""What identifies the files a model or a version was loaded from: names,
sizes and modification times (versions are written once and renamed into
place, so a changed version is a replaced one). ``--poll`` and a load's
plan compare them to tell what changed on disk."""

from __future__ import annotations

import os
from pathlib import Path

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(folder: Path, names: list[str] | None = None) -> Fingerprint:
    """The files ``names`` in ``folder`` (every entry when None)."""
    entries = []
    try:
        listed = names if names is not None else os.listdir(folder)
    except OSError:
        return ()
    for name in sorted(listed):
        try:
            info = os.stat(folder / name)
        except OSError:
            continue
        entries.append((name, info.st_size, info.st_mtime_ns))
    return tuple(entries)


def model_fingerprint(model_dir: Path, versions: list[int]) -> Fingerprint:
    """The model folder's own files and every version's (what Triton's
    timestamps compare to tell a model changed since an override)."""
    prints = list(config_fingerprint(model_dir))
    for v in versions:
        prints += [
            (f"{v}/{name}", size, mtime) for name, size, mtime in fingerprint(model_dir / str(v))
        ]
    return tuple(prints)


def config_fingerprint(model_dir: Path) -> Fingerprint:
    """The model folder's own files (configuration, label files), not its versions."""
    try:
        names = [e.name for e in os.scandir(model_dir) if not e.is_dir()]
    except OSError:
        return ()
    return fingerprint(model_dir, names)
