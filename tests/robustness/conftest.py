"""Fixtures of the robustness tests: a repository of small models (onnx.helper
stand-ins, no torch needed), the server in a thread or in its own process.

The builders and the in-thread harness are those of tests/service, shared
rather than copied.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from robust_models import small_repo
from service_harness import Repo, http_fixture, server_fixture

# Imported for pytest: the session fixtures `server` and `http` (service_harness.py).
SHARED_FIXTURES = (server_fixture, http_fixture)


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return small_repo(tmp_path_factory.mktemp("models"))
