"""The test harness: a real server in a thread, the repository, inputs.

Imported by conftest.py and by the tests (conftest modules are not meant
to be imported).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import uvicorn
from served_models import ModelInfo

from bnfold.contract import scan_versions
from bnfold.service.app import create_app
from bnfold.service.connections import uvicorn_options
from bnfold.service.model import ServedModel
from bnfold.service.settings import Settings

TOKEN = "test-token"
MAX_BODY = 1 << 20
# How long a test waits for an event (a state reached, N requests answered)
# before it gives up: a guard against hanging, sized for a loaded 2-core
# machine. No test measures time with it; quiet runs meet every event in
# milliseconds.
WAIT_S = 120.0


class LogLines(logging.Handler):
    """The messages of the records it is handed, in order."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def capture_server_log(monkeypatch: pytest.MonkeyPatch, level: int = logging.NOTSET) -> LogLines:
    """What the servers created from now on log (their logger does not
    propagate, and ``create_app`` sets its handlers up anew)."""
    import bnfold.service.app as app

    lines = LogLines(level)
    configure = app.configure_logging

    def with_capture(*args: Any, **kwargs: Any) -> None:
        configure(*args, **kwargs)
        logging.getLogger("bnfold.service").addHandler(lines)

    monkeypatch.setattr(app, "configure_logging", with_capture)
    return lines


@dataclass
class InBackground:
    """Requests sent from threads of their own (``post_in_background``): the
    answers arrive in ``answers`` as they come; ``join`` waits for them all."""

    threads: list[threading.Thread]
    answers: list[httpx.Response]

    def join(self) -> None:
        for thread in self.threads:
            thread.join()


def post_in_background(url: str, path: str, body: Any, n: int = 1) -> InBackground:
    """``n`` POSTs of the JSON ``body`` to ``path``, each from a thread and a
    client of its own (30 s timeout), all started before it returns."""
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            answers.append(c.post(path, json=body))

    threads = [threading.Thread(target=post) for _ in range(n)]
    for thread in threads:
        thread.start()
    return InBackground(threads, answers)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g} s: {what}")
        time.sleep(0.005)


def wait_started(server: uvicorn.Server, thread: threading.Thread, app: Any) -> None:
    """Until the port listens and the first load of every model is done (the
    port opens before the models load)."""
    deadline = time.monotonic() + WAIT_S  # loading every model, on a busy machine too
    while not (server.started and app.state.bnfold.started):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)


@dataclass
class RunningServer:
    url: str
    host_port: str
    settings: Settings
    server: uvicorn.Server

    def served(self, name: str) -> ServedModel:
        """The version of ``name`` this in-thread server serves now, to watch
        its queue (``batcher.pending``) and the requests holding it
        (``inflight``); read only, never driven from the test's thread."""
        repository = self.server.config.app.state.bnfold.repository
        for model in repository.served():
            if model.name == name:
                return model
        raise LookupError(f"{name!r} is not served")


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    """uvicorn in a thread, on a socket bound before it starts (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_started(server, thread, app)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", settings, server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@dataclass(frozen=True)
class Repo:
    path: Path
    models: dict[str, ModelInfo]

    def __getitem__(self, role: str) -> ModelInfo:
        return self.models[role]

    def expected(self, model: ModelInfo, x: np.ndarray, version: int | None = None) -> np.ndarray:
        """What ONNX Runtime computes for ``x`` on the served (highest) version."""
        version = version or scan_versions(self.path / model.name).valid[-1]
        path = self.path / model.name / str(version) / "model.onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([model.output], {model.input: x})[0]


def base_settings(repo: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "repo": repo,
        "api_token": TOKEN,
        "access_log": False,
        "log_level": "warning",
        "max_body_bytes": MAX_BODY,
        "drain_s": 0.0,
        "request_timeout_s": 10.0,
        "grpc_port": 0,  # no gRPC unless a test asks (grpc_harness binds a free port)
        "metrics_port": 0,  # no shared port 8002 between test servers (nv_* stay on /metrics)
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def rows(model: ModelInfo, n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples for ``model`` from N(0, 1), float32."""
    return np.random.default_rng(seed).standard_normal((n, *model.row_shape)).astype(np.float32)


# ----- session fixtures shared by every conftest that serves a ``repo`` fixture


@pytest.fixture(scope="session", name="server")
def server_fixture(repo: Repo) -> Iterator[RunningServer]:
    """The real server on the session's repository, in a thread of this process."""
    with run_server(base_settings(repo.path)) as running:
        yield running


@pytest.fixture(scope="session", name="http")
def http_fixture(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
