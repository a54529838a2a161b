"""Connections are bounded (issue 19): slow clients (a request head never
finished, or nothing sent at all) are closed past the header timeout, and
past the connection limit the oldest of them makes room, so that normal
requests are answered while hundreds of slow connections are open. And
SIGTERM under keep-alive load resets nothing: while the server drains every
answer says ``Connection: close``. The server runs as a process of its own."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import threading
from pathlib import Path

import httpx
from graphs import write_bare
from served_models import mlp
from server_process import spawn
from service_harness import TOKEN, WAIT_S, wait_until

SLOW = 200  # slow connections opened (the suite's share; docs/service.md has 1,000)
LIMIT = 50  # --max-connections, well under SLOW
PARTIAL_HEAD = b"GET /v2 HTTP/1.1\r\nHost: slow\r\nX-Slow: "


def good_repo(root: Path) -> Path:
    repo = root / "models"
    write_bare(repo, "good", 1, mlp(5)[0])
    return repo


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (without waiting)."""
    sock.settimeout(0)  # a socket with a timeout would wait for it first
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_slow_connections_past_the_limit_make_room_for_normal_requests(tmp_path: Path) -> None:
    args = ("--max-connections", str(LIMIT), "--header-timeout", "3600")
    with spawn(good_repo(tmp_path), tmp_path, *args) as server:
        wait_until(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200, "ready")
        slow: list[socket.socket] = []
        try:
            for i in range(SLOW):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
                if i % 2 == 0:  # half send part of a head, half nothing at all
                    sock.sendall(PARTIAL_HEAD)
                slow.append(sock)
            answers = []
            for _ in range(20):  # a new connection each time
                r = httpx.get(f"{server.url}/v2/models/good/ready", timeout=WAIT_S)
                answers.append(r.status_code)
            with httpx.Client(base_url=server.url, timeout=WAIT_S) as keep_alive:
                answers += [keep_alive.get("/v2/health/live").status_code for _ in range(20)]
            assert answers == [200] * 40
            wait_until(
                lambda: sum(closed(s) for s in slow) >= SLOW - LIMIT,
                f"at least {SLOW - LIMIT} slow connections closed",
            )
            assert sum(closed(s) for s in slow) <= SLOW  # the newest stay open
        finally:
            for sock in slow:
                sock.close()


def test_a_request_head_not_sent_in_time_closes_the_connection(tmp_path: Path) -> None:
    with spawn(good_repo(tmp_path), tmp_path, "--header-timeout", "1") as server:
        partial = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        try:
            partial.sendall(PARTIAL_HEAD)
            wait_until(lambda: closed(partial) and closed(silent), "both slow ones closed")
            # a client that sends its request answers as ever, also after idling
            with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
                assert client.get("/v2/health/live").status_code == 200
                assert client.get("/v2/models/good/ready").status_code in (200, 503)
        finally:
            partial.close()
            silent.close()


def test_sigterm_under_keep_alive_load_resets_nothing(tmp_path: Path) -> None:
    """Clients send on keep-alive connections without pause; after SIGTERM
    each one gets an answer with ``Connection: close`` (and, as a client of
    a draining server does, goes elsewhere). Not one request fails. A second
    SIGTERM then ends the drain, and the server exits."""
    with spawn(good_repo(tmp_path), tmp_path, BNFOLD_DRAIN_S="600") as server:
        wait_until(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200, "ready")
        answered = [0] * 4
        closing = [False] * 4
        failures: list[str] = []
        stop = threading.Event()
        body = b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": %s}]}'
        body %= str([0.25] * 64).encode()

        def client(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_S)
            try:
                while not stop.is_set():
                    conn.request("POST", "/v2/models/good/infer", body)
                    answer = conn.getresponse()
                    answer.read()
                    if answer.status != 200:
                        failures.append(f"status {answer.status}")
                    answered[i] += 1
                    if (answer.getheader("connection") or "").lower() == "close":
                        closing[i] = True
                        return
            except Exception as e:  # a reset, a closed connection: what must not happen
                failures.append(repr(e))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: min(answered) >= 10 or bool(failures), "every client answered")
            server.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: all(closing) or bool(failures), "Connection: close to every client")
        finally:
            stop.set()
            for t in threads:
                t.join(WAIT_S)
        assert failures == []
        assert closing == [True] * 4
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503  # draining
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(WAIT_S) in (0, -signal.SIGTERM)


def test_a_chunked_body_with_a_content_length_is_read_chunked(tmp_path: Path) -> None:
    """``requests`` with ``Transfer-Encoding: chunked`` and a whole body sends
    a Content-Length too (Triton's test_content_encoding_chunked_manually):
    the chunks are the body (RFC 9112, 6.3) and the connection closes after
    the answer; uvicorn's parser alone answers such a request 400."""
    body = b'{"ready": true}'
    chunked = b"%X\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = (
        "POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\nContent-Length: {len(chunked)}\r\n\r\n"
    )
    with spawn(good_repo(tmp_path), tmp_path) as server:
        wait_until(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200, "ready")
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            sock.sendall(head.encode() + chunked)
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 200 OK", answer
        headers, _, content = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower()
        index = json.loads(content)  # the chunks, not the chunked bytes, were read as JSON
        assert [(m["name"], m["state"]) for m in index] == [("good", "READY")]


def _chunked_answer(port: int, body: bytes, head: str) -> bytes:
    """``body`` sent a byte a chunk (as Triton's http_request_many_chunks.py
    sends it): what the server answers before it closes the connection. The
    server may stop reading and close before the last chunks are sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(head.encode())
        # refused before the whole body was read: the server closed
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"".join(b"1\r\n%c\r\n" % byte for byte in body) + b"0\r\n\r\n")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
    return answer


def test_a_chunked_body_of_too_many_chunks_is_refused(tmp_path: Path) -> None:
    """Triton's limit on a chunked body: at most 65,536 non-empty chunks
    (each costs the server bookkeeping whatever its size). At the limit the
    body is read as usual; one chunk more is a 400 in Triton's words, the
    rest of the body unread and the connection closed (the client sent no
    ``Connection: close``). The server serves on."""
    head = (
        "POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n"
    )
    limit = 65536
    body = b'{"ready": true}'
    with spawn(good_repo(tmp_path), tmp_path) as server:
        wait_until(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200, "ready")
        # at the limit: the JSON padded with spaces to 65,536 one-byte chunks
        answer = _chunked_answer(server.port, body.ljust(limit), head + "Connection: close\r\n\r\n")
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 200 OK", answer[:500]
        index = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert [(m["name"], m["state"]) for m in index] == [("good", "READY")]

        answer = _chunked_answer(server.port, body.ljust(limit + 1), head + "\r\n")
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 400 Bad Request", answer[:500]
        headers, _, content = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower()
        assert json.loads(content) == {
            "error": "Chunked request body exceeds maximum of 65536 non-empty chunks. "
            "Send fewer or larger HTTP chunks."
        }
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
