"""The BatchNorm architectures of the classic BN tutorials, each with a no-BN twin.

Every builder is parametric in input shape and class count; ``bn=False``
builds the same network with its BatchNorm layers deleted (the twin that
``--compare-no-bn`` trains and the folding benchmark times against).

- ``mlp``: Dense(32)-BN-ReLU-Dense(32)-BN-ReLU-Dense(classes), the Keras BN
  tutorial's network, on flat inputs (64 features for digits).
- ``cifar-cnn``: the Keras CIFAR-10 example with Conv-BN-ReLU blocks and a
  Dense-BN-ReLU head (3x32x32).
- ``fer-cnn``: the 48x48 grayscale, 7-class emotion CNN, which puts its BNs
  after an activation, after a MaxPool and after Flatten, with Keras' valid
  padding.
- ``resnet``: a small residual network (Conv-BN-ReLU, BN in the projection
  shortcut).
- ``timm:NAME``: a BatchNorm model of timm's registry, random init
  (:mod:`bnfold.converter.timm_models`; no no-BN twin).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnfold.converter import timm_models
from bnfold.converter.errors import InputError


@dataclass(frozen=True)
class ArchConfig:
    """What is needed to rebuild a network; saved beside every checkpoint."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    bn: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchConfig:
        return cls(
            name=str(d["name"]),
            input_shape=tuple(int(v) for v in d["input_shape"]),
            num_classes=int(d["num_classes"]),
            bn=bool(d.get("bn", True)),
            extra=dict(d.get("extra", {})),
        )


def _bn1d(n: int, bn: bool) -> nn.Module:
    return nn.BatchNorm1d(n) if bn else nn.Identity()


def _bn2d(n: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(n) if bn else nn.Identity()


def _image_shape(arch: str, shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"{arch} expects an image input shape (C, H, W), got {tuple(shape)}")
    c, h, w = (int(v) for v in shape)
    return c, h, w


def _flat_features(model: nn.Module, shape: Sequence[int]) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, *shape)).numel())


def mlp(input_shape: Sequence[int], num_classes: int, bn: bool = True) -> nn.Module:
    features = 1
    for v in input_shape:
        features *= int(v)
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    layers += [
        nn.Linear(features, 32),
        _bn1d(32, bn),
        nn.ReLU(),
        nn.Linear(32, 32),
        _bn1d(32, bn),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    ]
    return nn.Sequential(*layers)


def cifar_cnn(input_shape: Sequence[int], num_classes: int, bn: bool = True) -> nn.Module:
    c, _, _ = _image_shape("cifar-cnn", input_shape)

    def block(cin: int, cout: int, padding: int | str) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=padding), _bn2d(cout, bn), nn.ReLU()]

    features = nn.Sequential(
        *block(c, 32, 1),  # Keras: padding='same'
        *block(32, 32, 0),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        *block(32, 64, 1),
        *block(64, 64, 0),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
    )
    n = _flat_features(features, input_shape)
    return nn.Sequential(
        *features,
        nn.Linear(n, 512),
        _bn1d(512, bn),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    )


def fer_cnn(input_shape: Sequence[int], num_classes: int, bn: bool = True) -> nn.Module:
    c, _, _ = _image_shape("fer-cnn", input_shape)
    # BN after the activation, after the MaxPool and after Flatten, exactly where
    # the tutorial puts them; no BN is adjacent to the conv that feeds it.
    features = nn.Sequential(
        nn.Conv2d(c, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        _bn2d(64, bn),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Conv2d(64, 128, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        _bn2d(128, bn),
        nn.Conv2d(128, 128, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
    )
    n = _flat_features(features, input_shape)
    return nn.Sequential(
        *features,
        _bn1d(n, bn),
        nn.Linear(n, 1024),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(1024, num_classes),
    )


class BasicBlock(nn.Module):
    """Conv-BN-ReLU-Conv-BN plus shortcut; a 1x1 Conv-BN projection when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not bn)
        self.bn1 = _bn2d(cout, bn)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=not bn)
        self.bn2 = _bn2d(cout, bn)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=not bn), _bn2d(cout, bn)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


def resnet(input_shape: Sequence[int], num_classes: int, bn: bool = True) -> nn.Module:
    c, _, _ = _image_shape("resnet", input_shape)
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1, bias=not bn),
        _bn2d(16, bn),
        nn.ReLU(),
        BasicBlock(16, 16, 1, bn),
        BasicBlock(16, 32, 2, bn),
        BasicBlock(32, 64, 2, bn),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


Builder = Callable[[Sequence[int], int, bool], nn.Module]

ARCHITECTURES: dict[str, Builder] = {
    "mlp": mlp,
    "cifar-cnn": cifar_cnn,
    "fer-cnn": fer_cnn,
    "resnet": resnet,
}

# Input shape each architecture was designed for; data is resized to it.
DEFAULT_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": (64,),
    "cifar-cnn": (3, 32, 32),
    "fer-cnn": (1, 48, 48),
    "resnet": (3, 32, 32),
}


def default_input_shape(arch: str) -> tuple[int, ...]:
    """The input shape ``arch`` trains at unless told otherwise."""
    if timm_models.is_timm(arch):
        return timm_models.INPUT_SHAPE
    try:
        return DEFAULT_INPUT_SHAPES[arch]
    except KeyError:
        raise InputError(
            f"unknown architecture {arch!r}; choose one of {', '.join(DEFAULT_INPUT_SHAPES)} "
            "or timm:NAME"
        ) from None


def build_model(config: ArchConfig) -> nn.Module:
    if config.num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {config.num_classes}")
    if timm_models.is_timm(config.name):
        model: nn.Module = timm_models.build(
            config.name, config.input_shape, config.num_classes, config.bn
        )
        return model
    try:
        builder = ARCHITECTURES[config.name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {config.name!r}; choose one of {', '.join(ARCHITECTURES)}"
        ) from None
    return builder(config.input_shape, config.num_classes, config.bn)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict from a local file into ``model`` (strict: every key
    and shape must match).

    ``.safetensors`` files are read with safetensors, anything else with
    ``torch.load(weights_only=True)``: tensors only, never pickled code. A
    checkpoint dict holding ``state_dict`` or ``model`` is unwrapped."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # a corrupt or pickled-code file: the user's input
        raise InputError(f"--weights {path}: not a state dict torch can load safely ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"--weights {path}: holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise InputError(
            f"--weights {path} does not fit the model built for this data (classes and input "
            f"channels come from the data set): {' '.join(line.strip() for line in first[:3])}"
        ) from None


def bn_modules(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules, in definition order."""
    return [
        name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
