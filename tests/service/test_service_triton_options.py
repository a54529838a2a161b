"""Triton's server options (issue 18): restricted API categories on HTTP
and gRPC, model control modes (none, poll, explicit with --load-model),
client shared memory turned off, a bounded queue refused at once under
eager batching, and an unknown shared-memory region named by a request.

Real servers on 127.0.0.1 (HTTP and gRPC, in a thread) on a repository of
Triton's ``simple`` model, asked by Triton's own clients; statuses and
texts are Triton's (``src/http_server.cc``, ``src/grpc/grpc_server.cc``,
core's ``model_repository_manager.cc`` and ``scheduler_utils.cc``).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_harness import GrpcRunning, run_grpc_server
from onnx import TensorProto
from pydantic import ValidationError
from service_harness import WAIT_S, base_settings, wait_until
from triton_models import add_sub, pbtxt, write_model
from tritonclient.utils import InferenceServerException

from bnfold.service.restricted import http_category
from bnfold.service.settings import Settings

pytestmark = pytest.mark.timeout(300)

BOTH, OUTS = ["INPUT0", "INPUT1"], ["OUTPUT0", "OUTPUT1"]
ADMIN = "model-repository,shared-memory:admin-key=admin-value"
USER = "inference,metadata:infer-key=infer-value"
CONTROL_REFUSED = "explicit model load / unload is not allowed if polling is enabled"


def write_simple(repo: Path, name: str = "simple") -> None:
    write_model(
        repo, name, add_sub(TensorProto.INT32), pbtxt(name, TensorProto.INT32, BOTH, OUTS, [16])
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("options-models")
    write_simple(path)
    write_simple(path, "other")
    return path


def refusal(call: Callable[[], Any]) -> tuple[str | None, str]:
    """The status and message a tritonclient call is refused with."""
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


def inputs(module: Any) -> list[Any]:
    x = np.arange(16, dtype=np.int32).reshape(1, 16)
    given = [module.InferInput(name, [1, 16], "INT32") for name in BOTH]
    for g in given:
        g.set_data_from_numpy(x)
    return given


# ----------------------------------------------------------------- restricted APIs


@pytest.fixture(scope="module")
def restricted(repo: Path) -> Iterator[GrpcRunning]:
    settings = base_settings(
        repo,
        api_token=None,
        http_restricted_api=[ADMIN, USER],
        grpc_restricted_protocol=[ADMIN, USER],
    )
    with run_grpc_server(settings) as running:
        yield running


def test_restricted_http_apis(restricted: GrpcRunning) -> None:
    client = httpclient.InferenceServerClient(restricted.host_port, network_timeout=60)
    user = {"infer-key": "infer-value"}
    admin = {"admin-key": "admin-value"}
    try:
        assert refusal(client.get_server_metadata) == (
            "403",
            "This API is restricted, expecting header 'infer-key'",
        )
        assert client.get_server_metadata(headers=user)["name"] == "bnfold"
        assert (
            refusal(lambda: client.get_model_metadata("simple", headers={"infer-key": "no"}))[0]
            == "403"
        )
        assert refusal(lambda: client.infer("simple", inputs(httpclient)))[0] == "403"
        result = client.infer("simple", inputs(httpclient), headers=user)
        assert result.as_numpy("OUTPUT0").tolist() == [list(range(0, 32, 2))]
        # each category wants its own group's header
        status, message = refusal(lambda: client.unload_model("other", headers=user))
        assert (status, message) == ("403", "This API is restricted, expecting header 'admin-key'")
        assert refusal(lambda: client.get_system_shared_memory_status(headers=user))[0] == "403"
        assert client.get_system_shared_memory_status(headers=admin) == []
        client.unload_model("other", headers=admin)
        client.load_model("other", headers=admin)
        # categories in no group are open
        assert client.is_server_live() and client.is_model_ready("simple")
        assert client.get_model_config("simple")["max_batch_size"] == 8
        assert client.get_inference_statistics("simple")["model_stats"]
    finally:
        client.close()
    with httpx.Client(base_url=restricted.url, timeout=30) as http:
        r = http.post("/v2/models/simple/infer", json={"inputs": []})
        assert r.status_code == 403
        assert r.json() == {"error": "This API is restricted, expecting header 'infer-key'"}
        r = http.post("/v2/repository/index", headers={"Admin-Key": "admin-value"})
        assert r.status_code == 200  # header names in any case
        r = http.post("/v2/repository/index", headers={"admin-key": "admin-valu"})
        assert r.status_code == 403  # the value exactly
        for open_path in ("/metrics", "/", "/openapi.json", "/v2/health/ready"):
            assert http.get(open_path).status_code == 200, open_path
        assert http.get("/web/api/models").status_code == 403  # the index, without reasons


def test_restricted_grpc_protocols(restricted: GrpcRunning) -> None:
    client = grpcclient.InferenceServerClient(restricted.grpc)
    user = {"triton-grpc-protocol-infer-key": "infer-value"}
    admin = {"triton-grpc-protocol-admin-key": "admin-value"}
    try:
        assert refusal(client.get_server_metadata) == (
            "StatusCode.UNAVAILABLE",
            "This protocol is restricted, expecting header 'triton-grpc-protocol-infer-key'",
        )
        assert client.get_server_metadata(headers=user).name == "bnfold"
        status, _ = refusal(
            lambda: client.infer("simple", inputs(grpcclient), headers={"infer-key": "infer-value"})
        )
        assert status == "StatusCode.UNAVAILABLE"  # the key with Triton's gRPC prefix only
        result = client.infer("simple", inputs(grpcclient), headers=user)
        assert result.as_numpy("OUTPUT1").tolist() == [[0] * 16]
        status, message = refusal(lambda: client.get_model_repository_index(headers=user))
        assert status == "StatusCode.UNAVAILABLE"
        assert message == (
            "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
        )
        assert len(client.get_model_repository_index(headers=admin).models) == 2
        assert refusal(lambda: client.unregister_system_shared_memory(headers=user))[0] == (
            "StatusCode.UNAVAILABLE"
        )
        client.unregister_system_shared_memory(headers=admin)
        assert client.is_server_live() and client.is_model_ready("simple")
        assert client.get_model_config("simple").config.max_batch_size == 8
    finally:
        client.close()


@pytest.mark.parametrize(
    ("method", "path", "category"),
    [
        ("GET", "/v2/health/live", "health"),
        ("GET", "/v2/models/m/versions/2/ready", "health"),
        ("GET", "/v2", "metadata"),
        ("GET", "/v2/models/m", "metadata"),
        ("GET", "/v2/models/m/versions/1", "metadata"),
        ("GET", "/v2/models/m/parity", "metadata"),
        ("POST", "/v2/models/m/parity", "inference"),
        ("POST", "/v2/models/m/versions/1/infer", "inference"),
        ("POST", "/v2/models/m/classify", "inference"),
        ("POST", "/v1/models/m:predict", "inference"),
        ("GET", "/v2/models/m/config", "model-config"),
        ("GET", "/v2/models/stats", "statistics"),
        ("GET", "/v2/models/m/versions/1/stats", "statistics"),
        ("POST", "/v2/repository/index", "model-repository"),
        ("POST", "/v2/repository/models/m/load", "model-repository"),
        ("GET", "/web/api/models", "model-repository"),
        ("GET", "/web/api/models/m/versions/1", "metadata"),
        ("POST", "/v2/systemsharedmemory/region/r/register", "shared-memory"),
        ("GET", "/v2/cudasharedmemory/status", "shared-memory"),
        ("GET", "/v2/trace/setting", "trace"),
        ("POST", "/v2/logging", "logging"),
        ("GET", "/metrics", None),
        ("GET", "/", None),
        ("GET", "/docs", None),
        ("GET", "/web/app.js", None),
    ],
)
def test_every_route_has_its_category(method: str, path: str, category: str | None) -> None:
    assert http_category(method, path) == category


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"http_restricted_api": ["infer:k=v"]}, "unknown restricted api 'infer'"),
        ({"grpc_restricted_protocol": ["nope:k=v"]}, "unknown restricted protocol 'nope'"),
        (
            {"http_restricted_api": ["health:a=b", "health,metadata:c=d"]},
            "restricted api 'health' can not be specified in multiple config groups",
        ),
        ({"http_restricted_api": ["health=k"]}, "format is '<config name>:<setting>=<value>'"),
        ({"load_model": ["simple"]}, "requires setting '--model-control-mode=explicit'"),
        (
            {"model_control_mode": "explicit", "load_model": ["*", "simple"]},
            "Wildcard model name '*' must be the ONLY startup model",
        ),
    ],
)
def test_triton_option_errors(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    assert problem in str(info.value)


def test_list_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNFOLD_HTTP_RESTRICTED_API", '["health:k=v", "inference:a=b"]')
    monkeypatch.setenv("BNFOLD_MODEL_CONTROL_MODE", "explicit")
    monkeypatch.setenv("BNFOLD_LOAD_MODEL", "simple")
    settings = Settings()
    assert settings.http_restricted_api == ["health:k=v", "inference:a=b"]
    assert settings.load_model == ["simple"]


# ----------------------------------------------------------------- model control


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_refused_in_modes_none_and_poll(
    repo: Path, tmp_path: Path, mode: str
) -> None:
    settings = base_settings(repo, api_token=None, model_control_mode=mode, poll_s=0.2)
    with run_grpc_server(settings) as running:
        http = httpclient.InferenceServerClient(running.host_port, network_timeout=60)
        grpc = grpcclient.InferenceServerClient(running.grpc)
        try:
            assert http.is_model_ready("simple") and http.is_model_ready("other")
            for call in (lambda: http.load_model("simple"), lambda: http.unload_model("simple")):
                assert refusal(call) == ("503", CONTROL_REFUSED)
            for call in (lambda: grpc.load_model("simple"), lambda: grpc.unload_model("simple")):
                assert refusal(call) == ("StatusCode.UNAVAILABLE", CONTROL_REFUSED)
            assert len(http.get_model_repository_index()) == 2  # the index answers
            assert http.is_model_ready("simple")
            if mode == "poll":  # the repository is watched: a new model loads
                write_simple(repo, "added")
                try:
                    wait_until(lambda: http.is_model_ready("added"), "the poll loads 'added'")
                finally:
                    shutil.rmtree(repo / "added")
                wait_until(lambda: not http.is_model_ready("added"), "the poll unloads it")
        finally:
            http.close()
            grpc.close()


def test_explicit_mode_loads_only_what_is_asked(repo: Path) -> None:
    settings = base_settings(repo, api_token=None, model_control_mode="explicit")
    with run_grpc_server(settings) as running:
        client = httpclient.InferenceServerClient(running.host_port, network_timeout=60)
        try:
            assert client.is_server_ready()  # nothing asked for yet: ready, as Triton
            assert not client.is_model_ready("simple")
            assert {m["name"] for m in client.get_model_repository_index()} == {"simple", "other"}
            client.load_model("simple")
            assert client.is_model_ready("simple") and not client.is_model_ready("other")
            client.unload_model("simple")
            assert not client.is_model_ready("simple")
        finally:
            client.close()
    settings = base_settings(
        repo, api_token=None, model_control_mode="explicit", load_model=["other"]
    )
    with run_grpc_server(settings) as running:
        client = httpclient.InferenceServerClient(running.host_port, network_timeout=60)
        try:
            assert client.is_model_ready("other") and not client.is_model_ready("simple")
        finally:
            client.close()
    settings = base_settings(repo, api_token=None, model_control_mode="explicit", load_model=["*"])
    with run_grpc_server(settings) as running:
        client = httpclient.InferenceServerClient(running.host_port, network_timeout=60)
        try:
            assert client.is_model_ready("other") and client.is_model_ready("simple")
        finally:
            client.close()


# ----------------------------------------------------------------- client shared memory


def test_client_shared_memory_off(repo: Path) -> None:
    settings = base_settings(repo, api_token=None, allow_client_shm=False)
    disabled = "Client shared memory is disabled. Start the server with '--allow-client-shm'"
    with run_grpc_server(settings) as running:
        http = httpclient.InferenceServerClient(running.host_port, network_timeout=60)
        grpc = grpcclient.InferenceServerClient(running.grpc)
        try:
            assert "system_shared_memory" not in http.get_server_metadata()["extensions"]
            assert "system_shared_memory" not in grpc.get_server_metadata().extensions
            status, message = refusal(
                lambda: http.register_system_shared_memory("r", "/bnfold-off", 64)
            )
            assert status == "501" and message.startswith(disabled)
            assert refusal(http.unregister_system_shared_memory)[0] == "501"
            assert refusal(http.unregister_cuda_shared_memory)[0] == "501"
            status, message = refusal(grpc.unregister_cuda_shared_memory)
            assert status == "StatusCode.UNIMPLEMENTED" and message.startswith(disabled)
            status, message = refusal(
                lambda: grpc.register_system_shared_memory("r", "/bnfold-off", 64)
            )
            assert status == "StatusCode.UNIMPLEMENTED" and message.startswith(disabled)
            assert http.get_system_shared_memory_status() == []  # status answers, empty
            given = inputs(httpclient)
            given[0].set_shared_memory("r", 64)
            status, message = refusal(lambda: http.infer("simple", given))
            assert (status, message) == ("404", "Unable to find shared memory region: 'r'")
            given = inputs(grpcclient)
            given[0].set_shared_memory("r", 64)
            status, message = refusal(lambda: grpc.infer("simple", given))
            assert status == "StatusCode.NOT_FOUND"
            assert message == "Unable to find shared memory region: 'r'"
        finally:
            http.close()
            grpc.close()


# ----------------------------------------------------------------- the bounded queue


@pytest.mark.parametrize("eager", [True, False])
def test_a_full_queue_is_refused_at_once(tmp_path: Path, eager: bool) -> None:
    """``default_queue_policy { max_queue_size: 1 }`` with the runner held
    busy (a gate around the real ONNX Runtime run): one request computes,
    one waits in the queue, the next is refused at once with Triton's words,
    under eager batching too."""
    config = pbtxt("simple", TensorProto.INT32, BOTH, OUTS, [16]) + (
        "dynamic_batching { default_queue_policy { max_queue_size: 1 } }\n"
    )
    write_model(tmp_path, "simple", add_sub(TensorProto.INT32), config)
    settings = base_settings(tmp_path, api_token=None, eager_batching=eager, inline_below_ms=0)
    with run_grpc_server(settings) as running:
        served = running.served("simple")
        batcher = served.batcher
        gate = threading.Event()
        entered = threading.Event()
        run = batcher._run

        def gated(feeds: Any) -> Any:
            entered.set()
            assert gate.wait(WAIT_S), "the test never opened the gate"
            return run(feeds)

        batcher._run = gated  # the real run, once the test lets it
        answers: list[int] = []

        def send() -> None:
            with httpx.Client(base_url=running.url, timeout=WAIT_S) as c:
                answers.append(c.post("/v2/models/simple/infer", json=body()).status_code)

        threads = [threading.Thread(target=send) for _ in range(2)]
        try:
            threads[0].start()
            assert entered.wait(WAIT_S), "the first request never reached the runner"
            threads[1].start()
            wait_until(lambda: batcher.pending == 1, "the second request queued")
            with httpx.Client(base_url=running.url, timeout=WAIT_S) as c:
                r = c.post("/v2/models/simple/infer", json=body())
            assert r.status_code == 503
            assert "Exceeds maximum queue size" in r.json()["error"]
            grpc = grpcclient.InferenceServerClient(running.grpc)
            try:
                status, message = refusal(lambda: grpc.infer("simple", inputs(grpcclient)))
            finally:
                grpc.close()
            assert status == "StatusCode.UNAVAILABLE" and "Exceeds maximum queue size" in message
        finally:
            gate.set()
            for t in threads:
                t.join(WAIT_S)
        assert answers == [200, 200]


def body() -> dict[str, Any]:
    data = list(range(16))
    return {
        "inputs": [
            {"name": name, "shape": [1, 16], "datatype": "INT32", "data": data} for name in BOTH
        ]
    }


def test_a_request_queued_past_its_queue_timeout_is_refused(tmp_path: Path) -> None:
    """``default_queue_policy { default_timeout_microseconds }`` (REJECT):
    a request still queued when its timeout has passed is refused when the
    runner frees, with Triton's words; the one computing is answered."""
    config = pbtxt("simple", TensorProto.INT32, BOTH, OUTS, [16]) + (
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 1000 } }\n"
    )
    write_model(tmp_path, "simple", add_sub(TensorProto.INT32), config)
    settings = base_settings(tmp_path, api_token=None, inline_below_ms=0)
    with run_grpc_server(settings) as running:
        with httpx.Client(base_url=running.url, timeout=WAIT_S) as c:
            policy = c.get("/v2/models/simple/config").json()["dynamic_batching"]
        assert policy["default_queue_policy"]["default_timeout_microseconds"] == 1000
        batcher = running.served("simple").batcher
        gate, entered = threading.Event(), threading.Event()
        run = batcher._run

        def gated(feeds: Any) -> Any:
            entered.set()
            assert gate.wait(WAIT_S), "the test never opened the gate"
            return run(feeds)

        batcher._run = gated
        answers: dict[int, httpx.Response] = {}

        def send(i: int) -> None:
            with httpx.Client(base_url=running.url, timeout=WAIT_S) as c:
                answers[i] = c.post("/v2/models/simple/infer", json=body())

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        try:
            threads[0].start()
            assert entered.wait(WAIT_S), "the first request never reached the runner"
            threads[1].start()
            wait_until(lambda: batcher.pending == 1, "the second request queued")
            queued = batcher._queue[0]
            wait_until(lambda: time.perf_counter() > queued.expires, "its queue timeout passed")
        finally:
            gate.set()
            for t in threads:
                t.join(WAIT_S)
        assert answers[0].status_code == 200
        assert answers[1].status_code == 503
        assert (
            answers[1].json()["error"] == "model 'simple' is unavailable: Request timeout expired"
        )
