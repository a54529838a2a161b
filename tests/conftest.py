"""Fixtures shared by every test folder: models the converter really builds."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def converted_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository written by the real pipeline: digits-mlp v1 (folded, verified)."""
    pytest.importorskip("torch")
    from converter.pipeline import ConvertOptions, convert

    repo = tmp_path_factory.mktemp("repo")
    convert(ConvertOptions(arch="mlp", data="digits", repo=repo, name="digits-mlp"))
    return repo
