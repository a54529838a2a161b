"""Serving any repository as Triton does (issue 10), against the real server:
config.json, Triton's config.pbtxt or no configuration at all; bare
``model.onnx`` versions without a manifest; version_policy with every served
version at its /versions/{v} routes; fold on load with its parity proof;
--poll under traffic; strict readiness."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from graphs import RESNET_BN, ort_run, pbtxt, rel_error, resnet_block, write_bare
from served_models import cnn, mlp, write_mlp
from service_harness import TOKEN, RunningServer, base_settings, run_server, wait_until
from tritonclient.utils import InferenceServerException

from bnfold.service.model_entry import FAILED

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOT_LOADED = "not loaded yet: POST /v2/repository/models/m/load, or serve with --poll"
RTOL = 1e-5
GARBAGE = b"these bytes are not an ONNX model"


# ----- helpers


@contextmanager
def serving(repo: Path, **overrides: Any) -> Iterator[tuple[RunningServer, httpx.Client]]:
    with (
        run_server(base_settings(repo, **overrides)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield server, http


@contextmanager
def triton_client(server: RunningServer) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(url=server.host_port, network_timeout=30)
    try:
        yield client
    finally:
        client.close()


def infer(
    client: Any, model: str, input_name: str, x: np.ndarray, version: str = ""
) -> tuple[np.ndarray, str]:
    """Outputs and the version that answered, through tritonclient (binary)."""
    tensor = httpclient.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("logits", binary_data=True)]
    result = client.infer(model, [tensor], model_version=version, outputs=wanted)
    return result.as_numpy("logits"), result.get_response()["model_version"]


def index(http: httpx.Client) -> dict[tuple[str, str | None], dict[str, Any]]:
    r = http.post("/v2/repository/index", headers=AUTH)
    assert r.status_code == 200, r.text
    return {(e["name"], e.get("version")): e for e in r.json()}


def status(http: httpx.Client, path: str) -> int:
    return http.get(path).status_code


def samples(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def v2_body(input_name: str, x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": input_name, "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ]
    }


# ----- a repository as a Triton user brings it


CNN_PBTXT = pbtxt(
    "triton-cnn",
    input_name="image",
    input_dims=[1, 8, 8],
    output_dims=[10],
    max_batch_size=8,
    image=True,
    version_policy="{ latest: { num_versions: 1 } }",
    label_filename="labels.txt",
    extra="""\
dynamic_batching {
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 64 }
}
instance_group [ { kind: KIND_CPU count: 1 } ]
optimization { execution_accelerators { cpu_execution_accelerator: [] } }
""",
)
# Triton completes what a config.pbtxt leaves out (input, output) from the graph.
PICK_PBTXT = """\
name: "pick"
backend: "onnxruntime"
max_batch_size: 4
version_policy: { specific: { versions: [ 1, 3 ] } }
"""


def build_mixed(repo: Path) -> None:
    """triton-cnn: config.pbtxt, a bare version; bare: no configuration at all;
    every: config.json serving all versions (1 and 2, other weights); pick:
    config.pbtxt serving versions 1 and 3 of 3; broken: garbage bytes."""
    repo.mkdir(exist_ok=True)
    (repo / "triton-cnn").mkdir()
    (repo / "triton-cnn" / "config.pbtxt").write_text(CNN_PBTXT)
    (repo / "triton-cnn" / "labels.txt").write_text("".join(f"class-{i}\n" for i in range(10)))
    write_bare(repo, "triton-cnn", 1, cnn(5)[0])
    write_bare(repo, "bare", 1, mlp(6)[0])
    (repo / "every").mkdir()
    every = {"name": "every", "max_batch_size": 16, "version_policy": {"all": {}}}
    (repo / "every" / "config.json").write_text(json.dumps(every))
    write_bare(repo, "every", 1, mlp(7)[0])
    write_bare(repo, "every", 2, mlp(8)[0])
    (repo / "pick").mkdir()
    (repo / "pick" / "config.pbtxt").write_text(PICK_PBTXT)
    for v in (1, 2, 3):
        write_bare(repo, "pick", v, mlp(20 + v)[0])
    write_bare(repo, "broken", 1, GARBAGE)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    repo = tmp_path_factory.mktemp("mixed")
    build_mixed(repo)
    with run_server(base_settings(repo)) as server:
        yield server, repo


@pytest.fixture()
def mixed_http(mixed: tuple[RunningServer, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mixed[0].url, timeout=30) as http:
        yield http


def test_every_kind_of_model_folder_infers_as_onnx_runtime_does(
    mixed: tuple[RunningServer, Path],
) -> None:
    server, repo = mixed
    cases = [  # model, version asked, input, row shape, rows, the file that should answer
        ("triton-cnn", "", "image", (1, 8, 8), 8, "triton-cnn/1"),
        ("bare", "", "input", (64,), 5, "bare/1"),
        ("every", "1", "input", (64,), 3, "every/1"),
        ("every", "2", "input", (64,), 3, "every/2"),
        ("every", "", "input", (64,), 3, "every/2"),
        ("pick", "1", "input", (64,), 4, "pick/1"),
        ("pick", "3", "input", (64,), 4, "pick/3"),
        ("pick", "", "input", (64,), 4, "pick/3"),
    ]
    with triton_client(server) as client:
        for model, version, input_name, shape, n, folder in cases:
            x = samples(shape, n, seed=n)
            got, answered = infer(client, model, input_name, x, version)
            want = ort_run(repo / folder / "model.onnx", {input_name: x})
            assert answered == folder.split("/")[1], (model, version)
            assert got.shape == want.shape == (n, 10)
            assert rel_error(got, want) <= RTOL, (model, version)
        # the two served versions of `every` are different models
        x = samples((64,), 3)
        one, _ = infer(client, "every", "input", x, "1")
        two, _ = infer(client, "every", "input", x, "2")
        assert rel_error(one, two) > 0.1
        # max_batch_size 8 of the config.pbtxt is enforced
        with pytest.raises(InferenceServerException) as e:
            infer(client, "triton-cnn", "image", samples((1, 8, 8), 9))
        assert e.value.status() == "400"
        assert "8" in e.value.message()


def test_config_pbtxt_is_what_the_config_route_reports(mixed_http: httpx.Client) -> None:
    r = mixed_http.get("/v2/models/triton-cnn/config")
    assert r.status_code == 200
    config = r.json()
    assert config["name"] == "triton-cnn"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("image", "TYPE_FP32", [1, 8, 8])
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("logits", "TYPE_FP32", [10])
    ]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 64
    assert config["instance_group"][0]["kind"] == "KIND_CPU"

    meta = mixed_http.get("/v2/models/triton-cnn").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["config_source"] == "config.pbtxt"
    assert meta["parameters"]["max_batch_size"] == 8
    assert meta["parameters"]["dynamic_batching"] is True
    assert meta["parameters"]["provider"] == "CPUExecutionProvider"  # KIND_CPU

    # a pbtxt without input/output: completed from the graph
    pick = mixed_http.get("/v2/models/pick/config").json()
    assert pick["max_batch_size"] == 4
    assert [(t["name"], t["dims"]) for t in pick["input"]] == [("input", [64])]
    assert [(t["name"], t["dims"]) for t in pick["output"]] == [("logits", [10])]


def test_a_bare_model_onnx_is_completed_from_the_graph(mixed_http: httpx.Client) -> None:
    meta = mixed_http.get("/v2/models/bare").json()
    assert meta["versions"] == ["1"]
    assert meta["parameters"]["config_source"] == "the graph"
    assert meta["parameters"]["max_batch_size"] == 64  # every dimension 0 is symbolic
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    config = mixed_http.get("/v2/models/bare/config").json()
    assert config["max_batch_size"] == 64
    assert [t["dims"] for t in config["input"]] == [[64]]
    assert [t["dims"] for t in config["output"]] == [[10]]
    assert "dynamic_batching" in config

    entry = index(mixed_http)["bare", "1"]
    assert entry["state"] == "READY"
    assert "no manifest.json" in entry["reason"] and "sha256" in entry["reason"]

    # nothing to compare with: no reference.onnx, no fold on load
    for path in ("/v2/models/bare/parity", "/v2/models/bare/versions/1/parity"):
        r = mixed_http.post(path, json={"n": 4})
        assert r.status_code == 404, path
        assert r.json()["error"].startswith("no reference.onnx is stored")
    stored = mixed_http.get("/v2/models/bare/parity").json()
    assert stored["reference"] == "none"
    assert "fold_on_load" not in stored


def test_without_configuration_max_batch_size_follows_the_graph(tmp_path: Path) -> None:
    write_bare(tmp_path, "dynamic", 1, mlp(24)[0])
    write_bare(tmp_path, "fixed", 1, mlp(25, batch=1)[0])  # first dimension 1, not symbolic
    with serving(tmp_path, default_max_batch_size=16) as (server, http):
        meta = http.get("/v2/models/dynamic").json()
        assert meta["parameters"]["max_batch_size"] == 16
        config = http.get("/v2/models/fixed/config").json()
        assert config["max_batch_size"] == 0
        assert [t["dims"] for t in config["input"]] == [[1, 64]]  # the whole shape
        assert "dynamic_batching" not in config
        meta = http.get("/v2/models/fixed").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]
        assert meta["parameters"]["max_batch_size"] == 0
        with triton_client(server) as client:
            x = samples((64,), 1)
            got, _ = infer(client, "fixed", "input", x)
            want = ort_run(tmp_path / "fixed" / "1" / "model.onnx", {"input": x})
            assert rel_error(got, want) <= RTOL
            with pytest.raises(InferenceServerException) as e:
                infer(client, "dynamic", "input", samples((64,), 17))
            assert e.value.status() == "400"


def test_every_served_version_answers_at_its_own_routes(mixed_http: httpx.Client) -> None:
    http = mixed_http
    for v in ("1", "2"):
        base = f"/v2/models/every/versions/{v}"
        assert status(http, f"{base}/ready") == 200
        meta = http.get(base).json()
        assert meta["versions"] == [v]
        assert meta["parameters"]["config_source"] == "config.json"
        assert meta["parameters"]["max_batch_size"] == 16
        assert http.get(f"{base}/config").json()["max_batch_size"] == 16
        x = samples((64,), 2)
        r = http.post(f"{base}/infer", json=v2_body("input", x))
        assert r.status_code == 200 and r.json()["model_version"] == v
        stats = http.get(f"{base}/stats").json()["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [("every", v)]
        assert stats[0]["inference_count"] >= 2
        assert http.get(f"{base}/parity").json()["model_version"] == v
        assert http.post(f"{base}/parity", json={"n": 2}).status_code == 404  # bare files
    assert http.get("/v2/models/every/config").json()["max_batch_size"] == 16
    every_stats = [
        s["version"]
        for s in http.get("/v2/models/stats").json()["model_stats"]
        if s["name"] == "every"
    ]
    assert sorted(every_stats) == ["1", "2"]
    assert status(http, "/v2/models/every/ready") == 200
    assert status(http, "/v2/models/every/versions/3/ready") == 404
    assert status(http, "/v2/models/every/versions/x/ready") == 400

    entries = index(http)
    assert entries["every", "1"]["state"] == entries["every", "2"]["state"] == "READY"
    # specific { versions: [1, 3] }: version 2 is listed, not served
    assert entries["pick", "1"]["state"] == entries["pick", "3"]["state"] == "READY"
    assert entries["pick", "2"] == {
        "name": "pick",
        "version": "2",
        "state": "UNAVAILABLE",
        "reason": "not served: the version_policy serves versions 1, 3",
    }
    r = http.get("/v2/models/pick/versions/2/ready")
    assert r.status_code == 404
    assert "serving 1, 3" in r.json()["error"]
    assert status(http, "/v2/models/pick/versions/1/ready") == 200


def test_a_broken_model_is_listed_with_its_reason(mixed_http: httpx.Client) -> None:
    entry = index(mixed_http)["broken", "1"]
    assert entry["state"] == "UNAVAILABLE"
    assert "not an ONNX model" in entry["reason"]
    r = mixed_http.get("/v2/models/broken/ready")
    assert r.status_code == 503  # a public route: the reason stays behind the token
    assert r.json() == {"error": f"model 'broken' is not ready: {FAILED}"}


def test_strict_readiness_follows_the_broken_model(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    build_mixed(repo)
    with serving(repo) as (_, http):
        r = http.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.json()["error"] == f"server is not ready: model 'broken' is not ready: {FAILED}"
        assert status(http, "/v2/health/live") == 200
        assert status(http, "/v2/models/bare/ready") == 200  # the others serve meanwhile

        # the same repository, readiness not strict: ready as soon as it started
        with serving(repo, strict_readiness=False) as (_, lenient):
            assert status(lenient, "/v2/health/ready") == 200
            assert status(lenient, "/v2/models/broken/ready") == 503

        shutil.rmtree(repo / "broken")  # no poll, no restart
        wait_until(lambda: status(http, "/v2/health/ready") == 200, "ready without 'broken'")
        assert index(http).get(("broken", "1"), {}).get("state") != "READY"


def test_an_empty_repository_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with serving(tmp_path / "empty") as (_, http):
        r = http.get("/v2/health/ready")
        assert r.status_code == 503
        assert "no model is served" in r.json()["error"]
        assert status(http, "/v2/health/live") == 200
        assert index(http) == {}
    with serving(tmp_path / "empty", strict_readiness=False) as (_, http):
        assert status(http, "/v2/health/ready") == 200


def test_config_json_and_config_pbtxt_together_are_refused(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_bare(repo, "both", 1, mlp(9)[0])
    (repo / "both" / "config.json").write_text(json.dumps({"name": "both", "max_batch_size": 4}))
    (repo / "both" / "config.pbtxt").write_text('name: "both"\nmax_batch_size: 4\n')
    write_bare(repo, "fine", 1, mlp(10)[0])
    with serving(repo) as (_, http):
        entry = index(http)["both", "1"]
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"] == "both config.json and config.pbtxt are present; keep one"
        r = http.get("/v2/models/both/ready")
        assert r.status_code == 503
        assert r.json()["error"] == f"model 'both' is not ready: {FAILED}"
        r = http.get("/v2/health/ready")
        assert r.status_code == 503 and "'both'" in r.json()["error"]
        r = http.post("/v2/repository/models/both/load", headers=AUTH)
        assert r.status_code == 400
        assert "keep one" in r.json()["error"]
        assert status(http, "/v2/models/fine/ready") == 200

        (repo / "both" / "config.json").unlink()  # fixed by hand, loaded on request
        r = http.post("/v2/repository/models/both/load", headers=AUTH)
        assert r.status_code == 200, r.text
        assert http.get("/v2/models/both").json()["parameters"]["config_source"] == "config.pbtxt"
        assert status(http, "/v2/health/ready") == 200


REFUSED_PBTXT = {
    "misnamed": ('name: "other"\nmax_batch_size: 4\n', "does not match the model folder"),
    "tensorrt": ('platform: "tensorrt_plan"\n', "'tensorrt_plan' models are not served"),
    "typo": ("max_batch_sise: 4\n", "config.pbtxt: 1:"),  # Triton's parser: line, column
    "sequence": ("sequence_batching { }\n", "sequence batching is not supported"),
    "wrongdims": (
        pbtxt("wrongdims", input_name="input", input_dims=[65], output_dims=[10], max_batch_size=4),
        "shape [65] vs graph [64]",
    ),
    "flag": (
        'parameters { key: "fold_on_load" value { string_value: "maybe" } }\n',
        "fold_on_load must be true or false",
    ),
}


def test_a_config_pbtxt_triton_would_refuse_is_refused_with_its_reason(tmp_path: Path) -> None:
    for name, (text, _) in REFUSED_PBTXT.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(text)
        write_bare(tmp_path, name, 1, mlp(3)[0])
    (tmp_path / "noversion").mkdir()
    (tmp_path / "noversion" / "config.pbtxt").write_text('name: "noversion"\n')
    with serving(tmp_path) as (_, http):
        entries = index(http)
        for name, (_, reason) in REFUSED_PBTXT.items():
            assert entries[name, "1"]["state"] == "UNAVAILABLE", name
            assert reason in entries[name, "1"]["reason"], (name, entries[name, "1"])
            r = http.get(f"/v2/models/{name}/ready")
            assert r.status_code == 503 and r.json()["error"].endswith(FAILED), name
        assert entries["noversion", None] == {
            "name": "noversion",
            "state": "UNAVAILABLE",
            "reason": "no version folder",
        }
        r = http.get("/v2/health/ready")
        assert r.status_code == 503
        assert "(and 6 more)" in r.json()["error"]


# ----- fold on load


def _resnet_repo(repo: Path, name: str = "resnet") -> Path:
    write_bare(repo, name, 1, resnet_block(11))
    return repo / name / "1" / "model.onnx"


def test_fold_on_load_serves_the_folded_graph_when_parity_holds(tmp_path: Path) -> None:
    original = _resnet_repo(tmp_path)
    with serving(tmp_path, fold_on_load=True) as (server, http):
        meta = http.get("/v2/models/resnet").json()
        fold = meta["parameters"]["fold_on_load"]
        assert fold["served"] == "folded"
        assert fold["bn_before"] == RESNET_BN
        assert fold["bn_after"] == 0
        assert fold["reason"] == ""
        assert fold["parity"]["passed"] is True
        assert fold["parity"]["max_rel_error"] <= RTOL
        assert fold["parity"]["top1_agreement"] == 1.0
        assert meta["parameters"]["max_batch_size"] == 64
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4, 8, 8]}]

        with triton_client(server) as client:
            for n in (1, 7, 64):
                x = samples((4, 8, 8), n, seed=n)
                got, version = infer(client, "resnet", "x", x)
                assert version == "1"
                assert rel_error(got, ort_run(original, {"x": x})) <= RTOL, n

        r = http.post("/v2/models/resnet/parity", json={"n": 16})
        assert r.status_code == 200, r.text
        parity = r.json()
        assert parity["passed"] is True
        assert parity["n_samples"] == 16
        assert parity["max_rel_error"] <= RTOL
        assert parity["top1_agreement"] == 1.0
        assert parity["outputs"]["logits"]["passed"] is True
        # the same through the version's route, with inputs given
        x = samples((4, 8, 8), 3, seed=5)
        r = http.post("/v2/models/resnet/versions/1/parity", json=v2_body("x", x))
        assert r.status_code == 200 and r.json()["passed"] is True
        assert r.json()["n_samples"] == 3

        stored = http.get("/v2/models/resnet/parity").json()
        outcome = stored["fold_on_load"]
        assert outcome["served"] == "folded"
        assert (outcome["bn_before"], outcome["bn_after"]) == (RESNET_BN, 0)
        assert outcome["parity"]["passed"] is True
        assert outcome["report"]  # the fold report, in full here only
        assert "report" not in fold

        entry = index(http)["resnet", "1"]
        assert entry["state"] == "READY"
        assert "parity failed" not in entry["reason"]


def test_fold_on_load_leaves_a_converted_model_as_it_is(tmp_path: Path) -> None:
    write_mlp(tmp_path, "converted", seed=2)  # folded already, reference.onnx beside it
    with serving(tmp_path, fold_on_load=True) as (_, http):
        fold = http.get("/v2/models/converted").json()["parameters"]["fold_on_load"]
        assert (fold["served"], fold["bn_before"], fold["bn_after"]) == ("original", 0, 0)
        assert "no BatchNormalization" in fold["reason"]
        entry = index(http)["converted", "1"]
        assert entry["state"] == "READY"
        assert "no BatchNormalization" in entry["reason"]
        assert "sha256" not in entry["reason"]  # checked against its manifest
        r = http.post("/v2/models/converted/parity", json={"n": 16})  # the stored reference
        assert r.status_code == 200 and r.json()["passed"] is True
        assert http.get("/v2/models/converted/parity").json()["reference"] == "reference.onnx"


def test_fold_on_load_serves_the_original_when_parity_fails(tmp_path: Path) -> None:
    original = _resnet_repo(tmp_path)
    # bit-exact required: folding reorders float operations, so it cannot hold
    with serving(tmp_path, fold_on_load=True, fold_rtol=0.0) as (server, http):
        fold = http.get("/v2/models/resnet").json()["parameters"]["fold_on_load"]
        assert fold["served"] == "original"
        assert fold["bn_before"] == RESNET_BN
        assert fold["bn_after"] == 0  # folded, then not served
        assert "parity failed" in fold["reason"]
        assert fold["parity"]["passed"] is False
        assert 0 < fold["parity"]["max_rel_error"] <= RTOL  # close, not exact

        outcome = http.get("/v2/models/resnet/parity").json()["fold_on_load"]
        assert outcome["served"] == "original"
        assert "parity failed" in outcome["reason"]

        entry = index(http)["resnet", "1"]
        assert entry["state"] == "READY"
        assert "parity failed" in entry["reason"]
        assert "served the original" in entry["reason"]

        with triton_client(server) as client:
            x = samples((4, 8, 8), 6)
            got, _ = infer(client, "resnet", "x", x)
        assert rel_error(got, ort_run(original, {"x": x})) <= RTOL
        # the original serves and no reference is kept: nothing to compare with
        assert http.post("/v2/models/resnet/parity", json={"n": 4}).status_code == 404


def test_fold_on_load_per_model_in_config_pbtxt_and_config_json(tmp_path: Path) -> None:
    on = 'parameters { key: "fold_on_load" value { string_value: "true" } }\n'
    spec: dict[str, Any] = {"input_name": "x", "input_dims": [4, 8, 8], "output_dims": [10]}
    for name, text in (
        ("pbtxt-on", pbtxt("pbtxt-on", max_batch_size=8, extra=on, **spec)),
        ("pbtxt-plain", pbtxt("pbtxt-plain", max_batch_size=8, **spec)),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(text)
        _resnet_repo(tmp_path, name)
    (tmp_path / "json-on").mkdir()
    json_on = {"name": "json-on", "max_batch_size": 8, "fold_on_load": True}
    (tmp_path / "json-on" / "config.json").write_text(json.dumps(json_on))
    original = _resnet_repo(tmp_path, "json-on")
    _resnet_repo(tmp_path, "bare-plain")

    with serving(tmp_path) as (server, http):  # the server's fold_on_load is off
        for name in ("pbtxt-on", "json-on"):
            fold = http.get(f"/v2/models/{name}").json()["parameters"]["fold_on_load"]
            assert (fold["served"], fold["bn_before"], fold["bn_after"]) == (
                "folded",
                RESNET_BN,
                0,
            ), name
            assert fold["parity"]["passed"] is True
            r = http.post(f"/v2/models/{name}/parity", json={"n": 8})
            assert r.status_code == 200 and r.json()["passed"] is True
        for name in ("pbtxt-plain", "bare-plain"):
            assert "fold_on_load" not in http.get(f"/v2/models/{name}").json()["parameters"]
            assert http.post(f"/v2/models/{name}/parity", json={"n": 8}).status_code == 404
        with triton_client(server) as client:
            x = samples((4, 8, 8), 8)
            want = ort_run(original, {"x": x})
            for name in ("pbtxt-on", "json-on", "pbtxt-plain", "bare-plain"):
                got, _ = infer(client, name, "x", x)
                assert rel_error(got, want) <= RTOL, name


# ----- watching the repository (--poll) and explicit loads


class Traffic:
    """A thread sending requests to one route until stopped; every answer kept."""

    def __init__(self, url: str, path: str, body: dict[str, Any]) -> None:
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, path, body), daemon=True)

    def _run(self, url: str, path: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not self._stop.is_set():
                r = http.post(path, json=body)
                version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                self.answers.append((r.status_code, version))

    def versions(self) -> set[str]:
        return {v for code, v in list(self.answers) if code == 200}

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()


def test_poll_swaps_in_a_new_version_under_traffic_and_drops_a_removed_model(
    tmp_path: Path,
) -> None:
    write_mlp(tmp_path, "m", seed=0)
    write_bare(tmp_path, "gone", 1, mlp(12)[0])
    x = samples((64,), 2)
    with serving(tmp_path, poll_s=0.2) as (server, http):
        assert status(http, "/v2/health/ready") == 200
        with Traffic(server.url, "/v2/models/m/infer", v2_body("input", x)) as traffic:
            wait_until(lambda: len(traffic.answers) >= 20, "traffic on version 1")
            write_mlp(tmp_path, "m", seed=1)  # version 2, renamed into place
            wait_until(
                lambda: status(http, "/v2/models/m/versions/2/ready") == 200, "version 2 ready"
            )
            wait_until(lambda: "2" in traffic.versions(), "answers from version 2")
            seen = len(traffic.answers)
            wait_until(lambda: len(traffic.answers) >= seen + 20, "more traffic on version 2")
        failed = [a for a in traffic.answers if a[0] != 200]
        assert not failed, failed[:5]
        assert traffic.versions() == {"1", "2"}
        # once version 2 answered, version 1 never did again
        order = [v for _, v in traffic.answers]
        assert "1" not in order[order.index("2") :]

        r = http.post("/v2/models/m/infer", json=v2_body("input", x))
        out = r.json()["outputs"][0]
        got = np.array(out["data"], np.float32).reshape(out["shape"])
        assert rel_error(got, ort_run(tmp_path / "m" / "2" / "model.onnx", {"input": x})) <= RTOL
        entries = index(http)
        assert entries["m", "2"]["state"] == "READY"
        assert entries["m", "1"]["state"] == "UNAVAILABLE"
        assert status(http, "/v2/models/m/versions/1/ready") == 404

        # version 2 removed: version 1 serves again, under traffic too
        with Traffic(server.url, "/v2/models/m/infer", v2_body("input", x)) as traffic:
            wait_until(lambda: len(traffic.answers) >= 20, "traffic on version 2")
            shutil.rmtree(tmp_path / "m" / "2")
            wait_until(
                lambda: status(http, "/v2/models/m/versions/1/ready") == 200, "version 1 back"
            )
            wait_until(lambda: "1" in traffic.versions(), "answers from version 1")
        assert not [a for a in traffic.answers if a[0] != 200]
        assert status(http, "/v2/models/m/versions/2/ready") == 404
        assert index(http)["m", "1"]["state"] == "READY"

        assert status(http, "/v2/models/gone/ready") == 200
        shutil.rmtree(tmp_path / "gone")
        wait_until(lambda: status(http, "/v2/models/gone/ready") in (404, 503), "'gone' unloaded")
        assert index(http).get(("gone", "1"), {}).get("state") != "READY"
        assert all(
            e["name"] != "gone"
            for e in http.post("/v2/repository/index", json={"ready": True}, headers=AUTH).json()
        )
        assert status(http, "/v2/health/ready") == 200  # a removed model stops counting


def test_poll_loads_a_new_model_folder(tmp_path: Path) -> None:
    with serving(tmp_path, poll_s=0.2) as (server, http):
        r = http.get("/v2/health/ready")
        assert r.status_code == 503 and "no model is served" in r.json()["error"]
        staging = tmp_path / ".tmp-late"
        write_bare(staging.parent, staging.name, 1, cnn(14)[0])
        staging.rename(tmp_path / "late")  # the whole model folder appears at once
        wait_until(lambda: status(http, "/v2/models/late/ready") == 200, "'late' loaded")
        assert index(http)["late", "1"]["state"] == "READY"
        with triton_client(server) as client:
            x = samples((1, 8, 8), 3)
            got, version = infer(client, "late", "image", x)
        assert version == "1"
        assert rel_error(got, ort_run(tmp_path / "late" / "1" / "model.onnx", {"image": x})) <= RTOL
        assert status(http, "/v2/health/ready") == 200


MLP_SPEC: dict[str, Any] = {"input_name": "input", "input_dims": [64], "output_dims": [10]}


def _edited_repo(repo: Path) -> Path:
    """edited: config.pbtxt (the highest version, max_batch_size 8), versions 1 and 2."""
    (repo / "edited").mkdir()
    config = repo / "edited" / "config.pbtxt"
    config.write_text(pbtxt("edited", max_batch_size=8, **MLP_SPEC))
    write_bare(repo, "edited", 1, mlp(18)[0])
    write_bare(repo, "edited", 2, mlp(19)[0])
    return config


def _replace(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)


def test_poll_applies_a_new_version_policy(tmp_path: Path) -> None:
    config = _edited_repo(tmp_path)
    with serving(tmp_path, poll_s=0.2) as (_, http):
        assert http.get("/v2/models/edited/config").json()["max_batch_size"] == 8
        assert status(http, "/v2/models/edited/versions/1/ready") == 404
        assert "the highest version" in index(http)["edited", "1"]["reason"]
        edited = pbtxt("edited", max_batch_size=2, version_policy="{ all: {} }", **MLP_SPEC)
        _replace(config, edited)
        wait_until(
            lambda: status(http, "/v2/models/edited/versions/1/ready") == 200, "version 1 served"
        )
        assert http.get("/v2/models/edited/versions/1/config").json()["max_batch_size"] == 2
        entries = index(http)
        assert entries["edited", "1"]["state"] == entries["edited", "2"]["state"] == "READY"
        x = samples((64,), 2)
        r = http.post("/v2/models/edited/versions/1/infer", json=v2_body("input", x))
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        r = http.post(
            "/v2/models/edited/versions/1/infer", json=v2_body("input", samples((64,), 3))
        )
        assert r.status_code == 400  # 3 rows over the new max_batch_size 2


def test_without_poll_a_new_version_waits_for_an_explicit_load(tmp_path: Path) -> None:
    write_mlp(tmp_path, "m", seed=0)
    x = samples((64,), 2)
    with serving(tmp_path) as (_, http):
        write_mlp(tmp_path, "m", seed=1)
        entries = index(http)
        assert entries["m", "1"]["state"] == "READY"
        assert entries["m", "2"] == {
            "name": "m",
            "version": "2",
            "state": "UNAVAILABLE",
            "reason": NOT_LOADED,
        }
        assert status(http, "/v2/models/m/versions/2/ready") == 404
        r = http.post("/v2/models/m/infer", json=v2_body("input", x))
        assert r.json()["model_version"] == "1"
        assert status(http, "/v2/health/ready") == 200  # version 1 still serves

        r = http.post("/v2/repository/models/m/load", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "2" and r.json()["state"] == "READY"
        assert index(http)["m", "2"]["state"] == "READY"
        assert status(http, "/v2/models/m/versions/2/ready") == 200
        r = http.post("/v2/models/m/infer", json=v2_body("input", x))
        assert r.json()["model_version"] == "2"


# ----- the watch and the configuration route, found by the tests above


def test_poll_applies_a_changed_config_to_the_versions_it_keeps(tmp_path: Path) -> None:
    config = _edited_repo(tmp_path)
    with serving(tmp_path, poll_s=0.2) as (_, http):
        edited = pbtxt("edited", max_batch_size=2, version_policy="{ all: {} }", **MLP_SPEC)
        _replace(config, edited)
        wait_until(
            lambda: status(http, "/v2/models/edited/versions/1/ready") == 200, "version 1 served"
        )
        # version 2 served before the edit: it must serve the edited configuration too
        assert http.get("/v2/models/edited/versions/2/config").json()["max_batch_size"] == 2
        r = http.post("/v2/models/edited/infer", json=v2_body("input", samples((64,), 3)))
        assert r.status_code == 400  # 3 rows over max_batch_size 2


def test_poll_retries_a_version_fixed_in_place(tmp_path: Path) -> None:
    write_bare(tmp_path, "fixme", 1, GARBAGE)
    write_bare(tmp_path, "ok", 1, mlp(15)[0])
    with serving(tmp_path, poll_s=0.2) as (_, http):
        assert status(http, "/v2/models/fixme/ready") == 503
        assert status(http, "/v2/health/ready") == 503
        # a model appearing after start: once it serves, the watch has looked at
        # the repository (every folder, in one pass) with fixme still broken
        write_bare(tmp_path, "probe", 1, mlp(17)[0])
        wait_until(lambda: status(http, "/v2/models/probe/ready") == 200, "a poll after start")
        assert status(http, "/v2/models/fixme/ready") == 503
        fixed = tmp_path / "fixme" / "1" / "model.onnx.new"
        fixed.write_bytes(mlp(16)[0])
        fixed.rename(fixed.with_suffix(""))  # model.onnx replaced atomically
        wait_until(lambda: status(http, "/v2/models/fixme/ready") == 200, "'fixme' reloaded")
        assert status(http, "/v2/health/ready") == 200


def test_poll_retries_a_version_written_file_by_file(tmp_path: Path) -> None:
    write_mlp(tmp_path, "m", seed=0)
    with serving(tmp_path, poll_s=0.2) as (_, http):
        (tmp_path / "m" / "2").mkdir()  # cp -r copies the folder, then its files
        wait_until(
            lambda: (
                index(http)["m", "2"]["state"] == "UNAVAILABLE"
                and "model.onnx" in index(http)["m", "2"]["reason"]
            ),
            "the watch tried the empty version 2",
        )
        (tmp_path / "m" / "2" / "model.onnx").write_bytes(mlp(1)[0])
        wait_until(lambda: status(http, "/v2/models/m/versions/2/ready") == 200, "version 2 loaded")


def test_the_config_route_reports_the_version_policy(mixed_http: httpx.Client) -> None:
    every = mixed_http.get("/v2/models/every/config").json()
    assert every["version_policy"] == {"all": {}}
    pick = mixed_http.get("/v2/models/pick/config").json()
    assert pick["version_policy"] == {"specific": {"versions": [1, 3]}}


def test_unversioned_metadata_lists_every_ready_version(mixed_http: httpx.Client) -> None:
    # Triton (TRITONSERVER_ServerModelMetadata): without a version, every ready one
    assert mixed_http.get("/v2/models/every").json()["versions"] == ["1", "2"]
    assert mixed_http.get("/v2/models/pick").json()["versions"] == ["1", "3"]
