"""Open Inference Protocol over the real server, with tritonclient and httpx:
what perf_analyzer reads (/v2, model metadata, /config, infer JSON and
binary), outputs selection, ids, parameters, versions, compression."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from service_harness import Repo, RunningServer, rows

PROVIDERS = {"CPUExecutionProvider", "CUDAExecutionProvider"}


def assert_no_null(value: Any) -> None:
    if isinstance(value, dict):
        for v in value.values():
            assert_no_null(v)
    elif isinstance(value, list):
        for v in value:
            assert_no_null(v)
    else:
        assert value is not None


def v2_json(model_input: str, x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": model_input, "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ],
        **extra,
    }


def test_server_metadata_names_extensions_and_provider(triton: Any, http: httpx.Client) -> None:
    meta = triton.get_server_metadata()
    assert meta["name"] == "bnfold"
    assert {"binary_tensor_data", "model_repository", "statistics", "model_configuration"} <= set(
        meta["extensions"]
    )
    assert meta["parameters"]["provider"] in PROVIDERS
    assert_no_null(http.get("/v2").json())


def test_health_live_and_ready(triton: Any, http: httpx.Client) -> None:
    # This repository holds broken models on purpose: strict readiness (the
    # default) says the server is not ready, and names one of them.
    assert triton.is_server_live() and not triton.is_server_ready()
    r = http.get("/v2/health/ready")
    assert r.status_code == 503 and "is not ready: model 'bad-sha'" in r.json()["error"]
    for path in ("/v2/health/live", "/v2/models/mlp/ready"):
        r = http.get(path)
        assert (r.status_code, r.content) == (200, b"")
    assert triton.is_model_ready("mlp")
    assert triton.is_model_ready("cnn", "2")
    assert not triton.is_model_ready("cnn", "1")


def test_model_metadata_has_shapes_versions_and_provider(triton: Any, repo: Repo) -> None:
    meta = triton.get_model_metadata("mlp")
    assert meta["name"] == "mlp"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["provider"] in PROVIDERS
    assert meta["parameters"]["max_batch_size"] == 64
    assert_no_null(meta)
    cnn = triton.get_model_metadata("cnn", "2")
    assert cnn["versions"] == ["2"]
    assert cnn["inputs"][0]["name"] == repo["cnn"].input
    assert cnn["inputs"][0]["shape"] == [-1, *repo["cnn"].row_shape]


def test_model_config_is_what_perf_analyzer_reads(triton: Any, repo: Repo) -> None:
    config = triton.get_model_config("cnn")
    assert config["name"] == "cnn"
    assert config["max_batch_size"] == 64
    assert config["platform"] == "onnxruntime_onnx"
    assert config["input"][0] | {"dims": None} == {
        "name": repo["cnn"].input,
        "data_type": "TYPE_FP32",
        "format": "FORMAT_NCHW",  # the model's preprocessing layout (an image model)
        "dims": None,
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
    }
    assert config["input"][0]["dims"] == list(repo["cnn"].row_shape)  # without the batch axis
    assert config["output"][0]["dims"] == [10]
    # the model has labels, in config.json only: no file for a client to read
    assert config["output"][0]["label_filename"] == ""
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    assert config["instance_group"][0]["kind"] in ("KIND_CPU", "KIND_GPU")
    assert_no_null(config)
    nobatch = triton.get_model_config("nobatch")
    assert nobatch["max_batch_size"] == 0
    assert "dynamic_batching" not in nobatch
    assert nobatch["input"][0]["dims"] == [1, 64]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infer(triton: Any, repo: Repo, binary: bool) -> None:
    model = repo["cnn"]
    x = rows(model, 3, seed=1)
    inp = httpclient.InferInput(model.input, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput(model.output, binary_data=binary)
    result = triton.infer(model.name, [inp], outputs=[out], request_id="req-7")
    got = result.as_numpy(model.output)
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, repo.expected(model, x), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == "cnn"
    assert response["model_version"] == "2"


def test_tritonclient_defaults_send_and_receive_binary(triton: Any, repo: Repo) -> None:
    model = repo["mlp"]
    x = rows(model, 5)
    inp = httpclient.InferInput(model.input, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary by default; no outputs: binary_data_output
    result = triton.infer(model.name, [inp])
    output = result.get_output(model.output)
    assert output["parameters"] == {"binary_data_size": 5 * 10 * 4}
    np.testing.assert_allclose(result.as_numpy(model.output), repo.expected(model, x), rtol=1e-5)


def test_tritonclient_gzip_request(triton: Any, repo: Repo) -> None:
    model = repo["mlp"]
    x = rows(model, 2)
    inp = httpclient.InferInput(model.input, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = triton.infer(model.name, [inp], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy(model.output), repo.expected(model, x), rtol=1e-5)


def test_binary_response_framing_over_raw_http(http: httpx.Client, repo: Repo) -> None:
    model = repo["mlp"]
    x = rows(model, 2)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": model.input,
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": model.output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = http.post(
        "/v2/models/mlp/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200
    n = int(r.headers["Inference-Header-Content-Length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 80
    got = np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(got, repo.expected(model, x), rtol=1e-5)


def test_json_without_content_type_nested_or_flat(http: httpx.Client, repo: Repo) -> None:
    model = repo["cnn"]
    x = rows(model, 2, seed=3)
    expected = repo.expected(model, x)
    nested = json.dumps(v2_json(model.input, x)).encode()
    flat_body = v2_json(model.input, x)
    flat_body["inputs"][0]["data"] = x.ravel().tolist()
    for body in (nested, json.dumps(flat_body).encode()):
        r = http.post("/v2/models/cnn/infer", content=body)  # no Content-Type header
        assert "content-type" not in r.request.headers
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [2, 10] and out["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(out["data"]).reshape(2, 10), expected, rtol=1e-5)
        assert_no_null(r.json())
        assert "id" not in r.json()  # not sent, not echoed, never null


def test_parameters_are_accepted_and_outputs_selected(http: httpx.Client, repo: Repo) -> None:
    model = repo["mlp"]
    x = rows(model, 1)
    body = v2_json(
        model.input,
        x,
        id="abc",
        parameters={"priority": 0, "custom": "yes", "binary_data_output": False},
        outputs=[{"name": "logits", "parameters": {"binary_data": False}}],
    )
    body["inputs"][0]["parameters"] = {"note": 1}
    r = http.post("/v2/models/mlp/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "abc"
    assert [o["name"] for o in r.json()["outputs"]] == ["logits"]


def test_versioned_infer_uses_that_version(http: httpx.Client, repo: Repo) -> None:
    model = repo["cnn"]
    x = rows(model, 1, seed=4)
    r = http.post("/v2/models/cnn/versions/2/infer", json=v2_json(model.input, x))
    assert r.status_code == 200
    got = np.array(r.json()["outputs"][0]["data"]).reshape(1, 10)
    np.testing.assert_allclose(got, repo.expected(model, x, version=2), rtol=1e-5)
    assert not np.allclose(got, repo.expected(model, x, version=1), rtol=1e-3)


def test_model_without_batch_axis(http: httpx.Client, repo: Repo) -> None:
    model = repo["nobatch"]
    x = rows(model, 1)
    r = http.post("/v2/models/nobatch/infer", json=v2_json(model.input, x))
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"]).reshape(1, 10)
    np.testing.assert_allclose(got, repo.expected(model, x), rtol=1e-5)
    r = http.post("/v2/models/nobatch/infer", json=v2_json(model.input, rows(model, 2)))
    assert r.status_code == 400


def test_concurrent_requests_are_batched_and_answered_each_their_own(
    server: RunningServer, http: httpx.Client, repo: Repo
) -> None:
    model = repo["mlp"]
    before = http.get("/v2/models/mlp/stats").json()["model_stats"][0]
    xs = [rows(model, 1, seed=100 + i) for i in range(32)]

    def call(x: np.ndarray) -> np.ndarray:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/v2/models/mlp/infer", json=v2_json(model.input, x))
            assert r.status_code == 200
            return np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 10)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, xs))
    expected = repo.expected(model, np.concatenate(xs))
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=1e-5, atol=1e-6)
    after = http.get("/v2/models/mlp/stats").json()["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 32
    assert (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
        == 32
    )
    assert after["execution_count"] - before["execution_count"] <= 32


def test_openapi_documents_every_route(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/models/{name}/config",
        "/v2/models/{name}/stats",
        "/v2/models/{name}/parity",
        "/v2/models/{name}/classify",
        "/v2/repository/index",
        "/v2/repository/models/{name}/load",
        "/v2/repository/models/{name}/unload",
        "/v1/models/{name}:predict",
        "/metrics",
    ):
        assert path in paths, path
    infer_body = paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert "inputs" in infer_body["application/json"]["schema"]["properties"]
    assert http.get("/docs").status_code == 200
