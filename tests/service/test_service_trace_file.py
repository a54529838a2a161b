"""Triton's trace mode (``--trace-config triton,file=PATH``): the settings
as Triton reports them, and the trace file's records as Triton writes them,
read back after a real server (HTTP and gRPC, tritonclient) has stopped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_harness import run_grpc_server
from pydantic import ValidationError
from served_models import write_mlp
from service_harness import base_settings
from tritonclient.utils import InferenceServerException

from bnfold.service.settings import Settings

MODEL = "mlp"
COMPUTE = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]
STAMPS = ["REQUEST_START", "QUEUE_START", *COMPUTE, "REQUEST_END"]
HTTP_STAMPS = ["HTTP_RECV_START", "HTTP_RECV_END", *STAMPS, "HTTP_SEND_START", "HTTP_SEND_END"]
GRPC_STAMPS = ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END", *STAMPS, "GRPC_SEND_START"]
TRITON_QA = Path(__file__).resolve().parents[1] / "triton_qa" / "qa"
REFUSED = "trace file location can not be updated through network protocol"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("trace-file")
    write_mlp(repo, MODEL)
    return repo


def settings(repo: Path, *config: str) -> Settings:
    return base_settings(repo, api_token=None, trace_config=list(config))


def x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)


def infer_http(client: triton_http.InferenceServerClient, seed: int) -> None:
    data = triton_http.InferInput("input", [1, 64], "FP32")
    data.set_data_from_numpy(x(seed))
    client.infer(MODEL, [data], request_id=f"http-{seed}")


def infer_grpc(client: triton_grpc.InferenceServerClient, seed: int) -> None:
    data = triton_grpc.InferInput("input", [1, 64], "FP32")
    data.set_data_from_numpy(x(seed))
    client.infer(MODEL, [data], request_id=f"grpc-{seed}")


def traces(path: Path) -> dict[int, list[dict[str, Any]]]:
    """The file's records (one JSON array), by trace id."""
    by_id: dict[int, list[dict[str, Any]]] = {}
    for record in json.loads(path.read_text()):
        by_id.setdefault(record["id"], []).append(record)
    return by_id


def test_records_of_http_and_grpc_inferences(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    config = (f"triton,file={path}", "level=TIMESTAMPS", "rate=1")
    with run_grpc_server(settings(repo, *config)) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        rpc = triton_grpc.InferenceServerClient(server.grpc)
        expected = {
            "trace_file": str(path),
            "trace_level": ["TIMESTAMPS"],
            "trace_rate": "1",
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_mode": "triton",
        }
        assert http.get_trace_settings() == expected
        assert http.get_trace_settings(model_name=MODEL) == expected
        got = rpc.get_trace_settings(as_json=True)["settings"]
        assert {k: v["value"] for k, v in got.items()} == {
            k: v if isinstance(v, list) else [v] for k, v in expected.items()
        }
        assert path.read_text() == "["  # opened at start
        infer_http(http, 0)
        infer_grpc(rpc, 1)
        infer_http(http, 2)
        http.close()
        rpc.close()
    by_id = traces(path)
    assert sorted(by_id) == [1, 2, 3]
    for trace_id, request in zip((1, 2, 3), ("http-0", "grpc-1", "http-2"), strict=True):
        header, *stamps = by_id[trace_id]
        assert header == {
            "id": trace_id,
            "model_name": MODEL,
            "model_version": 1,
            "request_id": request,
        }
        names = HTTP_STAMPS if request.startswith("http") else GRPC_STAMPS
        assert [s["timestamps"][0]["name"] for s in stamps] == names
        ns = [s["timestamps"][0]["ns"] for s in stamps]
        assert ns == sorted(ns) and ns[0] > 0


def trace_summary(path: Path) -> str:
    """What Triton's trace_summary.py prints of ``path``, each trace shown (``-t``)."""
    done = subprocess.run(
        [sys.executable, "trace_summary.py", "-t", str(path)],
        cwd=TRITON_QA / "common",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def shown(summary: str) -> tuple[int, int]:
    """L0_trace's test.sh counts: lines naming COMPUTE_INPUT_END, lines
    starting with the model's name (one per trace shown)."""
    lines = summary.splitlines()
    return sum("COMPUTE_INPUT_END" in ln for ln in lines), sum(ln.startswith(MODEL) for ln in lines)


def test_trace_summary_counts_of_l0_trace(repo: Path, tmp_path: Path) -> None:
    """L0_trace's test.sh, its checks of the files through trace_summary.py:
    level OFF at start, TIMESTAMPS through the API, then 10 HTTP and 10 gRPC
    inferences: 20 traces shown; rate 6 with the model's log_frequency 2:
    the 6th, 12th and 18th of 20 traced, two in PATH.0, one in PATH.1 at
    shutdown, the model's trace_file refused."""
    off = tmp_path / "trace_off_to_min.log"
    with run_grpc_server(settings(repo, f"triton,file={off}", "level=OFF", "rate=1")) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        rpc = triton_grpc.InferenceServerClient(server.grpc)
        after = http.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        assert (after["trace_level"], after["trace_rate"], after["trace_mode"]) == (
            ["TIMESTAMPS"],
            "1",
            "triton",
        )
        for seed in range(10):
            infer_http(http, seed)
            infer_grpc(rpc, seed)
        http.close()
        rpc.close()
    assert shown(trace_summary(off)) == (20, 20)

    path = tmp_path / "global_trace.log"
    config = (f"triton,file={path}", "level=TIMESTAMPS", "rate=6")
    with run_grpc_server(settings(repo, *config)) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        rpc = triton_grpc.InferenceServerClient(server.grpc)
        with pytest.raises(InferenceServerException, match=REFUSED):
            http.update_trace_settings(MODEL, {"trace_file": "global_trace.log"})
        after = http.update_trace_settings(MODEL, {"log_frequency": "2"})
        assert (after["trace_rate"], after["log_frequency"]) == ("6", "2")
        for seed in range(10):
            infer_http(http, seed)
            infer_grpc(rpc, seed)
        http.close()
        rpc.close()
    assert shown(trace_summary(tmp_path / "global_trace.log.0")) == (2, 2)
    assert shown(trace_summary(tmp_path / "global_trace.log.1")) == (1, 1)
    assert not (tmp_path / "global_trace.log.2").exists()


def test_triton_trace_summary_reads_the_file(repo: Path, tmp_path: Path) -> None:
    """Triton's own reader of its trace files (qa/common/trace_summary.py,
    vendored unchanged) on the file of a real server that answered 3 HTTP
    and 2 gRPC inferences: each front end's requests counted per model, with
    the handler's queue and compute breakdown; HTTP's receive and send too.
    gRPC's send ends inside gRPC, after bnfold's handler, so its trace has no
    GRPC_SEND_END and the reader prints no gRPC front-end line."""
    path = tmp_path / "trace.json"
    config = (f"triton,file={path}", "level=TIMESTAMPS", "rate=1")
    with run_grpc_server(settings(repo, *config)) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        rpc = triton_grpc.InferenceServerClient(server.grpc)
        for seed in range(3):
            infer_http(http, seed)
        for seed in range(2):
            infer_grpc(rpc, seed)
        http.close()
        rpc.close()
    out = trace_summary(path)
    http_part, grpc_part = out.split("Summary for mlp (1): trace count = ")[1:]
    assert http_part.startswith("3\n") and grpc_part.startswith("2\n"), out
    for part in (http_part, grpc_part):
        for line in ("Handler", "Overhead", "Queue", "Compute", "Input", "Infer", "Output"):
            assert re.search(rf"\t{line} \(avg\): \d+(\.\d+)?us\n", part), (line, out)
    for line in ("HTTP infer request", "\tReceive", "\tSend", "\tOverhead"):
        assert re.search(rf"{line} \(avg\): \d+(\.\d+)?us\n", http_part), (line, out)
    assert "GRPC infer request" not in out
    # --show-trace: each trace, its timestamps in order
    assert out.count("mlp (1):\n") == 5
    assert sorted(map(int, re.findall(r"\tid: (\d+)", out))) == [1, 2, 3, 4, 5]


def test_log_frequency_rotates_into_indexed_files(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    config = (f"triton,file={path}", "triton,log-frequency=2", "level=TIMESTAMPS")
    with run_grpc_server(settings(repo, *config)) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        assert http.get_trace_settings()["log_frequency"] == "2"
        for seed in range(3):
            infer_http(http, seed)
        assert len(json.loads((tmp_path / "trace.json.0").read_text())) == 2 * (
            1 + len(HTTP_STAMPS)
        )
        assert not (tmp_path / "trace.json.1").exists()  # one trace waits for its pair
        # the model's own frequency gathers its traces apart; 0 writes to PATH
        after = http.update_trace_settings(MODEL, {"log_frequency": "0"})
        assert after["log_frequency"] == "0"
        assert http.get_trace_settings()["log_frequency"] == "2"
        infer_http(http, 3)
        http.close()
    assert sorted(traces(tmp_path / "trace.json.0")) == [1, 2]
    assert sorted(traces(path)) == [4]  # the model's trace, in PATH
    assert sorted(traces(tmp_path / "trace.json.1")) == [3]  # the rest, at shutdown
    assert not (tmp_path / "trace.json.2").exists()


def test_clients_cannot_name_the_file_and_counts_and_tensors(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    with run_grpc_server(settings(repo, f"triton,file={path}")) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        rpc = triton_grpc.InferenceServerClient(server.grpc)
        before = http.get_trace_settings()
        assert before["trace_level"] == ["OFF"]  # Triton's default level
        for body in ({"trace_file": str(tmp_path / "mine.json")}, {"trace_file": None}):
            with pytest.raises(InferenceServerException, match=REFUSED):
                http.update_trace_settings(settings={**body, "trace_rate": "7"})
        with pytest.raises(InferenceServerException, match=REFUSED):
            rpc.update_trace_settings(MODEL, settings={"trace_file": "mine.json"})
        assert http.get_trace_settings() == before
        assert http.get_trace_settings(MODEL) == before
        with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
            http.get_trace_settings("nope")
        with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
            rpc.get_trace_settings("nope")
        infer_http(http, 0)  # level OFF: not traced
        got = rpc.update_trace_settings(
            settings={"trace_level": ["TENSORS", "TIMESTAMPS"], "trace_count": "1"}, as_json=True
        )["settings"]
        assert got["trace_level"]["value"] == ["TIMESTAMPS", "TENSORS"]  # Triton's order
        infer_grpc(rpc, 1)
        infer_grpc(rpc, 2)  # the count is spent
        assert http.get_trace_settings()["trace_count"] == "0"
        http.close()
        rpc.close()
    by_id = traces(path)
    assert list(by_id) == [1]
    tensors = [r for r in by_id[1] if "activity" in r]
    assert [t["activity"] for t in tensors] == ["TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_OUTPUT"]
    given = tensors[0]["tensor"]
    assert (given["name"], given["shape"], given["dtype"]) == ("input", "1,64", "FP32")
    sent = np.array([float(v) for v in given["data"].split(",")], dtype=np.float32)
    np.testing.assert_array_equal(sent, x(1).ravel())


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (["mode=triton"], "needs triton,file=PATH"),
        (["triton,file=t.json", "mode=opentelemetry"], "need mode triton"),
        (["opentelemetry,url=localhost:4318"], "--otlp-endpoint"),
        (["level=LOUD"], "levels are"),
        (["rate=0"], "at least 1"),
        (["triton,file=t.json", "triton,log-frequency=-1"], "at least 0"),
        (["colour=blue"], "settings are level"),
        (["level=TENSORS"], "needs mode triton"),
        (["level=TIMESTAMPS"], "needs an OTLP endpoint"),
    ],
)
def test_trace_config_refused_at_start(tmp_path: Path, config: list[str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        settings(tmp_path, *config)


def test_one_trace_file_one_writer(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs --workers 1"):
        base_settings(tmp_path, trace_config=["triton,file=t.json"], workers=2)
    from_env = Settings.model_validate({"repo": tmp_path, "trace_config": '["level=OFF"]'})
    assert from_env.trace_config == ["level=OFF"]


def test_a_trace_that_cannot_be_written_leaves_the_answer_alone(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    (tmp_path / "trace.json.0").mkdir()  # where the first trace would go: not a file
    config = (f"triton,file={path}", "triton,log-frequency=1", "level=TIMESTAMPS")
    with run_grpc_server(settings(repo, *config)) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        infer_http(http, 0)  # answered; its trace is logged and dropped
        infer_http(http, 1)
        http.close()
    assert sorted(traces(tmp_path / "trace.json.1")) == [2]
    assert not (tmp_path / "trace.json.0.part").exists()


def test_a_failed_request_is_traced_without_send_stamps(repo: Path, tmp_path: Path) -> None:
    """A traced request that fails (an unknown input) is written all the
    same, with the front end's stamps it got to and no send stamps."""
    path = tmp_path / "trace.json"
    config = (f"triton,file={path}", "level=TIMESTAMPS", "rate=1")
    with run_grpc_server(settings(repo, *config)) as server:
        http = triton_http.InferenceServerClient(server.host_port)
        rpc = triton_grpc.InferenceServerClient(server.grpc)
        for client, module in ((http, triton_http), (rpc, triton_grpc)):
            data = module.InferInput("nope", [1, 64], "FP32")
            data.set_data_from_numpy(x(0))
            with pytest.raises(InferenceServerException, match="unknown input 'nope'"):
                client.infer(MODEL, [data])
        http.close()
        rpc.close()
    by_id = traces(path)
    named = {i: [r["timestamps"][0]["name"] for r in by_id[i][1:]] for i in by_id}
    assert named == {
        1: ["HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "REQUEST_END"],
        2: ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "REQUEST_START", "REQUEST_END"],
    }
