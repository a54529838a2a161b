"""Fold on load for graphs that keep their weights in external data (issue 20).

torch's dynamo exporter (``torch.onnx.export(..., dynamo=True,
optimize=False)``) writes the weights to ``model.onnx.data`` beside the
graph. Laid out as a Triton repository (config.pbtxt, ``1/model.onnx`` and
``1/model.onnx.data``) and served with ``--fold-on-load``, the model serves
folded, with parity proven at load on the serving device; ``/parity``, the
metadata, the index and the log say so. Data that cannot be read from
inside the version folder leaves the original serving, with the reason and
what to do about it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from dynamo_models import BNS, bn_cnn, dynamo_export
from graphs import ort_run, rel_error
from grpc_harness import GrpcRunning, run_grpc_server
from service_harness import TOKEN, LogLines, base_settings, capture_server_log

from bnfold.folding import count_bn

pytestmark = pytest.mark.timeout(600)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
RTOL = 1e-5
BN = BNS  # BatchNorm2d layers in the exported network
CONFIG = """name: "dynamo"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 3, 16, 16 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 5 ] } ]
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real dynamo export: ``model.onnx`` + ``model.onnx.data``, batch dynamic."""
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("export")
    dynamo_export(bn_cnn(0), folder / "model.onnx")
    header = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    assert count_bn(onnx.load(str(folder / "model.onnx"))) == BN
    return folder


def triton_layout(repo: Path, export: Path, name: str = "dynamo") -> Path:
    """``<repo>/<name>/config.pbtxt`` and ``1/`` holding the export's two files."""
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(CONFIG.replace('"dynamo"', f'"{name}"'))
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copy(export / f, version / f)
    return version


@contextmanager
def serving(repo: Path, **overrides: Any) -> Iterator[tuple[GrpcRunning, httpx.Client]]:
    with (
        run_grpc_server(base_settings(repo, fold_on_load=True, **overrides)) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        yield server, http


def samples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def index_entry(http: httpx.Client, name: str) -> dict[str, Any]:
    r = http.post("/v2/repository/index", headers=AUTH)
    assert r.status_code == 200, r.text
    return next(e for e in r.json() if e["name"] == name and e.get("version") == "1")


@pytest.fixture
def server_log(monkeypatch: pytest.MonkeyPatch) -> LogLines:
    """What the server logs at INFO and above (its logger does not propagate)."""
    return capture_server_log(monkeypatch, logging.INFO)


def test_dynamo_export_with_external_data_serves_folded(
    export: Path, tmp_path: Path, server_log: LogLines
) -> None:
    version = triton_layout(tmp_path, export)
    with serving(tmp_path, log_level="info") as (server, http):
        meta = http.get("/v2/models/dynamo").json()
        fold = meta["parameters"]["fold_on_load"]
        assert fold["served"] == "folded", fold
        assert (fold["bn_before"], fold["bn_after"]) == (BN, 0)
        assert fold["reason"] == ""
        assert fold["parity"]["passed"] is True
        assert fold["parity"]["max_rel_error"] <= RTOL
        assert fold["parity"]["device"] == "CPUExecutionProvider"  # the serving device

        stored = http.get("/v2/models/dynamo/parity").json()
        outcome = stored["fold_on_load"]
        assert (outcome["served"], outcome["bn_before"], outcome["bn_after"]) == ("folded", BN, 0)
        assert outcome["report"]  # the fold report per BN
        # no manifest: the fold that serves, in the manifest's terms
        assert stored["folding"] == {
            "folded": True,
            "bn_before": BN,
            "bn_after": 0,
            "report": outcome["report"],
            "summary": {"bns": BN, "folded": BN, "partial": 0, "kept": 0, "ops_left": 0},
        }
        assert stored["reference"] == "original graph (fold on load, in memory)"

        # served over both protocols, against ONNX Runtime on the original files
        http_client = httpclient.InferenceServerClient(server.host_port, network_timeout=60)
        grpc_client = grpcclient.InferenceServerClient(server.grpc)
        try:
            for n, seed in ((1, 1), (5, 2), (8, 3)):
                x = samples(n, seed)
                want = ort_run(version / "model.onnx", {"x": x})
                inp = httpclient.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                got = http_client.infer("dynamo", [inp]).as_numpy("logits")
                assert rel_error(got, want) <= RTOL, n
                ginp = grpcclient.InferInput("x", list(x.shape), "FP32")
                ginp.set_data_from_numpy(x)
                got = grpc_client.infer("dynamo", [ginp]).as_numpy("logits")
                assert rel_error(got, want) <= RTOL, n
        finally:
            http_client.close()
            grpc_client.close()

        r = http.post("/v2/models/dynamo/parity", json={"n": 16})
        assert r.status_code == 200 and r.json()["passed"] is True, r.text

        entry = index_entry(http, "dynamo")
        assert entry["state"] == "READY"
        assert "folded on load: 3 BNs -> 0, parity max rel error" in entry["reason"]
    said = server_log.lines
    assert any("fold on load: 3 BNs -> 0" in m and "folded graph" in m for m in said), said


def test_external_data_that_escapes_is_not_read(export: Path, tmp_path: Path) -> None:
    """A data file that is a link out of the version folder: the graph is
    refused before ONNX Runtime reads it, as every such graph is."""
    repo = tmp_path / "repo"
    version = triton_layout(repo, export)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (version / "model.onnx.data").rename(outside / "model.onnx.data")
    os.symlink(outside / "model.onnx.data", version / "model.onnx.data")
    with serving(repo) as (_, http):
        entry = index_entry(http, "dynamo")
        assert entry["state"] == "UNAVAILABLE"
        assert "escapes the version" in entry["reason"]


def test_external_data_is_read_through_the_confined_reader(export: Path, tmp_path: Path) -> None:
    """The graph ONNX Runtime and fold on load take holds every weight, read
    from inside the version folder; a location that leaves it is refused."""
    version = triton_layout(tmp_path, export)
    from bnfold.service.files import embed_external_data

    data = (version / "model.onnx").read_bytes()
    model = onnx.load_from_string(embed_external_data(data, version, tmp_path))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    full = onnx.load(str(version / "model.onnx"))
    ours = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert ours
    for t in full.graph.initializer:
        np.testing.assert_array_equal(ours[t.name], onnx.numpy_helper.to_array(t))
    # a location that leaves the repository is refused by the reader, not followed
    shutil.copy(version / "model.onnx.data", tmp_path.parent / "model.onnx.data")
    bad = onnx.load_from_string(data)
    for t in bad.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../../" + e.value
    with pytest.raises(ValueError, match="not a file inside the model repository"):
        embed_external_data(bad.SerializeToString(), version, tmp_path)
