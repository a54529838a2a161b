"""Loading never blocks serving (issue 19): beside a model whose warm-up
never ends (a Loop with a huge trip count), the port answers at once, the
good model serves, readiness says loading, and the load timeout turns the
endless one UNAVAILABLE with its reason. The server runs as a process (a
session that never ends must not hold the test's own process)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import numpy as np
import onnx
from graphs import write_bare
from served_models import mlp
from server_process import spawn
from service_harness import TOKEN, WAIT_S, wait_until

from bnfold.service.model_entry import FAILED

AUTH = {"Authorization": f"Bearer {TOKEN}"}

# (N, 4) -> (N, 4) plus a count to 2^62: its warm-up runs for ever.
SPIN = onnx.parser.parse_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    spin (float[N, 4] input) => (float[N, 4] output) {
      trip = Constant <value = int64 {4611686018427387904}> ()
      cond = Constant <value = bool {1}> ()
      start = Constant <value = float {0}> ()
      total = Loop (trip, cond, start) <body = step (int64 i, bool c, float acc)
                                                 => (bool c_out, float acc_out) {
          one = Constant <value = float {1}> ()
          acc_out = Add (acc, one)
          c_out = Identity (c)
      }>
      output = Add (input, total)
    }
    """
).SerializeToString()


def repository(root: Path) -> Path:
    repo = root / "models"
    write_bare(repo, "spin", 1, SPIN)
    write_bare(repo, "good", 1, mlp(5)[0])
    write_bare(repo, "broken", 1, b"not a graph")
    return repo


def index(url: str) -> dict[tuple[str, str | None], dict[str, str]]:
    r = httpx.post(f"{url}/v2/repository/index", headers=AUTH, timeout=WAIT_S)
    assert r.status_code == 200, r.text
    return {(e["name"], e.get("version")): e for e in r.json()}


def infer_good(url: str) -> httpx.Response:
    body = {
        "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.5] * 128}]
    }
    return httpx.post(f"{url}/v2/models/good/infer", json=body, timeout=WAIT_S)


def status(url: str, path: str) -> int:
    return httpx.get(f"{url}{path}", timeout=WAIT_S).status_code


def test_an_endless_warm_up_never_keeps_the_port_or_the_good_model(tmp_path: Path) -> None:
    """A load budget far longer than the test: 'spin' is loading throughout,
    and everything else answers meanwhile; SIGTERM still ends the server."""
    repo = repository(tmp_path)
    with spawn(repo, tmp_path, "--load-timeout", "3600") as server:
        url = server.url
        assert status(url, "/v2/health/live") == 200
        wait_until(lambda: status(url, "/v2/models/good/ready") == 200, "'good' serves")
        r = infer_good(url)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["shape"] == [2, 10]

        r = httpx.get(f"{url}/v2/health/ready", timeout=WAIT_S)
        assert r.status_code == 503
        assert r.json() == {"error": "server is not ready: loading models"}
        r = httpx.get(f"{url}/v2/models/spin/ready", timeout=WAIT_S)
        assert r.status_code == 503
        assert r.json() == {"error": "model 'spin' is not ready: loading"}
        wait_until(lambda: index(url)["broken", "1"]["state"] == "UNAVAILABLE", "'broken' fails")
        entries = index(url)
        assert entries["spin", "1"] == {
            "name": "spin",
            "version": "1",
            "state": "LOADING",
            "reason": "loading",
        }
        assert entries["good", "1"]["state"] == "READY"
        assert "not an ONNX model" in entries["broken", "1"]["reason"]

        server.proc.send_signal(signal.SIGTERM)
        server.proc.send_signal(signal.SIGTERM)  # no drain
        assert server.proc.wait(WAIT_S) in (0, -signal.SIGTERM)
    assert "loading stopped" in server.output()


def test_past_its_load_timeout_a_model_is_unavailable_and_the_rest_ready(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    with spawn(repo, tmp_path, "--load-timeout", "2", "--no-strict-readiness") as server:
        url = server.url
        wait_until(lambda: status(url, "/v2/health/ready") == 200, "the first load ends")
        entries = index(url)
        assert entries["spin", "1"]["state"] == "UNAVAILABLE"
        assert entries["spin", "1"]["reason"] == (
            "did not load within the load timeout (2 s; BNFOLD_LOAD_TIMEOUT_S); abandoned"
        )
        assert entries["good", "1"]["state"] == "READY"
        r = httpx.get(f"{url}/v2/models/spin/ready", timeout=WAIT_S)
        assert r.status_code == 503
        assert "did not load within the load timeout" in r.json()["error"]  # no file named
        r = httpx.get(f"{url}/v2/models/broken/ready", timeout=WAIT_S)
        assert r.json() == {"error": f"model 'broken' is not ready: {FAILED}"}
        r = infer_good(url)
        assert r.status_code == 200
        np.testing.assert_equal(np.isfinite(r.json()["outputs"][0]["data"]), True)
        # the warm-up was told to stop: loading it again times out the same way
        r = httpx.post(f"{url}/v2/repository/models/spin/load", headers=AUTH, timeout=WAIT_S)
        assert r.status_code == 400
        assert "did not load within the load timeout" in r.json()["error"]
        assert status(url, "/v2/models/good/ready") == 200
