"""The server with its gRPC port, in a thread, for the gRPC and Triton-client
tests: ``run_grpc_server(settings)`` is ``service_harness.run_server`` plus
a gRPC server bound by the app itself to a free port (``grpc_bind`` with
port 0: no port race), whose number it reports.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from service_harness import wait_started

from bnfold.service.app import create_app
from bnfold.service.model import ServedModel
from bnfold.service.settings import Settings


@dataclass
class GrpcRunning:
    url: str  # http://127.0.0.1:PORT
    host_port: str  # 127.0.0.1:PORT (HTTP), what tritonclient.http takes
    grpc: str  # 127.0.0.1:PORT (gRPC), what tritonclient.grpc takes
    settings: Settings
    server: uvicorn.Server

    def served(self, name: str) -> ServedModel:
        """The version of ``name`` served now (read only, as service_harness's)."""
        for model in self.server.config.app.state.bnfold.repository.served():
            if model.name == name:
                return model
        raise LookupError(f"{name!r} is not served")


@contextmanager
def run_grpc_server(settings: Settings) -> Iterator[GrpcRunning]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    app.state.grpc_bind = "127.0.0.1:0"
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_started(server, thread, app)
    grpc_port = app.state.grpc_server.port
    try:
        yield GrpcRunning(
            f"http://127.0.0.1:{port}",
            f"127.0.0.1:{port}",
            f"127.0.0.1:{grpc_port}",
            settings,
            server,
        )
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
