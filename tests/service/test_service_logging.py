"""Triton's logging extension (issue 18): ``GET``/``POST /v2/logging`` and
gRPC ``LogSettings`` with Triton's fields, checks and words, asked with
Triton's own clients, and what each setting does to the lines a real server
process writes to its ``--log-file``.

A line's absence is read after a later line is present: the server writes
them in order, and the access line of a request is written before its
connection takes the next request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_harness import GrpcRunning, run_grpc_server
from served_models import write_mlp
from server_process import free_port, spawn
from service_harness import TOKEN, base_settings, wait_until
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bnfold.service.logs import TEXT, TextFormatter

AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}
FILE_REFUSED = "log file location can not be updated through network protocol"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("logging")
    write_mlp(repo, "mlp")
    return repo


def triton_defaults(log_file: str = "") -> dict[str, Any]:
    return {
        "log_file": log_file,
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "default",
    }


def test_settings_change_what_the_log_file_gets(repo: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "bnfold.log"
    grpc_port = free_port()
    env = {"BNFOLD_GRPC_PORT": str(grpc_port)}
    with spawn(repo, tmp_path, "--access-log", "--log-file", str(log_file), **env) as server:
        http = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
        rpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        wait_until(lambda: http.is_server_ready(), "ready")

        def line_of(rid: str) -> str | None:
            found = [ln for ln in log_file.read_text().splitlines() if f"[{rid}" in ln]
            return found[0] if found else None

        def ask(rid: str) -> None:
            r = httpx.get(f"{server.url}/v2/health/live", headers={"X-Request-ID": rid})
            assert r.status_code == 200

        defaults = triton_defaults(str(log_file))
        assert http.get_log_settings(headers=AUTH) == defaults
        assert "logging" in http.get_server_metadata()["extensions"]
        got = rpc.get_log_settings(headers=GRPC_AUTH, as_json=True)["settings"]
        assert got == {
            "log_file": {"string_param": str(log_file)},
            "log_info": {"bool_param": True},
            "log_warning": {"bool_param": True},
            "log_error": {"bool_param": True},
            "log_verbose_level": {"uint32_param": 0},
            "log_format": {"string_param": "default"},
        }
        ask("on-1")
        wait_until(lambda: line_of("on-1") is not None, "the access line in the log file")
        # the default timestamp: local time, a comma before the milliseconds
        assert re.match(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO bnfold\.access", line_of("on-1") or ""
        )
        assert server.output().count("[on-1") == 0  # the file, not stderr

        # info off: the access lines (INFO) stop; over gRPC, only the named setting changes
        after = rpc.update_log_settings({"log_info": False}, headers=GRPC_AUTH, as_json=True)
        assert after["settings"]["log_info"] == {"bool_param": False}
        assert after["settings"]["log_warning"] == {"bool_param": True}
        ask("off-1")
        after = http.update_log_settings({"log_info": True, "log_format": "ISO8601"}, headers=AUTH)
        assert after == {**defaults, "log_format": "ISO8601"}
        ask("on-2")
        wait_until(lambda: line_of("on-2") is not None, "the access line after info is back")
        assert line_of("off-1") is None
        assert re.match(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO bnfold\.access", line_of("on-2") or ""
        )

        # verbose 1 with info, warning and error off: the debug lines alone
        quiet = {"log_info": False, "log_warning": False, "log_error": False}
        after = http.update_log_settings({**quiet, "log_verbose_level": 1}, headers=AUTH)
        assert after == {**defaults, **quiet, "log_verbose_level": 1, "log_format": "ISO8601"}
        ask("off-2")
        http.update_log_settings({"log_info": True, "log_verbose_level": 0}, headers=AUTH)
        ask("on-3")
        wait_until(lambda: line_of("on-3") is not None, "the access line after verbose")
        assert line_of("off-2") is None

        # the file stays; the token guards the settings
        with pytest.raises(InferenceServerException, match=FILE_REFUSED):
            http.update_log_settings({"log_file": str(tmp_path / "elsewhere.log")}, headers=AUTH)
        with pytest.raises(InferenceServerException, match=FILE_REFUSED):
            rpc.update_log_settings({"log_file": str(log_file)}, headers=GRPC_AUTH)
        assert not (tmp_path / "elsewhere.log").exists()
        assert httpx.get(f"{server.url}/v2/logging").status_code == 401
        with pytest.raises(InferenceServerException, match=r"UNAUTHENTICATED|bearer token"):
            rpc.get_log_settings()
        http.close()
        rpc.close()


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcRunning]:
    with run_grpc_server(base_settings(repo, log_level="info")) as running:
        yield running


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"log_file": "/tmp/x.log"}, 501, FILE_REFUSED),
        ({"log_file": ""}, 501, FILE_REFUSED),
        ({"log_info": "yes"}, 400, "attempt to access JSON non-boolean as boolean"),
        ({"log_error": 1}, 400, "attempt to access JSON non-boolean as boolean"),
        (
            {"log_verbose_level": -1},
            400,
            "attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
        (
            {"log_verbose_level": 1.5},
            400,
            "attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
        (
            {"log_verbose_level": 2**32},
            400,
            "attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
        ({"log_format": 8601}, 400, "attempt to access JSON non-string as string"),
        ({"log_format": "json"}, 400, "invalid argument for log_format, got: json"),
        ({"colour": "blue"}, 400, "unknown log setting 'colour'"),
    ],
)
def test_refused_settings_change_nothing(
    server: GrpcRunning, body: dict[str, Any], status: int, problem: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http:
        r = http.post("/v2/logging", json={"log_warning": False, **body})
        assert r.status_code == status, r.text
        assert r.json() == {"error": problem} or problem in r.json()["error"]
        assert http.get("/v2/logging").json() == triton_defaults()
        # null leaves a setting as it is; an empty body changes nothing
        r = http.post("/v2/logging", json={"log_info": None, "log_file": None})
        assert r.json() == triton_defaults()
        assert http.post("/v2/logging", content=b"").json() == triton_defaults()


@pytest.mark.parametrize(
    ("settings", "code", "problem"),
    [
        (
            {"log_file": service_pb2.LogSettingsRequest.SettingValue()},
            "UNIMPLEMENTED",
            FILE_REFUSED,
        ),
        (
            {"log_info": service_pb2.LogSettingsRequest.SettingValue(uint32_param=1)},
            "INVALID_ARGUMENT",
            "expect boolean for 'log_info'",
        ),
        (
            {"log_verbose_level": service_pb2.LogSettingsRequest.SettingValue(bool_param=True)},
            "INVALID_ARGUMENT",
            "expect int32 for 'log_verbose_level'",
        ),
        (
            {"log_format": service_pb2.LogSettingsRequest.SettingValue()},
            "INVALID_ARGUMENT",
            "expect string for 'log_format'",
        ),
        (
            {"log_format": service_pb2.LogSettingsRequest.SettingValue(string_param="xml")},
            "INVALID_ARGUMENT",
            "invalid argument for log_format, got: xml",
        ),
    ],
)
def test_refused_grpc_settings_change_nothing(
    server: GrpcRunning, settings: dict[str, Any], code: str, problem: str
) -> None:
    off = service_pb2.LogSettingsRequest.SettingValue(bool_param=False)
    request = service_pb2.LogSettingsRequest(settings={"log_warning": off, **settings})
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.LogSettings(request, metadata=tuple(GRPC_AUTH.items()), timeout=30)
        assert caught.value.code() == grpc.StatusCode[code]
        assert caught.value.details() == problem
        now = stub.LogSettings(
            service_pb2.LogSettingsRequest(), metadata=tuple(GRPC_AUTH.items()), timeout=30
        )
        assert now.settings["log_warning"].bool_param is True


def test_the_start_level_sets_the_triton_fields(repo: Path) -> None:
    for level, fields in {
        "debug": {"log_verbose_level": 1},
        "warning": {"log_info": False},
        "critical": {"log_info": False, "log_warning": False, "log_error": False},
    }.items():
        settings = base_settings(repo, log_level=level, api_token=None)
        with run_grpc_server(settings) as running:
            r = httpx.get(f"{running.url}/v2/logging", timeout=30)
            assert r.json() == {**triton_defaults(), **fields}, level


def test_the_logging_category_is_restricted(repo: Path) -> None:
    settings = base_settings(
        repo,
        api_token=None,
        http_restricted_api=["logging:admin-key=admin-value"],
        grpc_restricted_protocol=["logging:admin-key=admin-value"],
        log_level="info",
    )
    with run_grpc_server(settings) as running:
        http = triton_http.InferenceServerClient(running.host_port)
        rpc = triton_grpc.InferenceServerClient(running.grpc)
        with pytest.raises(InferenceServerException, match="expecting header 'admin-key'"):
            http.get_log_settings()
        with pytest.raises(InferenceServerException, match="triton-grpc-protocol-admin-key"):
            rpc.update_log_settings({"log_info": False})
        admin = {"admin-key": "admin-value"}
        assert http.get_log_settings(headers=admin) == triton_defaults()
        grpc_admin = {"triton-grpc-protocol-admin-key": "admin-value"}
        got = rpc.get_log_settings(headers=grpc_admin, as_json=True)["settings"]
        assert got["log_info"] == {"bool_param": True}
        http.close()
        rpc.close()


# Triton's line layouts, as L0_logging's log_format_test.py reads them.
ISO_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [IWE] \d+ [\w.]+:\d+\] (.*)")
DEFAULT_LINE = re.compile(r"[IWE]\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ [\w.]+:\d+\] (.*)")
FORGED = "I0205 18:34:18.707423 1 file.cc:123] forged"


def test_triton_line_layouts(repo: Path, tmp_path: Path) -> None:
    """L0_logging's test.sh: ``--log-format=ISO8601 --log-file`` reported and
    written, then ``log_format`` ``default`` from the next line on; each
    message a JSON string, so a client's input name with a newline in it
    forges no line (its 400 is a verbose line)."""
    log_file = tmp_path / "triton.log"
    args = ("--log-format", "ISO8601", "--log-file", str(log_file), "--log-level", "debug")
    with spawn(repo, tmp_path, *args) as server:
        http = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
        wait_until(lambda: http.is_server_ready(), "ready")
        settings = http.get_log_settings(headers=AUTH)
        assert settings["log_format"] == "ISO8601"
        assert settings["log_verbose_level"] == 1

        def refused(name: str) -> None:
            tensor = {"name": name, "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
            r = httpx.post(f"{server.url}/v2/models/mlp/infer", json={"inputs": [tensor]})
            assert r.status_code == 400
            assert f"unknown input '{name}'" in r.json()["error"]

        def messages(pattern: re.Pattern[str], marker: str) -> list[str]:
            """Every line's message, once the one naming ``marker`` is there."""
            lines = log_file.read_text().splitlines()
            if not any(marker in line for line in lines):
                return []
            return [m.group(1) for m in map(pattern.fullmatch, lines) if m is not None]

        refused(f"iso\n{FORGED}")
        wait_until(lambda: messages(ISO_LINE, "iso\\n"), "the 400's verbose line")
        lines = log_file.read_text().splitlines()
        assert all(ISO_LINE.fullmatch(line) for line in lines), lines
        assert FORGED not in lines
        said = [json.loads(m) for m in messages(ISO_LINE, "iso\\n")]  # each a JSON string
        assert any(f"unknown input 'iso\n{FORGED}'" in m for m in said)
        assert any(m.startswith("Uvicorn running on") for m in said)  # uvicorn's lines too

        http.update_log_settings({"log_format": "default"}, headers=AUTH)
        refused(f"default\n{FORGED}")
        wait_until(lambda: messages(DEFAULT_LINE, "default\\n"), "the line in default layout")
        said = [json.loads(m) for m in messages(DEFAULT_LINE, "default\\n")]
        assert any(f"unknown input 'default\n{FORGED}'" in m for m in said)
        http.close()


def test_text_lines_escape_control_characters() -> None:
    """bnfold's own text lines: a message's newline or escape sequence (a
    client's text in it) is escaped, one record one line."""
    record = logging.LogRecord(
        "bnfold.service", logging.DEBUG, "x.py", 1, "a\nb\x1b[31m é", (), None
    )
    record.request_id, record.trace = "-", ""
    line = TextFormatter(TEXT).format(record)
    assert line.endswith("[-] a\\nb\\x1b[31m é")


def test_triton_layout_console_splits_levels(tmp_path: Path) -> None:
    """L0_logging's test.sh ("Log Output Stream"): without --log-file,
    Triton's layout writes info lines to stdout and warnings and errors to
    stderr (a model that fails to load is a warning line)."""
    repo = tmp_path / "repo"
    write_mlp(repo, "mlp")
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an ONNX model")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
    env |= {"BNFOLD_GRPC_PORT": "0", "BNFOLD_WARMUP": "false", "BNFOLD_API_TOKEN": ""}
    command = [sys.executable, "-m", "bnfold.service", "--repo", str(repo), "--port", str(port)]
    with (tmp_path / "out.log").open("w") as out, (tmp_path / "err.log").open("w") as err:
        server = subprocess.Popen(
            [*command, "--log-format", "default"], env=env, stdout=out, stderr=err
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def loaded() -> bool:
            try:
                index = httpx.post(f"{url}/v2/repository/index", json={}).json()
            except httpx.TransportError:
                return False
            return {m["name"]: m.get("state") for m in index} == {
                "broken": "UNAVAILABLE",
                "mlp": "READY",
            }

        wait_until(loaded, "both models tried")
        wait_until(lambda: "broken" in (tmp_path / "err.log").read_text(), "the load's warning")
    finally:
        server.kill()
        server.wait(30)
    stdout = (tmp_path / "out.log").read_text().splitlines()
    stderr = (tmp_path / "err.log").read_text().splitlines()
    levels = [m.group(0)[0] for m in map(DEFAULT_LINE.fullmatch, stdout) if m]
    assert levels and set(levels) == {"I"} and len(levels) == len(stdout), stdout
    levels = [m.group(0)[0] for m in map(DEFAULT_LINE.fullmatch, stderr) if m]
    assert levels and set(levels) <= {"W", "E"}, stderr
