"""Import torchvision next to the CPU torch, for the zoo benchmark.

The registry's torchvision wheel is built against the CUDA torch; importing it
beside the CPU build fails with "operator torchvision::nms does not exist".
The one workaround lives with ``--arch timm:NAME``
(:func:`bnfold.converter.timm_models.import_torchvision`), which needs it too.

Install torchvision without letting pip touch torch: ``pip install --no-deps
torchvision==0.28.0`` (0.28 is the release for torch 2.13), or through the
``bench`` or ``timm`` extra with ``-c constraints.txt``, which keeps the CPU torch.
"""

from __future__ import annotations

from bnfold.converter.timm_models import import_torchvision

__all__ = ["import_torchvision"]
