"""`bnfold serve --workers 2`: two processes behind one port, tested for real.

The server runs as a subprocess on 127.0.0.1 with a repository the converter
builds. Which worker answered a connection is read from the kernel
(/proc/net/tcp and /proc/<pid>/fd: the worker holding the accepted socket),
independently of anything the service says about itself; where the service
also names its worker (``X-Bnfold-Worker``) the two must agree. Linux only.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from trained_models import ConvertOnce

pytestmark = [
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)"),
    pytest.mark.timeout(900),  # a guard against a hang, sized for a loaded machine
]

MODEL = "digits-mlp"
WORKERS = 2
INFER = f"/v2/models/{MODEL}/infer"
INFER_ROUTE = "/v2/models/{name}/infer"
CONNECTIONS_PER_ROUND = 8
MAX_ROUNDS = 25


# ----------------------------------------------------------------- the kernel
def _tcp_table() -> list[tuple[int, int, int, str]]:
    """(local port, remote port, inode, state) of every IPv4/IPv6 TCP socket."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, state, inode = f[1], f[2], f[3], int(f[9])
            rows.append(
                (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), inode, state)
            )
    return rows


def _socket_owners(inode: int, pids: list[int]) -> list[int]:
    target = f"socket:[{inode}]"
    owners = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    owners.append(pid)
                    break
            except OSError:
                continue
    return owners


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ----------------------------------------------------------------- the server
@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: list[int] = field(default_factory=list)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bnfold() -> list[str]:
    script = Path(sys.executable).with_name("bnfold")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bnfold"]


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, converted: ConvertOnce) -> Path:
    """A model the converter wrote (the session's digits MLP, shared with the
    service tests), served as version 1 of ``MODEL``."""
    path = tmp_path_factory.mktemp("models")
    converted("mlp", epochs=1, limit=256).write(path, MODEL, version=1)
    return path


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BNFOLD_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(BNFOLD_LOG_LEVEL="warning", BNFOLD_DEVICE="cpu", BNFOLD_DRAIN_S="0")
    env.update(BNFOLD_GRPC_PORT="0")  # HTTP only: no shared port 8001 between test servers
    env.update(BNFOLD_METRICS_PORT="0")  # nor 8002 (Triton's metrics port)
    log = tmp_path_factory.mktemp("server") / "serve.log"
    for _attempt in range(3):  # the port is picked before the server binds it
        port = _free_port()
        argv = [*_bnfold(), "serve", "--repo", str(repo), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", str(WORKERS)]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        srv = Server(proc, port, log)
        if _wait_ready(srv):
            break
        _stop(proc)
    else:
        pytest.fail(f"bnfold serve --workers {WORKERS} did not become ready:\n{srv.log_tail()}")
    try:
        srv.workers = _workers(srv)
        yield srv
    finally:
        _stop(proc)


def _wait_ready(srv: Server, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            return False
        try:
            if _get(srv.port, "/v2/health/ready")[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _workers(srv: Server) -> list[int]:
    """Children of the supervisor that hold the listening socket."""
    listening = [inode for lp, _, inode, st in _tcp_table() if lp == srv.port and st == "0A"]
    assert len(listening) == 1, f"one listening socket on {srv.port}: {listening}"
    deadline = time.monotonic() + 120
    while True:
        workers = sorted(_socket_owners(listening[0], _children(srv.proc.pid)))
        if len(workers) >= WORKERS or time.monotonic() > deadline:
            return workers
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ----------------------------------------------------------------- the traffic
@dataclass
class Traffic:
    """Inference requests sent, and which worker (by /proc) answered each."""

    sent: int = 0
    by_worker: Counter[int] = field(default_factory=Counter)
    header_pids: dict[int, set[str]] = field(default_factory=dict)
    connections: dict[int, http.client.HTTPConnection] = field(default_factory=dict)
    max_error: float = 0.0


def _owner(port: int, conn: http.client.HTTPConnection, pids: list[int]) -> int:
    assert conn.sock is not None
    local = conn.sock.getsockname()[1]
    inodes = [i for lp, rp, i, st in _tcp_table() if lp == port and rp == local and st == "01"]
    assert len(inodes) == 1, f"server side of client port {local}: {inodes}"
    owners = _socket_owners(inodes[0], pids)
    assert len(owners) == 1, f"connection from port {local} owned by {owners} of {pids}"
    return owners[0]


def _infer(conn: http.client.HTTPConnection, x: np.ndarray) -> tuple[int, dict, str | None]:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32"}]}
    body["inputs"][0]["data"] = x.ravel().tolist()
    conn.request("POST", INFER, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    payload = json.loads(r.read())
    return r.status, payload, r.getheader("X-Bnfold-Worker")


@pytest.fixture(scope="module")
def traffic(server: Server, repo: Path) -> Iterator[Traffic]:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repo / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    t = Traffic()
    opened: list[http.client.HTTPConnection] = []
    try:
        for _ in range(MAX_ROUNDS):
            # connect several at once so the kernel hands them to both workers
            batch = [
                http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                for _ in range(CONNECTIONS_PER_ROUND)
            ]
            for conn in batch:
                conn.connect()
            opened += batch
            for conn in batch:
                x = rng.random((1, 64), dtype=np.float32)
                status, payload, header = _infer(conn, x)
                t.sent += 1
                assert status == 200, payload
                (out,) = payload["outputs"]
                assert out["shape"] == [1, 10]
                got = np.asarray(out["data"], np.float32).reshape(1, 10)
                want = session.run(None, {"input": x})[0]
                t.max_error = max(t.max_error, float(np.max(np.abs(got - want))))
                pid = _owner(server.port, conn, server.workers)
                t.by_worker[pid] += 1
                t.connections.setdefault(pid, conn)
                if header is not None:
                    t.header_pids.setdefault(pid, set()).add(header)
            if len(t.by_worker) == WORKERS:
                break
        yield t
    finally:
        for conn in opened:
            conn.close()


def _get_on(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


# ----------------------------------------------------------------- the tests
def test_two_worker_processes_share_the_port(server: Server) -> None:
    assert len(server.workers) == WORKERS, (
        f"{server.workers} hold the listening socket; log:\n{server.log_tail()}"
    )
    assert server.proc.pid not in server.workers
    assert all(_alive(pid) for pid in server.workers)


def test_each_worker_serves(server: Server, traffic: Traffic) -> None:
    assert sorted(traffic.by_worker) == server.workers, (
        f"only {dict(traffic.by_worker)} answered after {traffic.sent} requests"
    )
    assert sum(traffic.by_worker.values()) == traffic.sent
    assert traffic.max_error < 1e-4  # every worker computes what the model computes
    # Where the service names its worker, it names the process the kernel says.
    for pid, headers in traffic.header_pids.items():
        assert headers == {str(pid)}, f"X-Bnfold-Worker {headers} on a connection of {pid}"
    # Triton's statistics extension counts per worker: each one's count is the
    # requests the kernel handed to it (which also checks the attribution).
    for pid, conn in traffic.connections.items():
        status, body = _get_on(conn, f"/v2/models/{MODEL}/stats")
        assert status == 200
        (stats,) = json.loads(body)["model_stats"]
        assert stats["inference_stats"]["success"]["count"] == traffic.by_worker[pid]


def test_metrics_count_every_request_whichever_worker_answers(
    server: Server, traffic: Traffic
) -> None:
    """Prometheus scrapes one port and gets one worker: each scrape must
    report the requests of all workers (prometheus_client multiprocess mode)."""
    for pid, conn in traffic.connections.items():
        status, body = _get_on(conn, "/metrics")
        assert status == 200
        samples = _samples(body.decode())
        where = f"/metrics answered by worker {pid} ({dict(traffic.by_worker)} served)"
        model = {"model": MODEL, "version": "1"}
        assert _sum(samples, "bnfold_inference_requests_total", **model) == traffic.sent, where
        assert _sum(samples, "bnfold_inference_duration_seconds_count", **model) == traffic.sent, (
            where
        )
        assert (
            _sum(
                samples,
                "bnfold_http_requests_total",
                method="POST",
                route=INFER_ROUTE,
                status="200",
            )
            == traffic.sent
        ), where
        assert _sum(samples, "bnfold_inference_failures_total", **model) == 0, where
        # the gauge is per live worker; with a pid label it names both
        ready = [lab for n, lab, v in samples if n == "bnfold_model_ready" and v == 1]
        pids = {lab["pid"] for lab in ready if "pid" in lab}
        if pids:
            assert pids == {str(p) for p in server.workers}, where


def test_sigterm_stops_every_worker(server: Server, traffic: Traffic) -> None:
    for conn in traffic.connections.values():
        conn.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(120) == 0, server.log_tail()
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in server.workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in server.workers), "a worker outlived the supervisor"
