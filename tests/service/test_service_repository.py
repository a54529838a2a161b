"""Model management: the index with reasons, auth, load/unload, atomic swap
and unload under traffic (no accepted request fails)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from served_models import write_mlp
from service_harness import TOKEN, WAIT_S, Repo, RunningServer, rows, wait_until
from tritonclient.utils import InferenceServerException


def v2(model_input: str, x: np.ndarray) -> dict[str, Any]:
    shape = list(x.shape)
    return {
        "inputs": [{"name": model_input, "shape": shape, "datatype": "FP32", "data": x.tolist()}]
    }


def logits(r: httpx.Response) -> np.ndarray:
    out = r.json()["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def test_index_lists_every_model_with_state_and_reason(triton: Any) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    index = triton.get_model_repository_index(headers=headers)
    by_key = {(e["name"], e.get("version")): e for e in index}
    assert ("mlp", "1") in by_key and by_key["mlp", "1"]["state"] == "READY"
    assert by_key["cnn", "2"]["state"] == "READY"
    assert by_key["cnn", "1"]["state"] == "UNAVAILABLE"
    assert "version_policy serves the highest version" in by_key["cnn", "1"]["reason"]
    assert by_key["bad-sha", "1"]["state"] == "UNAVAILABLE"
    assert "does not match the manifest" in by_key["bad-sha", "1"]["reason"]
    assert "not an ONNX model" in by_key["garbage", "1"]["reason"]
    assert by_key["empty", None] == {
        "name": "empty",
        "state": "UNAVAILABLE",
        "reason": "no version folder",
    }
    assert not any(e["name"] == ".hidden" for e in index)
    for entry in index:
        assert all(v is not None for v in entry.values())


def test_index_ready_filter(http: httpx.Client, auth: dict[str, str]) -> None:
    r = http.post("/v2/repository/index", json={"ready": True}, headers=auth)
    assert r.status_code == 200
    assert {e["state"] for e in r.json()} == {"READY"}
    assert {"mlp", "cnn", "nobatch"} <= {e["name"] for e in r.json()}


@pytest.mark.parametrize(
    "path",
    ["/v2/repository/index", "/v2/repository/models/mlp/load", "/v2/repository/models/mlp/unload"],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer"])
def test_repository_routes_need_the_token(
    http: httpx.Client, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    r = http.post(path, headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in r.json()["error"]
    assert http.get("/v2/models/mlp/ready").status_code == 200  # nothing was unloaded


def test_load_failures_keep_the_rest_serving(
    http: httpx.Client, auth: dict[str, str], repo: Repo
) -> None:
    r = http.post("/v2/repository/models/nope/load", headers=auth)
    assert r.status_code == 404
    r = http.post("/v2/repository/models/bad-sha/load", headers=auth)
    assert r.status_code == 400
    assert "does not match the manifest" in r.json()["error"]
    r = http.post("/v2/repository/models/empty/load", headers=auth)
    assert r.status_code == 400 and "no version folder" in r.json()["error"]
    x = rows(repo["mlp"], 1)
    assert http.post("/v2/models/mlp/infer", json=v2("input", x)).status_code == 200


def test_unload_waits_for_the_request_in_flight(
    server: RunningServer, http: httpx.Client, auth: dict[str, str], repo: Repo
) -> None:
    model = repo["slow"]  # holds a lone request 1.5 s waiting for a batch
    x = rows(model, 1, seed=9)
    results: dict[str, httpx.Response] = {}
    slow = server.served("slow")

    def slow_request() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            results["r"] = c.post("/v2/models/slow/infer", json=v2(model.input, x))

    t = threading.Thread(target=slow_request)
    t.start()
    wait_until(lambda: slow.batcher.pending == 1, "the slow request queued")
    r = http.post("/v2/repository/models/slow/unload", headers=auth)
    assert r.status_code == 200 and r.json() == {"name": "slow", "state": "UNAVAILABLE"}
    # it waited for the request: by its answer the request was done with the
    # version (an unload that did not wait fails it with 503 BatcherClosed)
    assert slow.inflight == 0 and slow.batcher.pending == 0
    t.join()
    assert results["r"].status_code == 200
    np.testing.assert_allclose(logits(results["r"]), repo.expected(model, x), rtol=1e-5)

    r = http.post("/v2/models/slow/infer", json=v2(model.input, x))
    assert r.status_code == 503 and "unloaded" in r.json()["error"]
    assert http.get("/v2/models/slow/ready").status_code == 503
    index = http.post("/v2/repository/index", headers=auth).json()
    assert {"name": "slow", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index

    r = http.post("/v2/repository/models/slow/load", headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "READY"
    assert http.get("/v2/models/slow/ready").status_code == 200


class Hammer:
    """Clients that each send to ``swap`` in a loop, one request at a time,
    recording every (status, text) in order, until stopped."""

    def __init__(self, url: str, model_input: str, x: np.ndarray, clients: int = 4) -> None:
        self.seen: list[list[tuple[int, str]]] = [[] for _ in range(clients)]
        self._stop = threading.Event()
        body = v2(model_input, x)
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client, url, body, s) for s in self.seen]

    def _client(self, url: str, body: dict[str, Any], seen: list[tuple[int, str]]) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not self._stop.is_set():
                r = c.post("/v2/models/swap/infer", json=body)
                seen.append((r.status_code, r.text))

    def count(self, status: int) -> int:
        return sum(s == status for client in self.seen for s, _ in list(client))

    def wait_for(self, status: int, n: int, what: str) -> None:
        """Until ``n`` more answers with ``status`` than now have come back."""
        target = self.count(status) + n
        wait_until(lambda: self.count(status) >= target, what)
        for f in self._futures:
            if f.done():
                f.result()  # a client that died: its error, not a timeout

    def wait_each(self, status: int, what: str) -> None:
        """Until every client has had at least one answer with ``status``."""
        wait_until(lambda: all(any(s == status for s, _ in c) for c in self.seen), what)

    def finish(self) -> list[list[tuple[int, str]]]:
        self._stop.set()
        for f in self._futures:
            f.result(timeout=WAIT_S)
        self._pool.shutdown()
        return self.seen


def test_reload_and_new_version_under_traffic_fail_nothing(
    server: RunningServer, http: httpx.Client, auth: dict[str, str], repo: Repo
) -> None:
    model = repo["swap"]
    x = rows(model, 2, seed=5)
    v1 = repo.expected(model, x, version=1)
    hammer = Hammer(server.url, model.input, x)
    try:
        hammer.wait_for(200, 4, "traffic flowing before the reloads")
        for _ in range(3):  # same version, reloaded: a fresh session swapped in
            assert http.post("/v2/repository/models/swap/load", headers=auth).status_code == 200
        write_mlp(repo.path, "swap", seed=6)  # version 2 appears atomically
        r = http.post("/v2/repository/models/swap/load", headers=auth)
        assert r.status_code == 200 and r.json()["version"] == "2"
        hammer.wait_for(200, 21, "21 answers after version 2 was loaded")
    finally:
        seen = [s for client in hammer.finish() for s in client]
    assert len(seen) > 20
    assert {status for status, _ in seen} == {200}, [t for s, t in seen if s != 200][:3]
    v2_out = repo.expected(model, x, version=2)
    r = http.post("/v2/models/swap/infer", json=v2(model.input, x))
    np.testing.assert_allclose(logits(r), v2_out, rtol=1e-5)
    assert not np.allclose(v1, v2_out)
    assert http.get("/v2/models/swap").json()["versions"] == ["2"]
    assert http.get("/v2/models/swap/versions/1").status_code == 404
    index = http.post("/v2/repository/index", headers=auth).json()
    assert {
        "name": "swap",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "replaced by version 2",
    } in index


def test_unload_under_traffic_never_fails_an_accepted_request(
    server: RunningServer, http: httpx.Client, auth: dict[str, str], repo: Repo
) -> None:
    model = repo["swap"]
    x = rows(model, 1, seed=7)
    hammer = Hammer(server.url, model.input, x)
    try:
        hammer.wait_each(200, "an answer for every client before the unload")
        assert http.post("/v2/repository/models/swap/unload", headers=auth).status_code == 200
        hammer.wait_each(503, "a refusal for every client after the unload")
    finally:
        per_client = [[status for status, _ in client] for client in hammer.finish()]
    texts = [text for client in hammer.seen for status, text in client if status != 200]
    statuses = [s for client in per_client for s in client]
    assert statuses.count(200) > 0 and statuses.count(503) > 0
    assert set(statuses) == {200, 503}
    assert all("not ready: unloaded" in text for text in texts)
    for client in per_client:  # answered until the unload, refused after: never a failure
        first_refusal = client.index(503) if 503 in client else len(client)
        assert set(client[first_refusal:]) <= {503}
    assert http.post("/v2/repository/models/swap/load", headers=auth).status_code == 200


def test_tritonclient_load_and_unload(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(url=server.host_port)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    client.unload_model("nobatch", headers=headers)
    assert not client.is_model_ready("nobatch")
    client.load_model("nobatch", headers=headers)
    assert client.is_model_ready("nobatch")
    with pytest.raises(InferenceServerException, match="bearer token"):
        client.load_model("nobatch")
    client.close()
