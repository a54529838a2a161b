from __future__ import annotations

import pytest
import torch

from bnfold.converter.models import DEFAULT_INPUT_SHAPES, ArchConfig, bn_modules, build_model

# BatchNorm layers each architecture is defined with (see converter/models.py).
BN_COUNTS = {"mlp": 2, "cifar-cnn": 5, "fer-cnn": 3, "resnet": 9}


@pytest.mark.parametrize("arch", sorted(BN_COUNTS))
def test_default_shape_forward_and_bn_count(arch: str) -> None:
    shape = DEFAULT_INPUT_SHAPES[arch]
    model = build_model(ArchConfig(arch, shape, 7)).eval()
    out = model(torch.zeros(3, *shape))
    assert tuple(out.shape) == (3, 7)
    assert len(bn_modules(model)) == BN_COUNTS[arch]


@pytest.mark.parametrize("arch", sorted(BN_COUNTS))
def test_no_bn_twin_has_no_batchnorm_and_same_output_shape(arch: str) -> None:
    shape = DEFAULT_INPUT_SHAPES[arch]
    twin = build_model(ArchConfig(arch, shape, 4, bn=False)).eval()
    assert bn_modules(twin) == []
    assert tuple(twin(torch.zeros(2, *shape)).shape) == (2, 4)


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("mlp", (100,)),
        ("mlp", (1, 8, 8)),
        ("cifar-cnn", (1, 24, 24)),
        ("fer-cnn", (3, 40, 40)),
        ("resnet", (1, 16, 16)),
    ],
)
def test_parametric_input_shapes(arch: str, shape: tuple[int, ...]) -> None:
    model = build_model(ArchConfig(arch, shape, 3)).eval()
    assert tuple(model(torch.zeros(2, *shape)).shape) == (2, 3)


def test_fer_cnn_places_bn_after_activation_pool_and_flatten() -> None:
    model = build_model(ArchConfig("fer-cnn", (1, 48, 48), 7))
    layers = list(model)
    kinds = [type(m).__name__ for m in layers]
    bn_at = [i for i, k in enumerate(kinds) if k.startswith("BatchNorm")]
    assert [kinds[i - 1] for i in bn_at] == ["ReLU", "MaxPool2d", "Flatten"]
    # Keras' valid padding: 48 -> 46 -> 44 -> pool 22 -> 20 -> pool 10 -> 8 -> pool 4.
    assert layers[bn_at[2]].num_features == 128 * 4 * 4


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model(ArchConfig("vgg", (3, 32, 32), 10))
    with pytest.raises(ValueError, match=r"expects an image input shape \(C, H, W\)"):
        build_model(ArchConfig("resnet", (64,), 10))
    with pytest.raises(ValueError, match="at least 2"):
        build_model(ArchConfig("mlp", (64,), 1))


def test_arch_config_round_trips_through_json_dict() -> None:
    cfg = ArchConfig("fer-cnn", (1, 48, 48), 7, bn=False)
    assert ArchConfig.from_dict(cfg.to_dict()) == cfg
