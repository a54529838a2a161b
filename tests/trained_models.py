"""Networks trained and converted once per test session.

Training and exporting is most of what the model-building tests spend, and
several modules need the same few models (the service's repository, the
worker and image tests of deploy/, the pipeline's own checks). The session
fixture ``converted`` (tests/conftest.py) runs ``bnfold convert``'s pipeline
once per set of options and hands every caller the same :class:`Converted`.

A converted version is read-only: a test that serves it writes a copy into
a repository of its own with :meth:`Converted.write`, under the name and
version it needs (the bytes, manifest and configuration the converter
wrote; ``write_version`` fills in the name, version and hashes again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.converter.repository import write_version

MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.onnx"


@dataclass(frozen=True)
class Converted:
    """One version as ``convert`` wrote it, and the run that made it."""

    result: Any  # bnfold.converter.pipeline.ConvertResult (imports torch)

    @property
    def version_dir(self) -> Path:
        return Path(self.result.version_dir)

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self.result.manifest)

    def write(self, repo: Path, name: str, version: int | None = None) -> Path:
        """The same version in ``repo`` as ``name`` (next version by default)."""
        config = json.loads((self.version_dir.parent / "config.json").read_text())
        return write_version(
            repo,
            name,
            model_onnx=(self.version_dir / MODEL_FILE).read_bytes(),
            reference_onnx=(self.version_dir / REFERENCE_FILE).read_bytes(),
            manifest=self.manifest,
            config={**config, "name": name},
            version=version,
        )


# arch, epochs, limit -> the converted version (one conversion per session)
ConvertOnce = Callable[..., Converted]


def convert_once_in(root: Path) -> ConvertOnce:
    from bnfold.converter.pipeline import ConvertOptions, convert

    done: dict[tuple[str, str, int, int | None], Converted] = {}

    def convert_once(
        arch: str, *, epochs: int, limit: int | None = None, data: str = "digits"
    ) -> Converted:
        key = (arch, data, epochs, limit)
        if key not in done:
            name = f"{arch}-e{epochs}-n{limit or 'all'}"
            options = ConvertOptions(
                arch=arch, data=data, repo=root, name=name, epochs=epochs, limit=limit
            )
            done[key] = Converted(convert(options))
        return done[key]

    return convert_once
