"""Fixtures of the robustness tests: a repository of small models (onnx.helper
stand-ins, no torch needed), the server in a thread or in its own process.

The builders and the in-thread harness are those of tests/service, shared
rather than copied.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from robust_models import small_repo
from service_harness import Repo, RunningServer, base_settings, run_server


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return small_repo(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def server(repo: Repo) -> Iterator[RunningServer]:
    with run_server(base_settings(repo.path)) as running:
        yield running


@pytest.fixture(scope="session")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
