"""Serving benchmark: bnfold beside the limit and beside the peers, one command.

    python -m bench.serve                      # full run (~10 min on 2 cores)
    python -m bench.serve --quick              # smoke run: one model, short points
    python -m bench.serve --device cuda        # every server and the limit on CUDA

For each model (the digits MLP, the 3x32x32 CIFAR CNN, the 48x48 FER CNN),
one sample per request, at concurrency 1, 8, 32 and 64, JSON and binary
tensors:

- ``inprocess``: ONNX Runtime called in a loop at batch size = concurrency,
  no server (the limit);
- ``bnfold``: ``python -m service``, dynamic batching on, and again off;
- ``naive``: the hand-rolled FastAPI + ONNX Runtime route (bench/serve/naive.py),
  JSON only;
- ``kserve``: KServe's Python model server on the same ONNX files
  (bench/serve/kserve_server.py, in its own virtual environment).

Every server runs ONNX Runtime on one thread and shares the machine with the
load generator: ``wrk`` with a Lua script that sends the prepared body
(bench/serve/wrk_body.lua), or bench/serve/loadgen.py when wrk is missing.
Writes bench/results/serve.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
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
ARCHS = {"digits-mlp": "mlp", "cifar-cnn": "cifar-cnn", "fer-cnn": "fer-cnn"}
CONCURRENCY = (1, 8, 32, 64)
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


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def _process(kind: str, argv: list[str], env: dict[str, str], port: int) -> Iterator[Server]:
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / f"{kind}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(proc, port, log)
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


BNFOLD_SETTINGS = {
    "BNFOLD_INTRA_OP_THREADS": "1",
    "BNFOLD_INTER_OP_THREADS": "1",
    "BNFOLD_RUNNER_THREADS": "1",  # one session.run at a time: one ORT thread in all
    "BNFOLD_BATCHES_IN_FLIGHT": "2",  # the next batch waits ready behind the running one
    "BNFOLD_ACCESS_LOG": "false",
    "BNFOLD_LOG_LEVEL": "warning",
}


@contextmanager
def start_bnfold(repo: Path, *, batching: bool, device: str = "cpu") -> Iterator[Server]:
    port = free_port()
    env = _env(
        **BNFOLD_SETTINGS,
        BNFOLD_BATCHING="true" if batching else "false",
        BNFOLD_DEVICE=device,
    )
    argv = [sys.executable, "-m", "bnfold.service", "--repo", str(repo), "--port", str(port)]
    with _process("bnfold" if batching else "bnfold-nobatch", argv, env, port) as server:
        yield server


@contextmanager
def start_naive(repo: Path, device: str = "cpu") -> Iterator[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.serve.naive", "--repo", str(repo), "--port", str(port)]
    with _process("naive", [*argv, "--device", device], _env(), port) as server:
        yield server


def kserve_python() -> Path:
    return KSERVE_VENV / "bin" / "python"


def setup_kserve() -> str | None:
    """Create the separate venv for KServe; the reason when it cannot be done."""
    if kserve_python().exists():
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
        pip = [str(kserve_python()), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "kserve", "onnxruntime", "numpy"], check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        shutil.rmtree(KSERVE_VENV, ignore_errors=True)
        return f"pip install kserve failed: {e}"
    return None


@contextmanager
def start_kserve(repo: Path, device: str = "cpu") -> Iterator[Server]:
    port = free_port()
    argv = [
        str(kserve_python()),
        str(HERE / "kserve_server.py"),
        "--repo",
        str(repo),
        "--device",
        device,
        "--http_port",
        str(port),
        "--enable_grpc",
        "false",
        "--enable_latency_logging",
        "false",
        "--configure_logging",
        "false",
    ]
    with _process("kserve", argv, _env(), port) as server:
        yield server


# --- measuring ----------------------------------------------------------------


def measure_inprocess(spec: ModelSpec, batch: int, device: str, seconds: float) -> dict[str, Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(spec.path), so, providers=providers)
    x = sample(spec, batch)
    for _ in range(10):
        session.run(None, {spec.input: x})
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, {spec.input: x})
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    return {
        "throughput": round(batch / float(t.mean()), 1),
        "mean_ms": round(float(t.mean()) * 1e3, 3),
        "p50_ms": round(float(np.percentile(t, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(t, 99)) * 1e3, 3),
        "provider": session.get_providers()[0],
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


def drive(
    server: Server, request: Request, concurrency: int, seconds: float, use_wrk: bool
) -> dict[str, Any]:
    runner = run_wrk if use_wrk else run_loadgen
    runner(server.port, request, concurrency, 1.0)  # warm-up
    return runner(server.port, request, concurrency, seconds)


# --- the run -------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("bnfold", "onnxruntime-gpu", "onnxruntime", "fastapi", "uvicorn", "starlette"):
        with suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    if kserve_python().exists():
        code = "from importlib import metadata; print(metadata.version('kserve'))"
        r = subprocess.run([str(kserve_python()), "-c", code], capture_output=True, text=True)
        out["kserve"] = r.stdout.strip() or "unknown"
    wrk = shutil.which("wrk")
    if wrk:
        r = subprocess.run([wrk, "--version"], capture_output=True, text=True)
        out["wrk"] = (r.stdout or r.stderr).split("[")[0].strip()
    return out


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
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--models", default=",".join(ARCHS))
    parser.add_argument("--quick", action="store_true", help="cifar-cnn only, 2 s points")
    parser.add_argument("--no-kserve", action="store_true")
    parser.add_argument("--loadgen", action="store_true", help="asyncio client even if wrk exists")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.duration = "cifar-cnn", 2.0
    levels = [int(c) for c in args.concurrency.split(",")]
    use_wrk = shutil.which("wrk") is not None and not args.loadgen
    repo, all_specs = bench_repo()
    specs = {n: all_specs[n] for n in args.models.split(",")}
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    notes: dict[str, str] = {}

    def add(server: str, model: str, fmt: str, batching: str, c: int, r: dict[str, Any]) -> None:
        rows.append(
            {"server": server, "model": model, "format": fmt, "batching": batching, "c": c, **r}
        )
        print(
            f"{server:10s} {model:11s} {fmt:6s} batching={batching:3s} c={c:<3d} "
            f"{r['throughput']:9.1f}/s p50 {r['p50_ms']:8.3f} ms p99 {r['p99_ms']:8.3f} ms"
            + (f"  ERRORS {r['errors']}" if r.get("errors") else ""),
            flush=True,
        )

    for name, spec in specs.items():
        for c in levels:
            r = measure_inprocess(spec, c, args.device, min(2.0, args.duration / 2))
            add("inprocess", name, "-", "-", c, r)

    def sweep(server: Server, label: str, batching: str, formats: tuple[str, ...]) -> None:
        # A fresh server is slower for its first seconds (allocator, caches,
        # interpreter specialisation): warm every model before measuring.
        for spec in specs.values():
            request = binary_request(spec, 1) if "binary" in formats else json_request(spec, 1)
            runner = run_wrk if use_wrk else run_loadgen
            runner(server.port, request, 8, 2.0)
        for name, spec in specs.items():
            for fmt in formats:
                request = binary_request(spec, 1) if fmt == "binary" else json_request(spec, 1)
                for c in levels:
                    add(
                        label,
                        name,
                        fmt,
                        batching,
                        c,
                        drive(server, request, c, args.duration, use_wrk),
                    )

    with start_bnfold(repo, batching=True, device=args.device) as s:
        sweep(s, "bnfold", "on", ("binary", "json"))
    with start_bnfold(repo, batching=False, device=args.device) as s:
        sweep(s, "bnfold", "off", ("binary", "json"))
    with start_naive(repo, device=args.device) as s:
        sweep(s, "naive", "off", ("json",))
    if args.no_kserve:
        notes["kserve"] = "skipped (--no-kserve)"
    else:
        reason = setup_kserve()
        if reason:
            notes["kserve"] = reason
        else:
            with start_kserve(repo, device=args.device) as s:
                sweep(s, "kserve", "off", ("binary", "json"))

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "versions": versions(),
        "device": args.device,
        "load_generator": "wrk (bench/serve/wrk_body.lua)" if use_wrk else "bench/serve/loadgen.py",
        "seconds_per_point": args.duration,
        "bnfold_settings": BNFOLD_SETTINGS,
        "wall_seconds": round(time.monotonic() - started),
        "notes": notes,
    }
    from .report import write_report

    write_report(args.out, meta, rows)
    print(f"wrote {args.out}/serve.md, serve.json, serve.png in {meta['wall_seconds']} s")


if __name__ == "__main__":
    main()
