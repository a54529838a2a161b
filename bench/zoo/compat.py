"""Import torchvision next to the CPU torch (a benchmark workaround, never in the product).

The registry's torchvision wheel is built against the CUDA torch; importing it
beside the CPU build fails with "operator torchvision::nms does not exist",
because its Python side registers fake kernels for C ops the CPU torch does not
have. Defining the two schemas it looks up (``torchvision::nms`` and
``torchvision::qnms``) first is enough for the classification models, which
call no torchvision C op.

Install torchvision without letting pip touch torch: ``pip install --no-deps
torchvision==0.28.0`` (0.28 is the release for torch 2.13), or through the
``bench`` extra with ``-c constraints.txt``, which keeps the CPU torch.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

_LIBRARY: Any = None  # kept alive: the schemas live as long as the Library object


def import_torchvision() -> ModuleType:
    global _LIBRARY
    import torch

    try:
        import torchvision

        return torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    import sys

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torchvision
