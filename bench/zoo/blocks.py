"""Hand-written networks of the kinds torchvision has none of, built as their papers build them.

Each takes an image [B, 3, H, W] and returns logits, so the zoo treats it like a
torchvision model. What each exercises:

- ``levit-mlp``: LeViT's ``Linear + BatchNorm1d`` on tokens [B, N, C]
  (``bn(x.flatten(0, 1)).reshape_as(x)``), residual token MLPs, a BN1d + Linear head.
- ``linear-3d``: BatchNorm1d on [B, C, L], then ``nn.Linear`` on the tokens
  (dynamo writes its weight as ``Transpose(W)``).
- ``repvgg`` (and ``repvgg-timm``, identity branch computed first as timm
  does; ``repvgg-bn-after-sum``, one BN after ``conv3(x) + conv1(x) + x``):
  RepVGG's training-time blocks, a ``x.mean((2, 3))`` head.
- ``cnn-mean-head``: ReLU -> BN -> ``x.mean((2, 3), keepdim=True)`` -> Linear.
- ``preact-resnet``: pre-activation residual blocks (BN -> ReLU -> conv, the
  shortcut reading the stream the BN reads): not foldable by a local rewrite.
- ``convmixer``: ConvMixer (GELU -> BN, a residual around a padded depthwise
  conv): BNs after GELU, before zero-padded depthwise convs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class TokenLinearBN(nn.Module):
    """LeViT's Linear_BN: a bias-free Linear on tokens, a BatchNorm1d over batch * tokens."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class LeViTMLP(nn.Module):
    def __init__(self, classes: int = 10, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, dim, 4, stride=4, bias=False), nn.BatchNorm2d(dim), nn.Hardswish()
        )
        self.mlps = nn.ModuleList(
            nn.Sequential(TokenLinearBN(dim, 2 * dim), nn.Hardswish(), TokenLinearBN(2 * dim, dim))
            for _ in range(2)
        )
        self.head_bn = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)  # [B, N, C]
        for mlp in self.mlps:
            t = t + mlp(t)
        return self.head(self.head_bn(t.mean(1)))


class Linear3D(nn.Module):
    def __init__(self, classes: int = 10, dim: int = 24) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.bn = nn.BatchNorm1d(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.bn(self.stem(x).flatten(2))  # BN1d on [B, C, L]
        t = F.gelu(self.fc(t.transpose(1, 2)))  # nn.Linear on [B, L, C]
        return self.head(t.mean(1))


def conv_bn(c_in: int, c_out: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)
    )


class RepVGGBlock(nn.Module):
    """conv3x3-BN(x) + conv1x1-BN(x) [+ BN(x) when the shape is kept], then ReLU.

    ``order="timm"`` computes the identity branch first, as timm does;
    ``order="bn-after-sum"`` is ``ReLU(BN(conv3x3(x) + conv1x1(x) [+ x]))``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, order: str = "repvgg") -> None:
        super().__init__()
        keeps = c_in == c_out and stride == 1
        self.order = order
        if order == "bn-after-sum":
            self.dense: nn.Module = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.one: nn.Module = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
            self.identity: nn.Module | None = nn.Identity() if keeps else None
            self.post: nn.Module = nn.BatchNorm2d(c_out)
        else:
            self.dense, self.one = conv_bn(c_in, c_out, 3, stride), conv_bn(c_in, c_out, 1, stride)
            self.identity = nn.BatchNorm2d(c_in) if keeps else None
            self.post = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity is None:
            return F.relu(self.post(self.dense(x) + self.one(x)))
        if self.order == "timm":
            identity = self.identity(x)
            return F.relu(self.one(x) + self.dense(x) + identity)
        return F.relu(self.post(self.dense(x) + self.one(x) + self.identity(x)))


class RepVGG(nn.Module):
    def __init__(self, classes: int = 10, order: str = "repvgg", width: int = 16) -> None:
        super().__init__()
        blocks: list[nn.Module] = [RepVGGBlock(3, width, 2, order)]
        for c_in, c_out, stride in [(width, width, 1), (width, 2 * width, 2)]:
            blocks += [RepVGGBlock(c_in, c_out, stride, order), RepVGGBlock(c_out, c_out, 1, order)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean((2, 3)))


class CNNMeanHead(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU()
        )
        self.bn = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.features(x)).mean((2, 3), keepdim=True)
        return self.head(y.flatten(1))


class PreActBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        return x + self.conv2(F.relu(self.bn2(y)))


class PreActResNet(nn.Module):
    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        self.blocks = nn.Sequential(PreActBlock(width), PreActBlock(width))
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


def convmixer(classes: int = 10, dim: int = 32, depth: int = 2, kernel: int = 5) -> nn.Module:
    """ConvMixer (Trockman and Kolter), as the paper's listing builds it."""
    return nn.Sequential(
        nn.Conv2d(3, dim, 4, stride=4),
        nn.GELU(),
        nn.BatchNorm2d(dim),
        *[
            nn.Sequential(
                Residual(
                    nn.Sequential(
                        nn.Conv2d(dim, dim, kernel, groups=dim, padding="same"),
                        nn.GELU(),
                        nn.BatchNorm2d(dim),
                    )
                ),
                nn.Conv2d(dim, dim, 1),
                nn.GELU(),
                nn.BatchNorm2d(dim),
            )
            for _ in range(depth)
        ],
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(dim, classes),
    )


BLOCKS: dict[str, Callable[[], nn.Module]] = {
    "levit-mlp": LeViTMLP,
    "linear-3d": Linear3D,
    "repvgg": RepVGG,
    "repvgg-timm": lambda: RepVGG(order="timm"),
    "repvgg-bn-after-sum": lambda: RepVGG(order="bn-after-sum"),
    "cnn-mean-head": CNNMeanHead,
    "preact-resnet": PreActResNet,
    "convmixer": convmixer,
}
