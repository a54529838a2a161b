"""Fixtures: a real server (uvicorn on 127.0.0.1) on a temporary repository.

Models come from ``converter.pipeline`` where torch is installed, from
onnx.helper stand-ins otherwise (served_models.py); ``BUILD`` is that one
line. Tests learn names and shapes from ``ModelInfo``, never from the builder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from served_models import ModelInfo, converter_models, helper_models
from service_harness import TOKEN, Repo, RunningServer, base_settings, run_server

BUILD: Callable[[Path], dict[str, ModelInfo]] = (
    converter_models if importlib.util.find_spec("torch") else helper_models
)


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    path = tmp_path_factory.mktemp("models")
    return Repo(path, BUILD(path))


@pytest.fixture(scope="session")
def server(repo: Repo) -> Iterator[RunningServer]:
    with run_server(base_settings(repo.path)) as running:
        yield running


@pytest.fixture(scope="session")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def triton(server: RunningServer) -> Iterator[object]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.host_port, network_timeout=30)
    yield client
    client.close()
