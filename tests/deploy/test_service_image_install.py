"""The serving image's Python environment, rebuilt outside Docker.

Copies exactly what reaches the Dockerfile's ``service-build`` stage (through
its ``source`` stage), installs it into a fresh venv the same way (``pip
install -c constraints.txt .``: core dependencies, no ``train`` extra, so no
torch), then runs the commands the image runs: the CLI without torch, and
``bnfold serve`` answering an inference. Slow (a venv and a pip install, ~40 s
with a warm wheel cache) and it may reach the package index, so it runs only
with ``BNFOLD_SLOW_INSTALL_TEST=1``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_manifests import ROOT, context_copies, dockerfile
from trained_models import ConvertOnce

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("BNFOLD_SLOW_INSTALL_TEST") != "1",
        reason="set BNFOLD_SLOW_INSTALL_TEST=1 to build the serving venv (slow, uses pip)",
    ),
    pytest.mark.timeout(1800),  # a guard against a hang, sized for a loaded machine
]


def _clean_env() -> dict[str, str]:
    drop = ("BNFOLD_", "PYTHONPATH", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("image")
    src = work / "src"
    src.mkdir()
    df = dockerfile()
    stage = df.stage("service-build")
    for sources, dest in context_copies(stage, df):
        target = src / dest  # every COPY here names a folder ("./", "converter/")
        target.mkdir(parents=True, exist_ok=True)
        for s in sources:
            origin = ROOT / s
            if origin.is_dir():
                skip = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(origin, target, ignore=skip, dirs_exist_ok=True)
            else:
                shutil.copy2(origin, target / origin.name)
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    install = _run(
        [str(env_dir / "bin" / "pip"), "install", "-q", "-c", "constraints.txt", "."],
        cwd=src,
        timeout=1500,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return env_dir


def test_no_torch_and_the_package_is_installed_not_linked(venv: Path, tmp_path: Path) -> None:
    probe = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util, json, sys; import bnfold.cli, bnfold.service.app;"
            "print(json.dumps({'torch_spec': importlib.util.find_spec('torch') is not None,"
            " 'torch_loaded': 'torch' in sys.modules, 'file': bnfold.cli.__file__}))",
        ],
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    assert facts == facts | {"torch_spec": False, "torch_loaded": False}
    assert facts["file"].startswith(str(venv)), facts["file"]


@pytest.mark.parametrize("command", [[], ["serve"], ["fold"], ["verify"]])
def test_cli_help_without_torch(venv: Path, tmp_path: Path, command: list[str]) -> None:
    done = _run([str(venv / "bin" / "bnfold"), *command, "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


def test_torch_commands_fail_without_torch(venv: Path, tmp_path: Path) -> None:
    done = _run(
        [str(venv / "bin" / "bnfold"), "convert", "--repo", str(tmp_path / "m"), "--epochs", "1"],
        cwd=tmp_path,
    )
    assert done.returncode == 2  # an input error: this environment lacks what the command needs
    assert "install the train extra" in done.stderr
    assert "Traceback" not in done.stderr


def test_serves_a_converted_model_without_torch(
    venv: Path, tmp_path: Path, converted: ConvertOnce
) -> None:
    # built in this (dev) environment, which has torch: the session's digits MLP
    repo = tmp_path / "models"
    converted("mlp", epochs=1, limit=256).write(repo, "digits-mlp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _clean_env() | {"BNFOLD_LOG_LEVEL": "warning"}  # BNFOLD_DEVICE=auto, as in the image
    env["BNFOLD_GRPC_PORT"] = "0"  # HTTP only: no shared port 8001 between test servers
    env["BNFOLD_METRICS_PORT"] = "0"  # nor 8002 (Triton's metrics port)
    argv = [str(venv / "bin" / "bnfold"), "serve", "--repo", str(repo), "--port", str(port)]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not ready in 300 s"
            time.sleep(0.2)
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]}
        body["inputs"][0]["data"] = [0.5] * 64
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v2/models/digits-mlp/infer", json.dumps(body))
        r = conn.getresponse()
        answer = json.loads(r.read())
        assert r.status == 200, answer
        assert answer["outputs"][0]["shape"] == [1, 10]
        conn.request("GET", "/v2")
        meta = json.loads(conn.getresponse().read())
        assert meta["parameters"]["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
