"""The page ships in the wheel and works from an installed (not editable) package.

The wheel is built from the files the serving image copies (as
tests/deploy does), with the setuptools of this environment (no build
isolation, nothing downloaded), installed without dependencies into a
folder of its own, and served from there by ``python -m bnfold serve``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "constraints.txt", "bnfold", "folding", "converter")
SOURCES += ("service",)
WEB_FILES = {"index.html", "app.js", "style.css", "favicon.svg"}

pytestmark = pytest.mark.timeout(300)


def _env(**extra: str) -> dict[str, str]:
    drop = ("BNFOLD_", "PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | extra


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools", reason="builds the wheel without build isolation")
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=skip, symlinks=True)
        else:
            shutil.copy2(origin, src / name)
    out = tmp_path_factory.mktemp("wheel")
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*argv, "-w", str(out), str(src)], capture_output=True, text=True, timeout=240, env=_env()
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("bnfold-*.whl")
    return built


def test_the_wheel_holds_the_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    web = {n.rsplit("/", 1)[1] for n in names if n.startswith("bnfold/service/web/")}
    assert web == WEB_FILES, sorted(names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m bnfold serve`` from the installed wheel on an empty repository."""
    target = tmp_path_factory.mktemp("site")
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    done = subprocess.run([*argv, str(wheel)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = tmp_path_factory.mktemp("empty-repo")
    env = _env(
        PYTHONPATH=str(target),
        BNFOLD_LOG_LEVEL="warning",
        BNFOLD_GRPC_PORT="0",
        BNFOLD_METRICS_PORT="0",
    )
    where = subprocess.run(
        [sys.executable, "-c", "import bnfold.service.routes.web as w; print(w.WEB)"],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    serve = [sys.executable, "-m", "bnfold", "serve", "--repo", str(repo), "--port", str(port)]
    proc = subprocess.Popen(
        serve, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not live in 90 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_installed_package_serves_the_page_and_the_docs(installed: str) -> None:
    with httpx.Client(base_url=installed, timeout=30) as http:
        page = http.get("/")
        assert page.status_code == 200 and "web/app.js" in page.text
        for name in WEB_FILES - {"index.html"}:
            assert http.get(f"/web/{name}").status_code == 200, name
        assert http.get("/web/api/models").json() == {"models": [], "token_required": False}
        assert "/web/vendor/swagger-ui-bundle.js" in http.get("/docs").text
        assert http.get("/web/vendor/swagger-ui-bundle.js").status_code == 200
        assert http.get("/web/vendor/redoc.standalone.js").status_code == 200
