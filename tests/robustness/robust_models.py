"""The small repository of the robustness tests (onnx.helper stand-ins
from tests/service/served_models.py, no torch needed)."""

from __future__ import annotations

from pathlib import Path

from served_models import ModelInfo, write_cnn, write_mlp
from service_harness import Repo


def small_repo(path: Path) -> Repo:
    """``mlp`` (64 -> 10), ``cnn`` (1x8x8 -> 10), ``other`` (an mlp that
    must keep serving whatever happens to the others) and ``slow`` (waits
    1.5 s for a batch, for requests caught in flight)."""
    write_mlp(path, "mlp")
    write_cnn(path, "cnn")
    write_mlp(path, "other", seed=1)
    write_mlp(path, "slow", delay_ms=1500.0, queue=64, eager=False)
    return Repo(
        path,
        {
            "mlp": ModelInfo("mlp", "input", (64,)),
            "cnn": ModelInfo("cnn", "image", (1, 8, 8)),
            "other": ModelInfo("other", "input", (64,)),
            "slow": ModelInfo("slow", "input", (64,)),
        },
    )
