"""A small BatchNorm CNN as torch's dynamo exporter writes it (the weights in
external data beside the graph), for the tests of exports brought in as they
are: tests/service/test_service_fold_external.py and tests/web/kind_models.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BNS = 3  # BatchNorm2d layers in bn_cnn


def bn_cnn(seed: int, *, relu_first: bool = False) -> Any:
    """Conv-BN-Relu-Conv-BN-Relu-Conv-BN-Pool-Linear, (N, 3, 16, 16) -> (N, 5), in
    eval mode with BN statistics that are not the identity.

    ``relu_first``: the first block is Conv-Relu-BN-MaxPool instead, that BN's
    scales negative on every third channel: it cannot pass the Relu backward
    and only its positive scales pass the MaxPool forward, so it leaves ops."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    head = (
        [nn.ReLU(), nn.BatchNorm2d(8), nn.MaxPool2d(2)]
        if relu_first
        else [nn.BatchNorm2d(8), nn.ReLU()]
    )
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        *head,
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3),
        nn.BatchNorm2d(6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )
    with torch.no_grad():  # statistics that are not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        if relu_first:
            net[2].weight[::3] *= -1
    return net.eval()


def dynamo_export(net: Any, path: Path) -> Path:
    """``path`` (input ``x``, output ``logits``, batch dynamic) with its weights in
    ``<path>.data`` beside it, as torch's dynamo exporter writes them."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net,
        (torch.randn(2, 3, 16, 16),),
        str(path),
        dynamo=True,
        optimize=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
    )
    assert path.with_name(path.name + ".data").is_file()  # what the exporter does with torch 2.13
    return path
