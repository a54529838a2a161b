"""Seeded, deterministic CPU training with progress, metrics and safetensors checkpoints.

A run folder holds everything needed to rebuild and export the network:

    run.json                 arch config, training config, data info, labels,
                             preprocessing, final metrics
    checkpoint.safetensors   state dict (tensors only: never pickle)
    metrics.json             per-epoch loss/accuracy, train and validation
    curves.png               loss and accuracy curves (with the no-BN twin when
                             --compare-no-bn was given)
    no-bn/                   the twin's run folder, when trained
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bnfold.converter.data import Splits
from bnfold.converter.distributed import World
from bnfold.converter.errors import InputError
from bnfold.converter.models import ArchConfig, build_model, load_weights


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # the digits MLP: 96.7% test accuracy in ~1 s on 2 cores
    batch_size: int = 32  # Keras' default batch size
    lr: float = 3e-3  # 3x Adam's default: BN tolerates it and converges faster
    weight_decay: float = 0.0
    seed: int = 0  # seeds init, shuffling and dropout

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    arch: ArchConfig
    history: list[dict[str, float]]
    metrics: dict[str, float]
    seconds: float


EpochCallback = Callable[[int, dict[str, float]], None]
# (epoch, batches done in this epoch, batches per epoch), after every optimiser step.
BatchCallback = Callable[[int, int, int], None]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512
) -> dict[str, float]:
    """Eval-mode loss and accuracy."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i : i + batch_size])
            yb = torch.from_numpy(y[i : i + batch_size])
            logits = model(xb)
            total_loss += float(loss_fn(logits, yb))
            correct += int((logits.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return {"loss": total_loss / n, "accuracy": correct / n}


def train(
    arch: ArchConfig,
    splits: Splits,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    world: World | None = None,
    weights: Path | None = None,
) -> TrainResult:
    """Train ``arch`` on ``splits``; same seed and data give bit-identical weights.

    ``weights`` (a local state dict file) replaces the random initialisation.

    With ``world`` (one process of a data-parallel group) every global batch
    is split across the ranks, BN layers become SyncBatchNorm so their
    statistics are those of the global batch, and gradients are averaged:
    the same mathematics as one process, so the same accuracy band. The
    model returned has plain BatchNorm layers again.
    """
    seed_everything(config.seed)
    model = build_model(arch)
    if weights is not None:
        load_weights(model, weights)
    net: nn.Module = model
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    if world is not None:
        model, net = world.wrap(model)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    x_train = torch.from_numpy(splits.x_train)
    y_train = torch.from_numpy(splits.y_train)
    # Same generator on every rank: all ranks agree on the global batches.
    gen = torch.Generator().manual_seed(config.seed)
    n = len(x_train)
    min_batch = 2 * size if arch.bn else size  # BN cannot normalise a batch of one
    # Batch starts of one epoch: a last batch too small for BN is skipped.
    starts = [
        i for i in range(0, n, config.batch_size) if min(config.batch_size, n - i) >= min_batch
    ]
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        net.train()
        order = torch.randperm(n, generator=gen)
        seen, loss_sum, correct = 0.0, 0.0, 0.0
        for b, i in enumerate(starts, start=1):
            idx = order[i : i + config.batch_size]
            idx = idx[rank::size]  # this rank's share of the global batch
            xb, yb = x_train[idx], y_train[idx]
            opt.zero_grad(set_to_none=True)
            logits = net(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            if on_batch is not None:
                on_batch(epoch, b, len(starts))
        if world is not None:
            seen, loss_sum, correct = world.sum([seen, loss_sum, correct])
        val = evaluate(model, splits.x_val, splits.y_val)
        row = {
            "epoch": float(epoch),
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
    seconds = time.perf_counter() - start
    if world is not None:
        plain = build_model(arch)
        plain.load_state_dict(model.state_dict())  # SyncBatchNorm -> BatchNorm, same keys
        model = plain
    model.eval()
    test = evaluate(model, splits.x_test, splits.y_test)
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "val_accuracy": history[-1]["val_accuracy"] if history else 0.0,
        "train_accuracy": history[-1]["train_accuracy"] if history else 0.0,
        "train_seconds": seconds,
    }
    return TrainResult(model, arch, history, metrics, seconds)


# --------------------------------------------------------------------------- run folders


def save_run(
    out: Path,
    result: TrainResult,
    config: TrainConfig,
    splits: Splits,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / "checkpoint.safetensors"))
    (out / "metrics.json").write_text(json.dumps(result.history, indent=2) + "\n")
    run = {
        "arch": result.arch.to_dict(),
        "training": config.to_dict(),
        "data": splits.info,
        "labels": splits.labels,
        "preprocessing": splits.preprocessing,
        "metrics": result.metrics,
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return out


@dataclass
class LoadedRun:
    model: nn.Module
    arch: ArchConfig
    info: dict[str, Any]


class RunError(InputError):
    """A run folder is missing files or does not match its architecture."""


def load_run(folder: Path) -> LoadedRun:
    run_json, ckpt = folder / "run.json", folder / "checkpoint.safetensors"
    for f in (run_json, ckpt):
        if not f.is_file():
            raise RunError(f"{folder} is not a training run: {f.name} is missing")
    try:
        info = json.loads(run_json.read_text())
        arch = ArchConfig.from_dict(info["arch"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{run_json}: unreadable ({e})") from e
    model = build_model(arch)
    try:
        state = load_file(str(ckpt))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as e:
        raise RunError(f"{ckpt} does not match architecture {arch.name}: {e}") from e
    model.eval()
    return LoadedRun(model, arch, info)


def plot_curves(path: Path, histories: dict[str, list[dict[str, float]]]) -> Path:
    """Loss and accuracy per epoch; one line pair per history (e.g. BN vs no BN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for label, hist in histories.items():
        epochs = [r["epoch"] for r in hist]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            (line,) = ax.plot(epochs, [r[f"train_{key}"] for r in hist], label=f"{label} train")
            ax.plot(
                epochs,
                [r[f"val_{key}"] for r in hist],
                "--",
                color=line.get_color(),
                label=f"{label} val",
            )
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
