"""``--arch timm:NAME``: a model of timm's registry, built locally, never downloaded.

timm (PyTorch Image Models, the ``timm`` extra) names several hundred
architectures; those with BatchNorm layers that torch's dynamo exporter
traces go through the converter like bnfold's own: trained on the data set
from random initialisation, or from a state dict in a local file
(``--weights``), exported with every BN kept, folded and proven.

Nothing is fetched: the model is built with ``pretrained=False``, and names
that point at a hub (``hf-hub:org/name``, ``local-dir:...``, anything with
``:`` or ``/``) are refused before timm is imported. A name timm does not
know, or a model without BatchNorm (LayerNorm, GroupNorm: nothing to fold),
is an input error (exit 2) that says how to find a name.

The registry's torchvision wheel (which timm imports) is built against the
CUDA torch and fails to import beside the CPU build with "operator
torchvision::nms does not exist"; :func:`import_torchvision` defines the two
operator schemas it looks up first, which the classification models never
call. This module imports torch and timm only inside its functions, so the
CLI can check a name's form without either.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from bnfold.converter.errors import InputError

PREFIX = "timm:"
# The input a timm model trains at unless --input-shape says otherwise: small
# enough for CPU training in seconds; every stride-32 network still reaches 1x1.
INPUT_SHAPE = (3, 32, 32)
EPOCHS = 3  # epochs unless --epochs is given
INSTALL = "install the timm extra: pip install -c constraints.txt 'bnfold[timm]'"
FIND_NAMES = (
    "list timm's names with: python -c \"import timm; print(timm.list_models('*resnet*'))\""
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

_LIBRARY: Any = None  # kept alive: the schemas live as long as the Library object


def is_timm(arch: str) -> bool:
    return arch.startswith(PREFIX)


def model_name(arch: str) -> str:
    """The timm name of ``timm:NAME``; a name that is not of timm's registry
    (a hub or folder reference) is refused: nothing is ever downloaded."""
    name = arch.removeprefix(PREFIX)
    if not _NAME.fullmatch(name):
        raise InputError(
            f"--arch {arch}: give a name of timm's registry, e.g. timm:resnet10t; hub and "
            "folder references (hf-hub:..., anything with ':' or '/') are refused, as bnfold "
            "downloads nothing (start from a local state dict with --weights FILE)"
        )
    return name


def import_torchvision() -> ModuleType:
    """torchvision, importable beside the CPU torch (see the module docstring):
    the two operator schemas its Python side looks up are defined first when
    the plain import fails for want of them. bench/zoo uses it too."""
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


def import_timm() -> ModuleType:
    """timm, with torchvision importable beside the CPU torch."""
    import importlib.util

    missing = [m for m in ("timm", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"--arch timm:NAME needs {' and '.join(missing)}, not installed here; {INSTALL}"
        )
    import_torchvision()
    import timm

    return timm


def version() -> str:
    return str(import_timm().__version__)


def build(arch: str, input_shape: Sequence[int], num_classes: int, bn: bool = True) -> Any:
    """The timm model ``arch`` (``timm:NAME``), randomly initialised for
    ``input_shape`` (C, H, W) and ``num_classes``; refused when it has no BN."""
    from torch import nn

    name = model_name(arch)
    if not bn:
        raise InputError(
            f"--arch {arch}: --no-bn and --compare-no-bn build bnfold's own architectures "
            "without BN; timm's models have no such twin here"
        )
    if len(input_shape) != 3:
        raise InputError(f"--arch {arch} takes an image input shape C,H,W, not {list(input_shape)}")
    timm = import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.7)
        hint = f"close names: {', '.join(close)}; " if close else ""
        raise InputError(
            f"--arch {arch}: timm {timm.__version__} has no model {name!r}; {hint}{FIND_NAMES}"
        )
    model: nn.Module = timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=int(input_shape[0])
    )
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        norms = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
        what = f"it normalises with {', '.join(norms)}" if norms else "it has no normalisation"
        raise InputError(
            f"--arch {arch}: {name} has no BatchNorm layer ({what}), so there is nothing to "
            "fold; choose a timm model with BatchNorm (resnet*, mobilenetv3_*, efficientnet_*, "
            f"regnet*...): {FIND_NAMES}"
        )
    return model
