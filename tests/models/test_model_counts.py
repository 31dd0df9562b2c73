"""Parameter counts and layer layout against the published architectures."""

from __future__ import annotations

import pytest
from torch import nn

from dualprune import models
from dualprune.models import count_parameters as counts


def _weights(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(m.weight.shape)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


def test_lenet5_is_caffe_lenet() -> None:
    model = models.create("lenet5")
    assert _weights(model) == {
        "conv1": (20, 1, 5, 5),
        "conv2": (50, 20, 5, 5),
        "fc1": (500, 800),
        "fc2": (10, 500),
    }
    total, weights = counts(model)
    assert weights == 430_500  # 500 + 25,000 + 400,000 + 5,000
    assert total - weights == 580  # biases 20 + 50 + 500 + 10
    # Caffe's LeNet has a single ReLU, after fc1; the convolutions are linear.
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1


def test_lenet5_image_size_sets_fc1() -> None:
    model = models.create("lenet5", in_channels=3, image_size=32)
    assert model.fc1.in_features == 50 * 5 * 5


def test_lenet300_counts() -> None:
    model = models.create("lenet300")
    assert _weights(model) == {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)}
    total, weights = counts(model)
    assert weights == 266_200
    assert total - weights == 410


# Published counts (option A shortcuts), He et al. 2016, table 6; option B adds 2,752.
@pytest.mark.parametrize(
    ("name", "published"),
    [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6)],
)
def test_cifar_resnet_counts(name: str, published: float) -> None:
    model = models.create(name)
    total, _ = counts(model)
    assert abs(total - published) / published < 0.03
    shortcut = sum(p.numel() for n, p in model.named_parameters() if "downsample" in n)
    assert shortcut == 16 * 32 + 32 * 64 + 2 * (32 + 64)


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_cifar_resnet_depth(depth: int) -> None:
    model = models.create(f"resnet{depth}")
    layers = [n for n in _weights(model) if "downsample" not in n]
    assert len(layers) == depth  # 6n convs in blocks + stem conv + fc
    assert "layer1.0.conv1" in layers
    assert model.layer1[0].downsample is None


def test_resnet18_cifar() -> None:
    model = models.create("resnet18_cifar")
    total, _ = counts(model)
    assert abs(total - 11.17e6) / 11.17e6 < 0.01
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_vgg16_cifar() -> None:
    model = models.create("vgg16_cifar")
    total, _ = counts(model)
    assert abs(total - 14.7e6) / 14.7e6 < 0.01
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert isinstance(model.features[0], nn.Conv2d)
    assert model.classifier.in_features == 512


def test_mobilenetv2_cifar() -> None:
    model = models.create("mobilenetv2_cifar")
    total, _ = counts(model)
    assert 2.2e6 <= total <= 2.3e6
    depthwise = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
    ]
    assert len(depthwise) == 17
    strides = [m.stride[0] for m in depthwise]
    assert model.conv_stem.stride == (1, 1)
    assert strides.count(2) == 3  # total downsampling 8 for 32×32 inputs
