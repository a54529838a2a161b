"""Soak: a bounded number of requests at high concurrency against a running
server, with zero failures expected, the server's RSS before and after, and
latency percentiles.

    python -m bench.serve.soak --requests 20000 --concurrency 64

starts the server on the bench repository (bench/serve/models.py builds it
when missing) and writes ``bench/results/soak.json``; the test
(tests/robustness/test_robust_soak.py) runs the same ``soak`` at a small size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .loadgen import Request, load


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux /proc; no psutil needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def soak(
    port: int,
    pid: int,
    request: Request,
    *,
    requests: int,
    concurrency: int,
    warmup: int = 500,
) -> dict[str, Any]:
    """Warm up, then send ``requests`` at ``concurrency``; RSS of ``pid``
    around the measured part."""
    load("127.0.0.1", port, request, concurrency=concurrency, requests=warmup)
    before = rss_bytes(pid)
    result = load("127.0.0.1", port, request, concurrency=concurrency, requests=requests)
    after = rss_bytes(pid)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "answered": result.answered,
        "ok": result.ok,
        "failed": result.answered - result.ok + result.transport_errors,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "transport_errors": result.transport_errors,
        "seconds": round(result.seconds, 2),
        "throughput": round(result.throughput, 1),
        "p50_ms": round(result.percentile_ms(50), 2),
        "p90_ms": round(result.percentile_ms(90), 2),
        "p99_ms": round(result.percentile_ms(99), 2),
        "p999_ms": round(result.percentile_ms(99.9), 2),
        "max_ms": round(float(result.latencies.max()) * 1e3, 2) if result.answered else None,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "rss_growth_mib": round((after - before) / 2**20, 1),
    }


def main() -> None:
    from .run import bench_repo, binary_request, start_bnfold

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", default="cifar-cnn")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args()
    repo, models = bench_repo()
    spec = models[args.model]
    with start_bnfold(repo, "bnfold-soak", grpc=False) as server:
        report = soak(
            server.port,
            server.pid,
            binary_request(spec, 1),
            requests=args.requests,
            concurrency=args.concurrency,
        )
    report["model"] = args.model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
