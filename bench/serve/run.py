"""Serving benchmark: every contender started at once, each on its own port,
and rotated in random order for every point over several rounds.

    python -m bench.serve                      # full run (~15-20 min on 2 cores)
    python -m bench.serve --quick              # smoke run: cifar-cnn, 1 round, 1 s points
    python -m bench.serve --setup-kserve --setup-pytriton   # the peers' venvs only

A point is (model, protocol and format, concurrency): the digits MLP, the
3x32x32 CIFAR CNN and the 48x48 FER CNN, one sample per request, JSON and
binary tensors over HTTP at concurrency 1, 8, 32, 64, and gRPC (raw tensor
contents) on the CIFAR CNN. For every point of every round, the contenders
serving it are measured one after the other in a fresh random order:

- ``bnfold``: ``python -m bnfold.service`` at its shipped defaults (dynamic
  batching on), ONNX Runtime on one thread like every peer;
- ``bnfold-nobatch``: the same with ``BNFOLD_BATCHING=false``;
- ``bnfold-noshadow``: the same with ``--shadow-parity 0`` (the defaults
  compare 1% of requests with their reference off the request's path);
- ``bnfold-w2``: the same with ``--workers 2`` (CIFAR CNN only);
- ``pytriton``: the real Triton server (the ``nvidia-pytriton`` wheel's
  tritonserver) with dynamic batching, in front of a Python callable running
  ONNX Runtime (bench/serve/pytriton_server.py, in bench/serve/.venv-pytriton);
- ``kserve``: KServe's Python model server (bench/serve/kserve_server.py, in
  bench/serve/.venv-kserve);
- ``inprocess``: ONNX Runtime called in a loop at batch size = concurrency,
  no server (the limit).

One load generator for all: ``wrk`` (bench/serve/wrk_body.lua) for HTTP, or
bench/serve/loadgen.py with ``--loadgen`` or without wrk; for gRPC
bench/serve/grpc_load.py (bytes in, bytes out, in its own process). The
report gives, per point and contender, the median over rounds and the
interquartile range, and the ratios computed within each round.
Writes bench/results/serve.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.contract import scan_versions

from .loadgen import Request, load

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "tmp"  # git-ignored: models, bodies, server logs
KSERVE_VENV = HERE / ".venv-kserve"
PYTRITON_VENV = HERE / ".venv-pytriton"
ARCHS = {"digits-mlp": "mlp", "cifar-cnn": "cifar-cnn", "fer-cnn": "fer-cnn"}
CONCURRENCY = (1, 8, 32, 64)
GRPC_MODEL = "cifar-cnn"
GRPC_CONCURRENCY = (1, 32)
WORKERS_MODEL = "cifar-cnn"
HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input: str
    row_shape: tuple[int, ...]
    path: Path  # model.onnx of the served version


@dataclass
class Server:
    kind: str
    port: int
    pid: int
    grpc_port: int = 0
    pids: list[int] = field(default_factory=list)


# --- models and request bodies ------------------------------------------------


def bench_repo(repo: Path = WORK / "serve-models") -> tuple[Path, dict[str, ModelSpec]]:
    """The three models, built by converter.pipeline when missing (needs torch;
    one quick epoch on digits: serving speed does not depend on the weights)."""
    for name, arch in ARCHS.items():
        if not (repo / name / "config.json").exists():
            from bnfold.converter.pipeline import ConvertOptions, convert

            print(f"building {name} ({arch}) into {repo}", flush=True)
            convert(
                ConvertOptions(arch=arch, data="digits", repo=repo, name=name, epochs=1, limit=256)
            )
    specs = {}
    for name in ARCHS:
        config = json.loads((repo / name / "config.json").read_text())
        version = scan_versions(repo / name).valid[-1]
        tensor = config["input"][0]
        specs[name] = ModelSpec(
            name, tensor["name"], tuple(tensor["shape"]), repo / name / str(version) / "model.onnx"
        )
    return repo, specs


def sample(spec: ModelSpec, rows: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, *spec.row_shape)).astype(np.float32)


def binary_request(spec: ModelSpec, rows: int) -> Request:
    x = sample(spec, rows)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": spec.input,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return Request(
        f"/v2/models/{spec.name}/infer",
        head + x.tobytes(),
        {"Content-Type": "application/octet-stream", HEADER: str(len(head))},
    )


def json_request(spec: ModelSpec, rows: int) -> Request:
    x = sample(spec, rows)
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": spec.input,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    return Request(f"/v2/models/{spec.name}/infer", body, {"Content-Type": "application/json"})


# --- servers ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float, path: str
) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def _process(
    kind: str,
    argv: list[str],
    env: dict[str, str],
    port: int,
    *,
    timeout: float = 120,
    ready: str = "/v2/health/ready",
) -> Iterator[Server]:
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / f"{kind}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(proc, port, log, timeout, ready)
        yield Server(kind, port, proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BNFOLD_", "PROMETHEUS_"))}
    # One ONNX Runtime thread everywhere; numpy's BLAS too.
    env |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return env | extra


# bnfold at its shipped defaults: only the device, the ports and one ORT
# thread (what every peer gets) are set.
BNFOLD_SETTINGS = {"BNFOLD_INTRA_OP_THREADS": "1", "BNFOLD_DEVICE": "cpu"}


@contextmanager
def start_bnfold(
    repo: Path,
    kind: str,
    *,
    batching: bool = True,
    workers: int = 1,
    grpc: bool = True,
    shadow_parity: float | None = None,
) -> Iterator[Server]:
    port, grpc_port = free_port(), (free_port() if grpc else 0)
    # Triton's metrics port (8002 by default) of each contender a free one:
    # several bnfold servers run at once here.
    env = _env(**BNFOLD_SETTINGS, BNFOLD_GRPC_PORT=str(grpc_port))
    env["BNFOLD_METRICS_PORT"] = str(free_port())
    if not batching:
        env["BNFOLD_BATCHING"] = "false"
    if shadow_parity is not None:
        env["BNFOLD_SHADOW_PARITY"] = str(shadow_parity)
    argv = [sys.executable, "-m", "bnfold.service", "--repo", str(repo), "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    with _process(kind, argv, env, port) as server:
        server.grpc_port = grpc_port
        yield server


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _setup_venv(venv: Path, packages: list[str]) -> str | None:
    """Create ``venv`` with ``packages``; the reason when it cannot be done."""
    if _venv_python(venv).exists():
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(_venv_python(venv)), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, *packages], check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        shutil.rmtree(venv, ignore_errors=True)
        return f"pip install {' '.join(packages)} failed: {e}"
    return None


def setup_kserve() -> str | None:
    return _setup_venv(KSERVE_VENV, ["kserve", "onnxruntime", "numpy"])


def setup_pytriton() -> str | None:
    """PyTriton's wheel carries the tritonserver binary (glibc 2.35 or newer)."""
    reason = _setup_venv(PYTRITON_VENV, ["nvidia-pytriton", "onnxruntime", "numpy"])
    if reason is None:
        check = [str(_venv_python(PYTRITON_VENV)), "-c", "import pytriton.triton"]
        if subprocess.run(check, capture_output=True).returncode != 0:
            return "pytriton does not import in its venv"
    return reason


@contextmanager
def start_kserve(repo: Path, device: str = "cpu") -> Iterator[Server]:
    port, grpc_port = free_port(), free_port()
    argv = [
        str(_venv_python(KSERVE_VENV)),
        str(HERE / "kserve_server.py"),
        "--repo",
        str(repo),
        "--device",
        device,
        "--http_port",
        str(port),
        "--grpc_port",
        str(grpc_port),
        "--enable_latency_logging",
        "false",
        "--configure_logging",
        "false",
    ]
    with _process("kserve", argv, _env(), port) as server:
        server.grpc_port = grpc_port
        yield server


@contextmanager
def start_pytriton(repo: Path, device: str = "cpu") -> Iterator[Server]:
    port, grpc_port, metrics = free_port(), free_port(), free_port()
    argv = [str(_venv_python(PYTRITON_VENV)), str(HERE / "pytriton_server.py")]
    argv += ["--repo", str(repo), "--device", device, "--http-port", str(port)]
    argv += ["--grpc-port", str(grpc_port), "--metrics-port", str(metrics)]
    # Triton's Python backend stub links the system's libpython3.x; the venv's
    # interpreter may be another build of the same version (pyenv here), whose
    # standard library the stub then cannot run. Its own libpython goes first.
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    libdir = subprocess.run(
        [str(_venv_python(PYTRITON_VENV)), "-c", code], capture_output=True, text=True
    ).stdout.strip()
    env = _env()
    if libdir:
        env["LD_LIBRARY_PATH"] = ":".join(x for x in (libdir, env.get("LD_LIBRARY_PATH")) if x)
    ready = f"/v2/models/{next(iter(ARCHS))}/ready"  # models bind after the server starts
    with _process("pytriton", argv, env, port, timeout=300, ready=ready) as server:
        server.grpc_port = grpc_port
        yield server


# --- measuring ----------------------------------------------------------------


class InProcess:
    """ONNX Runtime in this process, one thread: the limit for each model."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {
            n: ort.InferenceSession(str(s.path), so, providers=["CPUExecutionProvider"])
            for n, s in specs.items()
        }
        self.specs = specs

    def measure(self, model: str, batch: int, seconds: float) -> dict[str, Any]:
        spec, session = self.specs[model], self.sessions[model]
        x = sample(spec, batch)
        for _ in range(5):
            session.run(None, {spec.input: x})
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            session.run(None, {spec.input: x})
            times.append(time.perf_counter() - t0)
        t = np.asarray(times)
        return {
            "throughput": round(batch * len(t) / float(t.sum()), 1),
            "mean_ms": round(float(t.mean()) * 1e3, 3),
            "p50_ms": round(float(np.percentile(t, 50)) * 1e3, 3),
            "p90_ms": round(float(np.percentile(t, 90)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(t, 99)) * 1e3, 3),
            "requests": len(t),
            "errors": 0,
        }


def run_wrk(port: int, request: Request, concurrency: int, seconds: float) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    body = WORK / "body.bin"
    body.write_bytes(request.body)
    env = os.environ | {
        "BENCH_PATH": request.path,
        "BENCH_BODY": str(body),
        "BENCH_CONTENT_TYPE": request.headers.get("Content-Type", "application/json"),
        "BENCH_HEADER_LENGTH": request.headers.get(HEADER, ""),
    }
    duration = max(1, round(seconds))  # wrk takes whole seconds
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "30s"]
    argv += ["-s", str(HERE / "wrk_body.lua"), f"http://127.0.0.1:{port}"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    d = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(d[k] for k in ("status_errors", "connect_errors", "read_errors", "timeouts"))
    errors += d["write_errors"]
    ok = d["requests"] - d["status_errors"]
    return {
        "throughput": round(ok / (d["duration_us"] / 1e6), 1),
        "mean_ms": round(d["mean_us"] / 1e3, 3),
        "p50_ms": round(d["p50_us"] / 1e3, 3),
        "p90_ms": round(d["p90_us"] / 1e3, 3),
        "p99_ms": round(d["p99_us"] / 1e3, 3),
        "requests": d["requests"],
        "errors": errors,
    }


def run_loadgen(port: int, request: Request, concurrency: int, seconds: float) -> dict[str, Any]:
    result = load("127.0.0.1", port, request, concurrency=concurrency, duration_s=seconds)
    s = result.summary()
    return {
        "throughput": s["throughput"],
        "mean_ms": s["mean_ms"],
        "p50_ms": s["p50_ms"],
        "p90_ms": s["p90_ms"],
        "p99_ms": s["p99_ms"],
        "requests": s["requests"],
        "errors": s["failed"],
    }


def run_grpc(port: int, spec: ModelSpec, concurrency: int, seconds: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.serve.grpc_load", "--port", str(port)]
    argv += ["--model", spec.name, "--input", spec.input]
    argv += ["--shape", ",".join(map(str, (1, *spec.row_shape)))]
    argv += ["--concurrency", str(concurrency), "--seconds", str(seconds)]
    out = subprocess.run(
        argv, cwd=ROOT, env=_env(), capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    d = json.loads(line.removeprefix("BENCH_JSON "))
    return {
        "throughput": round(d["requests"] / d["seconds"], 1),
        "mean_ms": round(d["mean_us"] / 1e3, 3),
        "p50_ms": round(d["p50_us"] / 1e3, 3),
        "p90_ms": round(d["p90_us"] / 1e3, 3),
        "p99_ms": round(d["p99_us"] / 1e3, 3),
        "requests": d["requests"],
        "errors": d["errors"],
    }


# --- the run -------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    model: str
    protocol: str  # "http" or "grpc"
    format: str  # "binary", "json" (HTTP) or "raw" (gRPC)
    c: int


def plan(specs: dict[str, ModelSpec], levels: list[int], grpc: bool) -> list[Point]:
    points = [Point(m, "http", fmt, c) for m in specs for fmt in ("binary", "json") for c in levels]
    if grpc and GRPC_MODEL in specs:
        points += [Point(GRPC_MODEL, "grpc", "raw", c) for c in GRPC_CONCURRENCY]
    return points


def contenders_for(point: Point, servers: dict[str, Server]) -> list[str]:
    """Who runs ``point``. Every bnfold variant listens on gRPC as the shipped
    defaults do (a gRPC server shares the event loop), but only the defaults
    are measured on it."""
    names = []
    for name, server in servers.items():
        if point.protocol == "grpc" and (not server.grpc_port or name.startswith("bnfold-")):
            continue
        if name == "bnfold-w2" and point.model != WORKERS_MODEL:
            continue
        names.append(name)
    if point.protocol == "http" and point.format == "binary":
        names.append("inprocess")  # the limit does not depend on the format
    return names


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("bnfold", "onnxruntime-gpu", "onnxruntime", "fastapi", "uvicorn", "starlette"):
        with suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    for dist in ("orjson", "grpcio"):
        with suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    for venv, dists in ((KSERVE_VENV, ["kserve"]), (PYTRITON_VENV, ["nvidia-pytriton"])):
        if _venv_python(venv).exists():
            for dist in dists:
                code = f"from importlib import metadata; print(metadata.version('{dist}'))"
                r = subprocess.run(
                    [str(_venv_python(venv)), "-c", code], capture_output=True, text=True
                )
                out[dist] = r.stdout.strip() or "unknown"
    wrk = shutil.which("wrk")
    if wrk:
        r = subprocess.run([wrk, "--version"], capture_output=True, text=True)
        out["wrk"] = (r.stdout or r.stderr).split("[")[0].strip()
    return out


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def wait_for_quiet(limit: float, threshold: float = 1.0) -> None:
    """Building the models (training) loads the machine: let the 1-minute
    load average settle before the run reads its "before"."""
    deadline = time.monotonic() + limit
    while (load := load_average()) and load[0] > threshold and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: load average {load[0]:.2f}", flush=True)
        time.sleep(15)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(
            int(x.split()[1]) // 1024
            for x in Path("/proc/meminfo").read_text().splitlines()
            if x.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem = 0
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mib": mem, "os": platform.platform()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--models", default=",".join(ARCHS))
    parser.add_argument("--quick", action="store_true", help="cifar-cnn, 1 round, 1 s points")
    parser.add_argument("--no-kserve", action="store_true")
    parser.add_argument("--no-pytriton", action="store_true")
    parser.add_argument("--no-grpc", action="store_true")
    parser.add_argument("--no-workers", action="store_true", help="leave bnfold-w2 out")
    parser.add_argument("--setup-kserve", action="store_true", help="make the venv and exit")
    parser.add_argument("--setup-pytriton", action="store_true", help="make the venv and exit")
    parser.add_argument("--loadgen", action="store_true", help="asyncio client even if wrk exists")
    parser.add_argument("--seed", type=int, default=0, help="of the rotation order")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=600.0,
        help="after the models are built, wait up to this many seconds for the 1-minute load "
        "average to fall to 1 before the first measurement",
    )
    parser.add_argument(
        "--rest",
        type=float,
        default=90.0,
        help="seconds to wait, every server stopped, before reading the load average after "
        "the run (the run's own load decays; what is left is other work)",
    )
    args = parser.parse_args(argv)
    if args.setup_kserve or args.setup_pytriton:
        for flag, setup in (
            (args.setup_kserve, setup_kserve),
            (args.setup_pytriton, setup_pytriton),
        ):
            if flag:
                print(setup() or f"{setup.__name__}: ready")
        return
    if args.quick:
        args.models, args.duration, args.rounds = "cifar-cnn", 1.0, 1
    levels = [int(c) for c in args.concurrency.split(",")]
    use_wrk = shutil.which("wrk") is not None and not args.loadgen
    http = run_wrk if use_wrk else run_loadgen
    repo, all_specs = bench_repo()
    specs = {n: all_specs[n] for n in args.models.split(",")}
    wait_for_quiet(args.quiet_wait)
    started = time.monotonic()
    load_before = load_average()
    notes: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    rng = random.Random(args.seed)

    with ExitStack() as stack:
        servers: dict[str, Server] = {}
        servers["bnfold"] = stack.enter_context(start_bnfold(repo, "bnfold"))
        servers["bnfold-nobatch"] = stack.enter_context(
            start_bnfold(repo, "bnfold-nobatch", batching=False)
        )
        servers["bnfold-noshadow"] = stack.enter_context(
            start_bnfold(repo, "bnfold-noshadow", shadow_parity=0)
        )
        if not args.no_workers and WORKERS_MODEL in specs:
            servers["bnfold-w2"] = stack.enter_context(start_bnfold(repo, "bnfold-w2", workers=2))
        peers: list[tuple[str, bool, Callable[[], str | None], Any]] = [
            ("pytriton", args.no_pytriton, setup_pytriton, start_pytriton),
            ("kserve", args.no_kserve, setup_kserve, start_kserve),
        ]
        for name, skip, setup, start in peers:
            reason = f"skipped (--no-{name})" if skip else setup()
            if reason:
                notes[name] = reason
                continue
            try:
                servers[name] = stack.enter_context(start(repo))
            except RuntimeError as e:
                notes[name] = f"did not start: {str(e).splitlines()[0]}"
        inprocess = InProcess(specs)
        if args.no_grpc:
            notes["grpc"] = "skipped (--no-grpc)"

        def measure(name: str, point: Point, seconds: float) -> dict[str, Any]:
            spec = specs[point.model]
            if name == "inprocess":
                return inprocess.measure(point.model, point.c, seconds)
            server = servers[name]
            if point.protocol == "grpc":
                return run_grpc(server.grpc_port, spec, point.c, seconds)
            request = binary_request(spec, 1) if point.format == "binary" else json_request(spec, 1)
            return http(server.port, request, point.c, seconds)

        points = plan(specs, levels, grpc=not args.no_grpc)
        # A fresh server is slower for its first seconds (allocator, caches,
        # interpreter specialisation): every contender serves every model in
        # every format once before the first round.
        kinds = {Point(p.model, p.protocol, p.format, 8) for p in points}
        for name in servers:
            for point in sorted(kinds, key=str):
                if name in contenders_for(point, servers):
                    measure(name, point, 1.0)
        for r in range(args.rounds):
            for point in points:
                names = contenders_for(point, servers)
                rng.shuffle(names)
                for name in names:
                    result = measure(name, point, args.duration)
                    row = {"round": r, "server": name, **point.__dict__, **result}
                    rows.append(row)
                    print(
                        f"r{r} {name:15s} {point.model:11s} {point.protocol:4s} "
                        f"{point.format:6s} c={point.c:<3d} {result['throughput']:9.1f}/s "
                        f"p50 {result['p50_ms']:8.3f} ms"
                        + (f"  ERRORS {result['errors']}" if result.get("errors") else ""),
                        flush=True,
                    )

    load_after_run = load_average()
    time.sleep(args.rest)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "versions": versions(),
        "load_generator": (
            "wrk (bench/serve/wrk_body.lua)" if use_wrk else "bench/serve/loadgen.py"
        )
        + "; gRPC: bench/serve/grpc_load.py",
        "seconds_per_measurement": args.duration,
        "rounds": args.rounds,
        "bnfold_settings": BNFOLD_SETTINGS,
        "load_average_before": load_before,
        "load_average_at_end": load_after_run,
        "rest_seconds": args.rest,
        "load_average_after": load_average(),
        "wall_seconds": round(time.monotonic() - started),
        "notes": notes,
    }
    from .report import write_report

    write_report(args.out, meta, rows)
    print(f"wrote {args.out}/serve.md, serve.json, serve.png in {meta['wall_seconds']} s")


if __name__ == "__main__":
    main()
