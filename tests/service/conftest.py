"""Fixtures: a real server (uvicorn on 127.0.0.1) on a temporary repository.

Models come from ``converter.pipeline`` where torch is installed (the
session's shared conversions, tests/trained_models.py), from onnx.helper
stand-ins otherwise (served_models.py). Tests learn names and shapes from
``ModelInfo``, never from the builder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
from served_models import converter_models, helper_models
from service_harness import TOKEN, Repo, RunningServer, http_fixture, server_fixture

# Imported for pytest: the session fixtures `server` and `http` (service_harness.py).
SHARED_FIXTURES = (server_fixture, http_fixture)


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Repo:
    path = tmp_path_factory.mktemp("models")
    if importlib.util.find_spec("torch") is None:
        return Repo(path, helper_models(path))
    return Repo(path, converter_models(path, request.getfixturevalue("converted")))


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def triton(server: RunningServer) -> Iterator[object]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.host_port, network_timeout=30)
    yield client
    client.close()
