"""Once the SIGTERM drain ends (at once with ``BNFOLD_DRAIN_S=0``), neither
front takes new work while the requests in flight finish: a new HTTP
connection is refused, a new gRPC call is refused, and the request held in
flight is answered in full, with ``Connection: close``.

The request is held in flight by the client, not by a clock: its head and
most of its body are sent before SIGTERM, the rest only once both refusals
have been seen.
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from process import free_port, server_process
from service_harness import WAIT_S, Repo, rows, wait_until
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(600)


def http_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S):
            return False
    except ConnectionRefusedError:
        return True


def grpc_refused(url: str) -> bool:
    client = grpcclient.InferenceServerClient(url)
    try:
        client.is_server_live(client_timeout=WAIT_S)
        return False
    except InferenceServerException as e:
        assert e.status() == "StatusCode.UNAVAILABLE", e
        return True
    finally:
        client.close()


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """Status line, headers and body of one response (the server closes after it)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, body


def held_connection(port: int, x: np.ndarray) -> tuple[socket.socket, bytes]:
    """A connection to the server and the whole of one V2 inference request
    of ``x`` to the ``mlp`` model, to send in parts."""
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    head = (
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S), head.encode() + body


def read_one_response(sock: socket.socket) -> bytes:
    """One response of a kept-alive connection, read by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(
            b":"
        )[1]
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_after_the_drain_new_work_is_refused_and_the_request_in_flight_finishes(
    repo: Repo, tmp_path: Path
) -> None:
    grpc_port = free_port()
    env = {
        "BNFOLD_DRAIN_S": "0",
        "BNFOLD_LOG_LEVEL": "info",
        "BNFOLD_GRPC_PORT": str(grpc_port),
        "BNFOLD_HEADER_TIMEOUT_S": "600",  # the held request is not cut for being slow
    }
    grpc_url = f"127.0.0.1:{grpc_port}"
    with server_process(repo.path, tmp_path, env=env) as server:
        wait_until(lambda: not grpc_refused(grpc_url), "gRPC serving")
        x = rows(repo["mlp"], 2)
        held, request = held_connection(server.port, x)
        held.sendall(request[:-8])  # in flight: the server waits for the rest
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: http_refused(server.port), "new HTTP connections refused")
        wait_until(lambda: grpc_refused(grpc_url), "new gRPC calls refused")
        assert server.proc.poll() is None  # still finishing the request it holds
        held.sendall(request[-8:])
        status, headers, answer = read_response(held)
        held.close()
        assert status == "HTTP/1.1 200 OK", (status, answer)
        assert headers["connection"] == "close"
        got = np.array(json.loads(answer)["outputs"][0]["data"], np.float32).reshape(2, 10)
        np.testing.assert_allclose(got, repo.expected(repo["mlp"], x), rtol=1e-5, atol=1e-6)
        assert server.proc.wait(WAIT_S) in (0, -signal.SIGTERM)
    assert "models released" in server.output()


def test_with_workers_a_new_connection_is_refused_once_the_workers_stop_accepting(
    repo: Repo, tmp_path: Path
) -> None:
    """``--workers 2``: the parent lets go of its copy of the listening
    socket on SIGTERM, so once both workers have closed theirs (the drain
    over) a new connection is refused at once, while a request in flight
    still holds its worker and the parent, instead of waiting unanswered in
    the kernel's queue until they exit."""
    env = {
        "BNFOLD_DRAIN_S": "0",
        "BNFOLD_WORKERS": "2",
        "BNFOLD_GRPC_PORT": "0",
        "BNFOLD_HEADER_TIMEOUT_S": "600",
    }
    with server_process(repo.path, tmp_path, env=env) as server:
        held, request = held_connection(server.port, rows(repo["mlp"], 2))
        # A first request answered on the held connection: a worker has taken
        # it (not still in the listening socket's queue).
        held.sendall(request)
        assert read_one_response(held).startswith(b"HTTP/1.1 200 OK")
        held.sendall(request[:-8])  # in flight: the worker waits for the rest
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: http_refused(server.port), "new HTTP connections refused")
        assert server.proc.poll() is None  # the parent waits for the held request's worker
        held.sendall(request[-8:])
        status, headers, answer = read_response(held)
        held.close()
        assert status == "HTTP/1.1 200 OK", (status, answer)
        assert headers["connection"] == "close"
        assert server.proc.wait(WAIT_S) in (0, -signal.SIGTERM)
