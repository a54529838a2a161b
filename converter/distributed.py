"""Data-parallel training on one machine: DistributedDataParallel + SyncBatchNorm.

With data parallelism each process sees a slice of every batch, so plain
BatchNorm would normalise with the slice's statistics and each rank would
keep different running statistics. SyncBatchNorm computes them over the
global batch instead: every rank holds identical running statistics, and the
training is the single-process computation spread over processes.

``torch.nn.SyncBatchNorm`` refuses CPU tensors (and DDP refuses it on CPU
modules), so :class:`SyncBatchNorm` here is the same layer written with
autograd-aware collectives that gloo runs on CPU: two all-reduces per
forward (sum and count, then squared deviations), whose backward all-reduces
the gradients, exactly as torch's CUDA kernel does.

Two ways in, both on the gloo backend (CPU):

- ``bnfold train --nproc N ...`` spawns N processes itself;
- ``torchrun --nproc-per-node N -m bnfold train ...`` starts them, and
  :func:`from_env` joins the group torchrun describes in the environment.

Rank 0 alone writes the run folder (one checkpoint, plain BatchNorm layers).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from bnfold.converter.pipeline import ConvertOptions

BACKEND = "gloo"


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _AllReduceSum.apply(t)
    return out


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks; any input rank 2 to 5, CPU or GPU."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if not 2 <= input.dim() <= 5:
            raise ValueError(f"expected 2D to 5D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)  # broadcast over (N, C, ...)
        count = torch.tensor([x.numel() // c], dtype=x.dtype)
        total = all_reduce_sum(torch.cat([x.sum(dims), count]))  # (C + 1,)
        n = total[c].detach()
        mean = total[:c] / n
        centred = x - mean.reshape(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / n  # biased, as BN normalises
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            m = (
                self.momentum
                if self.momentum is not None
                else 1.0 / float(self.num_batches_tracked)
            )
            with torch.no_grad():
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * n / max(float(n) - 1, 1.0)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm layer for :class:`SyncBatchNorm`, keeping parameters and buffers."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module


@dataclass(frozen=True)
class World:
    """This process's place in an initialised process group."""

    rank: int
    size: int

    def wrap(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(module with SyncBatchNorm, its DDP wrapper); train the wrapper, read the module."""
        synced = convert_sync_batchnorm(model)
        return synced, DistributedDataParallel(synced)

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def bn_stats_spread(self, model: nn.Module) -> float:
        """Largest difference of any BN running statistic between any rank and rank 0."""
        buffers = [
            b.detach().double().flatten()
            for name, b in model.state_dict().items()
            if name.endswith(("running_mean", "running_var"))
        ]
        if not buffers:
            return 0.0
        mine = torch.cat(buffers)
        gathered = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(gathered, mine)
        return float(max((g - gathered[0]).abs().max() for g in gathered))


def from_env() -> World | None:
    """Join the process group torchrun set up, or None when not launched by it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group(BACKEND, init_method="env://")
    return World(dist.get_rank(), dist.get_world_size())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_rank(world: World, opts: ConvertOptions, out: Path) -> dict[str, Any] | None:
    """Train on this rank; rank 0 writes the run folder and returns its summary."""
    from bnfold.converter.pipeline import train_from_options
    from bnfold.converter.train import save_run

    # Share the cores instead of each rank oversubscribing all of them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.size))

    def report(epoch: int, row: dict[str, float]) -> None:
        if world.rank == 0:
            print(
                f"epoch {epoch}: loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} "
                f"val_acc {row['val_accuracy']:.3f}",
                flush=True,
            )

    result, splits, cfg = train_from_options(opts, on_epoch=report, world=world)
    spread = world.bn_stats_spread(result.model)
    if world.rank != 0:
        return None
    save_run(out, result, cfg, splits)
    run_json = out / "run.json"
    run = json.loads(run_json.read_text())
    run["distributed"] = {
        "world_size": world.size,
        "backend": BACKEND,
        "sync_batchnorm": True,
        "bn_running_stats_max_diff_across_ranks": spread,
    }
    run_json.write_text(json.dumps(run, indent=2) + "\n")
    return run


def _spawned(rank: int, size: int, port: int, opts: ConvertOptions, out: Path) -> None:
    dist.init_process_group(
        BACKEND, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size
    )
    try:
        run_rank(World(rank, size), opts, out)
    finally:
        dist.destroy_process_group()


def train_distributed(opts: ConvertOptions, out: Path, nproc: int) -> dict[str, Any]:
    """Spawn ``nproc`` ranks on this machine, train, and return rank 0's run summary."""
    import torch.multiprocessing as mp

    if nproc < 2:
        raise ValueError("train_distributed needs at least 2 processes")
    mp.start_processes(
        _spawned, args=(nproc, _free_port(), opts, out), nprocs=nproc, start_method="spawn"
    )
    summary: dict[str, Any] = json.loads((out / "run.json").read_text())
    return summary
