"""Schemathesis against the server's own OpenAPI schema, on a real server.

Every operation the schema lists gets generated requests, valid and not
(a bounded number each). Whatever is sent, the server answers with a status
it documents, never a 5xx other than a 503 that carries ``Retry-After``
(a model unloaded by a generated request), never FastAPI's 422, and every
error body is ``{"error": "<message>"}``. Half the generated model names are
replaced by served ones so that the requests reach the models, not only the
404 path. The server has a repository of its own: generated load and unload
requests may change what it serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (dev extra)")

from hypothesis import HealthCheck, settings  # noqa: E402
from robust_models import small_repo  # noqa: E402
from service_harness import TOKEN, RunningServer, base_settings, run_server  # noqa: E402

from bnfold.service.app import create_app  # noqa: E402
from bnfold.service.settings import Settings  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVED = ("mlp", "cnn", "other")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = small_repo(tmp_path_factory.mktemp("fuzz-models"))
    settings = base_settings(repo.path, max_parity_samples=64, request_timeout_s=5.0)
    with run_server(settings) as server:
        yield server


# The schema the server publishes at /openapi.json, built without starting it
# (schemathesis' lazy fixture loader does not run on pytest 9); the requests
# go to the real server all the same.
schema = schemathesis.openapi.from_dict(create_app(Settings(repo=Path("models"))).openapi())


def header(response: schemathesis.Response, name: str) -> str:
    values = {k.lower(): v for k, v in response.headers.items()}.get(name, [""])
    return values[0]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same requests on every run: CI stays deterministic
)
def test_no_server_errors(case: schemathesis.Case, fuzz_server: RunningServer) -> None:
    name = case.path_parameters.get("name") if case.path_parameters else None
    if isinstance(name, str) and len(name) % 2 == 0:
        case.path_parameters["name"] = SERVED[len(name) % 3]
    response = case.call(base_url=fuzz_server.url, headers=AUTH, timeout=30)
    status = response.status_code
    assert status != 422, response.text
    if status >= 500:
        assert status == 503, f"{case.method} {case.formatted_path}: {status} {response.text}"
        assert header(response, "retry-after"), response.text
    if status >= 400:
        assert header(response, "content-type") == "application/json", response.text
        body = response.json()
        assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]


def test_the_fuzzed_server_still_serves(fuzz_server: RunningServer, tmp_path: Path) -> None:
    import httpx

    with httpx.Client(base_url=fuzz_server.url, timeout=10) as client:
        assert client.get("/v2/health/live").status_code == 200
        for name in SERVED:  # generated unloads may have taken them: load again
            r = client.post(f"/v2/repository/models/{name}/load", headers=AUTH)
            assert r.status_code == 200, r.text
        x = [[0.0] * 64]
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}]}
        assert client.post("/v2/models/mlp/infer", json=body).status_code == 200
