"""GPU latency: unfolded vs bnfold-folded vs BN-deleted on ONNX Runtime, with torch eager beside.

Per architecture (converter/models.py; random BN statistics with mixed-sign gamma, plus a
gamma > 0 fer-cnn, as bench/fold/bench_fold.py does) the BN network, its BN-deleted twin
(same non-BN weights) and the bnfold-folded graph are timed on ONNX Runtime with the chosen
provider, interleaved rounds, per batch size; reported as median (IQR) of per-round ratios
against BN-deleted. Torch eager (eval, no_grad, same device) runs the unfolded network.
ORT inputs and outputs are bound on the device (I/O binding): no host copies are timed.

    python -m bench.gpu [--device cuda|cpu] [--batches 1,8,32,64,128,256] [--seconds S]
                        [--out bench/results]

CPU smoke: `.venv/bin/python -m bench.gpu --device cpu --batches 1,8 --seconds 0.5 --out /tmp/x`

On a lent GPU machine (/work/shared/gpu/README.md): stage onnxruntime-gpu with
`bash ../shared/gpu/prepare.sh`, assemble it with five `run` calls
(`carry: [".gpu/bin", ".gpu/ortK"]`, `bash .gpu/bin/assemble.sh`), then in the same warm machine:
    bash .gpu/bin/assemble.sh && export PYTHONPATH=$PWD/.gpu/site:$PWD &&
    python -m bench.gpu --device cuda --out $OUT
and copy $OUT/gpu.md, $OUT/gpu.json into bench/results. Fails loudly if CUDA is not the
provider ORT actually uses.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bench.fold.bench_fold import ROOT, environment, quiet, randomise_bn
from bench.timing import interleaved
from bnfold.contract import compare
from bnfold.converter.export import export_reference
from bnfold.converter.models import DEFAULT_INPUT_SHAPES, ArchConfig, build_model
from bnfold.folding import fold

CLASSES = {"mlp": 10, "cifar-cnn": 10, "fer-cnn": 7, "resnet": 10}
KINDS = ("unfolded", "folded", "deleted", "torch")


def networks() -> dict[str, dict[str, Any]]:
    """Per label: torch BN model, ONNX unfolded / folded / BN-deleted, fold report."""
    nets = {}
    for arch, positive in [(a, False) for a in CLASSES] + [("fer-cnn", True)]:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        config = ArchConfig(arch, DEFAULT_INPUT_SHAPES[arch], CLASSES[arch])
        no_bn_config = ArchConfig(arch, DEFAULT_INPUT_SHAPES[arch], CLASSES[arch], bn=False)
        with_bn = build_model(config).eval()
        randomise_bn(with_bn, gen, positive=positive)
        no_bn = build_model(no_bn_config).eval()
        src = with_bn.state_dict()
        shared = {
            k: v for k, v in no_bn.state_dict().items() if k in src and src[k].shape == v.shape
        }
        no_bn.load_state_dict({**no_bn.state_dict(), **{k: src[k] for k in shared}})
        with quiet():
            ref = export_reference(with_bn, config)
            deleted = export_reference(no_bn, no_bn_config)
        folded, report = fold(ref)
        label = arch + (" (gamma > 0)" if positive else "")
        nets[label] = {
            "torch": with_bn,
            "onnx": {"unfolded": ref, "folded": folded, "deleted": deleted},
            "bn_before": report.bn_before,
            "bn_after": report.bn_after,
            "shape": DEFAULT_INPUT_SHAPES[arch],
        }
    return nets


def session(model: onnx.ModelProto, device: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if device == "cpu":
        so.intra_op_num_threads = torch.get_num_threads()  # same thread count as torch eager
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # don't starve torch
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else None
    s = ort.InferenceSession(
        model.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"]
    )
    if device == "cuda" and s.get_providers()[0] != "CUDAExecutionProvider":
        raise SystemExit(f"FAIL: ORT fell back to {s.get_providers()}; CUDA provider not loaded")
    return s


def ort_runner(s: ort.InferenceSession, x: np.ndarray, device: str) -> Callable[[], np.ndarray]:
    """Input and output bound on the device; timing calls skip the host copy."""
    binding = s.io_binding()
    xv = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
    binding.bind_ortvalue_input(s.get_inputs()[0].name, xv)
    binding.bind_output(s.get_outputs()[0].name, device)

    def run(fetch: bool = False) -> np.ndarray | None:
        s.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0] if fetch else None

    run.keep = xv  # type: ignore[attr-defined]  # keep the device buffer alive
    return run


def torch_runner(model: torch.nn.Module, x: np.ndarray, device: str) -> Callable[[], Any]:
    xt = torch.from_numpy(x).to(device)

    def run(fetch: bool = False) -> np.ndarray | None:
        with torch.no_grad():
            y = model(xt)
        return y.cpu().numpy() if fetch else None

    return run


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def latency(runners: dict[str, Callable], seconds: float, device: str) -> dict[str, Any]:
    """Interleaved rounds as in bench/fold (bench/timing.py) against BN-deleted, the
    device synchronised before every clock reading."""
    timed = interleaved(runners, "deleted", seconds, warmup=5, sync=lambda: sync(device))
    out: dict[str, Any] = {"rounds": timed.rounds, "runs_per_block": timed.block}
    for k in timed.times:
        out[f"{k}_ms"] = timed.ms(k)
        if k != "deleted":
            out[f"{k}_vs_deleted"], out[f"{k}_vs_deleted_iqr"] = timed.versus(k, "deleted")
    return out


def device_name(device: str, env: dict[str, Any]) -> str:
    if device != "cuda":
        return f"CPU: {env['cpu'] or 'unknown'} ({env['nproc']} cores)"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        return f"{smi} (driver, memory); torch sees {torch.cuda.get_device_name(0)}"
    except (OSError, subprocess.SubprocessError):
        return torch.cuda.get_device_name(0)


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"# GPU latency benchmark ({result['device']})",
        "",
        f"{env['date']}, {result['device_name']}, ORT providers {result['providers']}, "
        f"python {env['python']}, " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
        "Median of per-round ratios against the BN-deleted network (interquartile range); all",
        "four timed interleaved in the same run, ORT_ENABLE_ALL, ORT input/output bound on the",
        f"device (I/O binding, no host copies timed); {result['seconds']:g} s per case. Torch",
        "eager runs the unfolded network. Parity: folded vs unfolded max rel error.",
        "",
        "| network | batch | BN-deleted ms | unfolded / del | bnfold / del | torch eager / del "
        "| parity |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in result["networks"].items():
        par = row["parity"]
        check = f"{'ok' if par['passed'] else 'FAIL'} ({par['max_rel_error']:.1e})"
        for r in row["latency"]:
            cells = []
            for k in ("unfolded", "folded", "torch"):
                lo, hi = r[f"{k}_vs_deleted_iqr"]
                cells.append(f"{r[f'{k}_vs_deleted']:.3f} ({lo:.3f}-{hi:.3f})")
            lines.append(
                f"| {label} | {r['batch']} | {r['deleted_ms']:.3f} | "
                + " | ".join(cells)
                + f" | {check} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing seconds per case")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    device = args.device
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        if not torch.cuda.is_available():
            raise SystemExit("FAIL: --device cuda but torch sees no CUDA device")
    random.seed(0)
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    providers: list[str] = []
    for label, net in networks().items():
        sessions = {k: session(m, device) for k, m in net["onnx"].items()}
        providers = sessions["unfolded"].get_providers()
        model = net["torch"].to(device)
        x = rng.standard_normal((max(batches), *net["shape"])).astype(np.float32)
        want = ort_runner(sessions["unfolded"], x, device)(fetch=True)
        par = compare(want, ort_runner(sessions["folded"], x, device)(fetch=True))
        eager = compare(want, torch_runner(model, x, device)(fetch=True))
        rows = []
        for batch in batches:
            xb = np.ascontiguousarray(x[:batch])
            runners = {k: ort_runner(s, xb, device) for k, s in sessions.items()}
            runners["torch"] = torch_runner(model, xb, device)
            rows.append({"batch": batch, **latency(runners, args.seconds, device)})
            r = rows[-1]
            print(
                f"{label:20s} b={batch:<4d} deleted {r['deleted_ms']:.3f} ms  "
                + "  ".join(f"{k} x{r[f'{k}_vs_deleted']:.3f}" for k in KINDS if k != "deleted")
            )
        results[label] = {
            "bn_before": net["bn_before"],
            "bn_after": net["bn_after"],
            "parity": par.to_dict(),
            "torch_vs_ort_unfolded_max_rel_error": eager.max_rel_error,
            "latency": rows,
        }
    env = environment()
    result = {
        "device": device,
        "device_name": device_name(device, env),
        "providers": providers,
        "io_binding": True,
        "seconds": args.seconds,
        "batches": batches,
        "environment": env,
        "networks": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "gpu.md").write_text(text)
    print(text)
    failed = [k for k, v in results.items() if not v["parity"]["passed"]]
    if failed:
        raise SystemExit(f"FAIL: folded vs unfolded parity failed for {failed}")


if __name__ == "__main__":
    main()
