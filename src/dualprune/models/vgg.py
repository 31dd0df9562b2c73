"""VGG-16 with BatchNorm for 32×32 images, the CIFAR VGG of the pruning literature.

The 13 3×3 convolutions of VGG-16 (configuration D of Simonyan and Zisserman,
2015), each followed by BatchNorm and ReLU, with five 2×2 max-pools that bring
32×32 down to 1×1. The three ImageNet fully connected layers are replaced by a
global average pool (a no-op on the 1×1 map of 32×32 inputs, but it keeps
other sizes working) and one ``Linear(512, num_classes)``, the usual CIFAR
adaptation. Convolutions have no bias since BatchNorm follows each of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dualprune.models.base import ModelSpec, check_int, construct, kaiming_init

__all__ = ["VGG", "vgg16_cifar"]

# Output channels of each conv; "M" is a 2×2 max-pool. Configuration D (VGG-16).
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """Plain stack of 3×3 conv-BN-ReLU layers and max-pools, then global pooling and ``classifier``.

    Module names: ``features.N`` (``nn.Sequential`` of conv, BatchNorm, ReLU
    and MaxPool layers in order; e.g. ``features.0`` is the first conv,
    ``features.3`` the second) and ``classifier``.

    Args:
        config: Output channels of each conv, with ``"M"`` for a 2×2 max-pool.
        num_classes: Number of outputs of ``classifier``.
        in_channels: Input image channels.

    Raises:
        ConfigError: ``num_classes`` or ``in_channels`` is not a positive integer.
    """

    def __init__(
        self,
        config: tuple[int | str, ...] = _VGG16,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_int("VGG", "num_classes", num_classes)
        check_int("VGG", "in_channels", in_channels)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            width = check_int("VGG", "config entry", item)
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        x = self.features(x)  # (B, 512, 1, 1) for 32×32 input
        x = torch.flatten(self.avgpool(x), 1)  # (B, 512)
        return self.classifier(x)


def _create_vgg(name: str, config: tuple[int | str, ...], kwargs: dict[str, Any]) -> VGG:
    return construct(VGG, name, {"config": config}, kwargs)


def vgg16_cifar(**kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm for 32×32 images (options: num_classes, in_channels)."""
    return _create_vgg("vgg16_cifar", _VGG16, kwargs)


MODELS = (
    ModelSpec(
        name="vgg16_cifar",
        family="vgg",
        num_classes=10,
        input_shape=(3, 32, 32),
        description="VGG-16 with BatchNorm: 13 3×3 convs, global average pool, one Linear "
        "512→classes",
        paper="Simonyan, Zisserman. Very deep convolutional networks for large-scale image "
        "recognition. ICLR 2015 (arXiv:1409.1556)",
        builder=vgg16_cifar,
    ),
)
