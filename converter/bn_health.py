"""Are the running statistics a folded model bakes in any good?

Folding is exact with respect to the running mean/var; it cannot fix stale
ones. With the checkpoint and held-out data at hand this compares, on that
data:

- the network's outputs in eval mode (running statistics, what gets folded)
  against the outputs with every BN using the batch's own statistics
  (``train``-mode BN, Dropout still off): a large gap means the running
  statistics do not describe the data;
- per BN layer, the batch mean/var of its input against its running
  mean/var: ``mean_shift`` = max_c |batch_mean - running_mean| / sqrt(running_var + eps),
  ``var_ratio`` = batch_var / running_var (min and max over channels);
- whether a layer's running statistics are still the defaults (mean 0,
  var 1 exactly, or ``num_batches_tracked == 0``): never updated.

torch is imported inside the functions: this module is importable without it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from bnfold.contract import compare

if TYPE_CHECKING:
    import torch
    from torch import nn

# A gap beyond these means the running statistics are not the data's.
# max |eval - batch-stats| / max |batch-stats| of the outputs. A worst-case
# measure, so one outlier row dominates it: the well-trained digits MLP (98%
# validation accuracy) shows 0.12 with 99.2% top-1 agreement; stale statistics
# (inputs shifted by a few standard deviations) show well over 0.25.
MAX_REL_GAP = 0.25
MIN_TOP1_AGREEMENT = 0.9
MAX_MEAN_SHIFT = 1.0  # in running standard deviations
VAR_RATIO_RANGE = (0.25, 4.0)
# A channel whose std is below this share of the layer's median running std is dead.
DEAD_STD = 0.01


def _bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from torch import nn

    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def _running(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(running_mean, running_var) as float64, or None if the layer keeps none."""
    import torch

    mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None
    return mean.double(), var.double()


def _never_updated(m: nn.Module) -> bool:
    import torch

    running = _running(m)
    if running is None:
        return False
    tracked = getattr(m, "num_batches_tracked", None)
    if isinstance(tracked, torch.Tensor) and int(tracked) == 0:
        return True
    mean, var = running
    return bool(torch.all(mean == 0).item() and torch.all(var == 1).item())


def _input_stats(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per BN layer: batch mean and (biased) var of its input over all but the channel axis."""
    import torch

    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    hooks = []
    for name, m in _bn_layers(model):

        def hook(
            _m: nn.Module, args: tuple[torch.Tensor, ...], _out: Any, name: str = name
        ) -> None:
            v = args[0].detach().double()
            dims = [d for d in range(v.ndim) if d != 1]
            stats[name] = (v.mean(dim=dims).numpy(), v.var(dim=dims, unbiased=False).numpy())

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return stats


def bn_health(model: nn.Module, x: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Numbers and warnings about the BN running statistics of ``model`` on held-out ``x``.

    ``model`` is not changed (a copy runs with batch statistics). ``x`` should
    be a batch large enough for its statistics to mean something (>= 32).
    """
    import torch

    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    eval_model = copy.deepcopy(model).eval()
    layers = _bn_layers(eval_model)
    warnings: list[str] = []
    if not layers:
        return {"n_bn": 0, "layers": [], "warnings": [], "healthy": True}
    with torch.no_grad():
        eval_out = eval_model(inputs).double().numpy()
    stats = _input_stats(eval_model, inputs)
    batch_model = copy.deepcopy(eval_model)
    for _, m in _bn_layers(batch_model):
        m.train()  # normalise with this batch's statistics; Dropout stays off
    with torch.no_grad():
        batch_out = batch_model(inputs).double().numpy()
    gap = compare(batch_out, eval_out, rtol=MAX_REL_GAP, min_top1=MIN_TOP1_AGREEMENT)
    per_layer = []
    for name, m in layers:
        entry: dict[str, Any] = {"name": name, "never_updated": _never_updated(m)}
        running = _running(m)
        if name in stats and running is not None:
            mean, var = stats[name]
            r_mean, r_var = running[0].numpy(), running[1].numpy()
            eps = float(getattr(m, "eps", 1e-5))
            shift = np.abs(mean - r_mean) / np.sqrt(r_var + eps)
            # What BN divides by is sqrt(var + eps); compare those. Channels silent
            # both in training and here (dead after a ReLU) carry nothing: skip them.
            ratio = (var + eps) / (r_var + eps)
            live = np.sqrt(np.maximum(var, r_var)) >= DEAD_STD * np.median(np.sqrt(r_var))
            ratio = ratio[live] if live.any() else np.ones(1)
            entry.update(
                mean_shift=float(shift.max()),
                var_ratio_min=float(ratio.min()),
                var_ratio_max=float(ratio.max()),
                dead_channels=int((~live).sum()),
            )
            if entry["mean_shift"] > MAX_MEAN_SHIFT:
                warnings.append(
                    f"{name}: input mean is {entry['mean_shift']:.2f} running std away "
                    "from the running mean"
                )
            low, high = VAR_RATIO_RANGE
            if entry["var_ratio_min"] < low or entry["var_ratio_max"] > high:
                warnings.append(
                    f"{name}: input var / running var in [{entry['var_ratio_min']:.2g}, "
                    f"{entry['var_ratio_max']:.2g}], outside [{low}, {high}]"
                )
        if entry["never_updated"]:
            warnings.append(f"{name}: running statistics are the defaults (never updated)")
        per_layer.append(entry)
    if not gap.passed:
        warnings.append(
            f"train/eval gap: outputs with running statistics differ from batch statistics by "
            f"{gap.max_rel_error:.3g} (relative), top-1 agreement "
            f"{'n/a' if gap.top1_agreement is None else f'{gap.top1_agreement:.3f}'}"
        )
    return {
        "n_bn": len(layers),
        "n_samples": int(inputs.shape[0]),
        "eval_vs_batch_stats": gap.to_dict(),
        "layers": per_layer,
        "warnings": warnings,
        "healthy": not warnings,
        "thresholds": {
            "max_rel_gap": MAX_REL_GAP,
            "min_top1_agreement": MIN_TOP1_AGREEMENT,
            "max_mean_shift": MAX_MEAN_SHIFT,
            "var_ratio_range": list(VAR_RATIO_RANGE),
        },
    }
