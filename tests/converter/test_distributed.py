"""Data-parallel training: SyncBatchNorm on CPU/gloo, 2 real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bnfold.converter.distributed import _free_port, convert_sync_batchnorm

ROOT = Path(__file__).parents[2]


def _sync_bn_rank(rank: int, port: int, x: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3))).train()
    with torch.no_grad():
        bn[0].weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn[0].bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    # Uneven shares (5 and 3 rows): the statistics must still be the global batch's.
    mine = (x[:5] if rank == 0 else x[5:]).clone().requires_grad_(True)
    y = bn(mine)
    (y * torch.arange(y.numel()).reshape(y.shape).float()).sum().backward()
    torch.save(
        {
            "y": y.detach(),
            "grad": mine.grad,
            "rm": bn[0].running_mean,
            "rv": bn[0].running_var,
            "gw": bn[0].weight.grad,
        },
        f"{out}.{rank}",
    )
    dist.destroy_process_group()


def test_sync_batchnorm_on_two_ranks_equals_batchnorm_on_the_global_batch(tmp_path: Path) -> None:
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 + 1
    mp.start_processes(
        _sync_bn_rank, args=(_free_port(), x, str(tmp_path / "r")), nprocs=2, start_method="spawn"
    )
    r0, r1 = (torch.load(tmp_path / f"r.{r}") for r in (0, 1))

    bn = nn.BatchNorm2d(3).train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    xr = x.clone().requires_grad_(True)
    y = bn(xr)
    weights = torch.cat([torch.arange(5 * 48), torch.arange(3 * 48)]).reshape(8, 3, 4, 4).float()
    (y * weights).sum().backward()

    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r0["grad"], r1["grad"]]), xr.grad, rtol=1e-4, atol=1e-4)
    for r in (r0, r1):  # identical running statistics on every rank, equal to the global ones
        torch.testing.assert_close(r["rm"], bn.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(r["rv"], bn.running_var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r0["gw"] + r1["gw"], bn.weight.grad, rtol=1e-4, atol=1e-4)


def _train(
    args: list[str], cwd: Path, launcher: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = launcher or [sys.executable, "-m", "bnfold"]
    return subprocess.run(
        [*cmd, "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_nproc_2_matches_one_process_and_writes_one_checkpoint(tmp_path: Path) -> None:
    common = ["--arch", "mlp", "--data", "digits", "--epochs", "4"]
    one = _train([*common, "--out", "one"], tmp_path)
    two = _train([*common, "--out", "two", "--nproc", "2"], tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    run1 = json.loads((tmp_path / "one/run.json").read_text())
    run2 = json.loads((tmp_path / "two/run.json").read_text())
    d = run2["distributed"]
    assert d["world_size"] == 2 and d["sync_batchnorm"] and d["backend"] == "gloo"
    assert d["bn_running_stats_max_diff_across_ranks"] == 0.0
    acc1, acc2 = run1["metrics"]["test_accuracy"], run2["metrics"]["test_accuracy"]
    assert acc2 >= 0.93 and abs(acc1 - acc2) <= 0.02
    # One checkpoint, from rank 0, with plain BatchNorm keys that export as usual.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoint.safetensors",
        "metrics.json",
        "run.json",
    ]
    exp = subprocess.run(
        [sys.executable, "-m", "bnfold", "export", "two", "--out", "two.onnx"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert exp.returncode == 0, exp.stderr
    import onnx

    m = onnx.load(tmp_path / "two.onnx")
    assert sum(n.op_type == "BatchNormalization" for n in m.graph.node) == 2


@pytest.mark.slow
def test_torchrun_launch(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    r = _train(
        ["--arch", "mlp", "--data", "digits", "--epochs", "2", "--out", "tr"],
        tmp_path,
        launcher=[
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "bnfold",
        ],
    )
    assert r.returncode == 0, r.stderr
    run = json.loads((tmp_path / "tr/run.json").read_text())
    assert run["distributed"]["world_size"] == 2
    assert run["distributed"]["bn_running_stats_max_diff_across_ranks"] == 0.0
    assert np.isfinite(run["metrics"]["test_accuracy"])
