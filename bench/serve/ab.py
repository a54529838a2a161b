"""bnfold against another checkout of bnfold, interleaved: did a change move
serving speed?

    python -m bench.serve.ab --base /path/to/other/checkout [--rounds 6] [--seconds 3]

Both servers run at once on the benchmark's models (bench/serve's
``bench_repo``, the CIFAR CNN), at shipped defaults with one ONNX Runtime
thread, each from its own checkout and that checkout's ``.venv``. For every
point (HTTP binary c=32 and c=1, JSON c=32, gRPC c=32) of every round the
two are measured one after the other in a fresh random order (wrk for HTTP,
bench/serve/grpc_load.py for gRPC); the result is the median of the
per-round ratios (this checkout / the base), with each round's. The load
average is printed before and after: on a machine doing other work the
ratios are a rehearsal.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

from bench.serve import run

POINTS = (("binary", 32), ("binary", 1), ("json", 32), ("grpc", 32))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (with .venv)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    repo, specs = run.bench_repo()
    spec = specs["cifar-cnn"]
    roots = {"this": run.ROOT, "base": args.base.resolve()}
    print(f"load average before: {os.getloadavg()}", flush=True)
    results: dict[tuple[str, tuple[str, int]], list[float]] = {}
    with ExitStack() as stack:
        servers = {}
        for kind, root in roots.items():
            port, grpc_port, metrics_port = run.free_port(), run.free_port(), run.free_port()
            env = run._env(**run.BNFOLD_SETTINGS, BNFOLD_GRPC_PORT=str(grpc_port))
            env |= {"BNFOLD_METRICS_PORT": str(metrics_port), "PYTHONPATH": str(root)}
            python = str(root / ".venv" / "bin" / "python")
            argv = [python, "-m", "bnfold.service", "--repo", str(repo), "--port", str(port)]
            server = stack.enter_context(run._process(f"ab-{kind}", argv, env, port))
            server.grpc_port = grpc_port
            servers[kind] = server
        rng = random.Random(args.seed)
        for index in range(args.rounds):
            for point in POINTS:
                kinds = list(servers)
                rng.shuffle(kinds)
                for kind in kinds:
                    fmt, c = point
                    server = servers[kind]
                    if fmt == "grpc":
                        out = run.run_grpc(server.grpc_port, spec, c, args.seconds)
                    else:
                        build = run.binary_request if fmt == "binary" else run.json_request
                        out = run.run_wrk(server.port, build(spec, 1), c, args.seconds)
                    results.setdefault((kind, point), []).append(out["throughput"])
            print(f"round {index + 1} of {args.rounds} done", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"this: {roots['this']}\nbase: {roots['base']}")
    for point in POINTS:
        this, base = results[("this", point)], results[("base", point)]
        ratios = [a / b for a, b in zip(this, base, strict=True)]
        rounds = ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"cifar-cnn {point[0]} c={point[1]}: this {statistics.median(this):,.0f}/s, "
            f"base {statistics.median(base):,.0f}/s, ratio {statistics.median(ratios):.2f}x "
            f"(rounds: {rounds})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
