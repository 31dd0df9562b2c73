"""Residual networks for 32×32 images: the CIFAR ResNets of He et al. and ResNet-18.

``resnet20/32/56/110`` follow §4.2 of He et al. (2016): a 3×3 conv with 16
filters, three stages of ``n`` basic blocks with 16, 32 and 64 filters (the
first block of stages 2 and 3 has stride 2), global average pooling and one
fully connected layer; depth = 6n + 2.

Shortcuts. The paper's CIFAR models use *option A*: identity shortcuts that
subsample by 2 and pad the new channels with zeros, adding no parameters.
That zero-padding is not a layer, so torch-pruning's dependency graph cannot
couple the channels on both sides of it, and the channels of a residual stage
could not be removed physically. These models therefore use *option B* for
the two downsampling shortcuts only (a 1×1 conv with stride 2 followed by
BatchNorm, named ``layerK.0.downsample``) and identity shortcuts everywhere
else. This adds 2,752 parameters (16·32 + 32·64 conv weights and 2·(32 + 64)
BatchNorm parameters) to the published counts of option A: ResNet-20 0.27M,
ResNet-32 0.46M, ResNet-56 0.85M, ResNet-110 1.7M (table 6 of the paper).

``resnet18_cifar`` is the ImageNet ResNet-18 (2-2-2-2 basic blocks with 64,
128, 256 and 512 filters, option B shortcuts) with the 7×7 stride-2 stem and
its max-pool replaced by one 3×3 stride-1 conv, as usual for 32×32 inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dualprune.errors import ConfigError
from dualprune.models.base import ModelSpec, check_int, construct, kaiming_init

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "resnet18_cifar",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
]

_HE_2016 = (
    "He, Zhang, Ren, Sun. Deep residual learning for image recognition. CVPR 2016 "
    "(arXiv:1512.03385)"
)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a shortcut: relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x)).

    The shortcut ``s`` is the identity when the shape is kept and
    ``downsample`` (1×1 conv with ``stride`` + BatchNorm, option B) otherwise.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv1`` and of the shortcut.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``(B, in_planes, H, W)``; returns ``(B, planes, H/s, W/s)``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """A stem conv, stages of :class:`BasicBlock`, global average pooling and ``fc``.

    Module names: ``conv1``/``bn1`` (stem), ``layer{k}.{i}.conv1`` etc. for
    block ``i`` of stage ``k`` (from 1), ``fc`` (classifier).

    Args:
        blocks: Number of blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20.
        widths: Channels of each stage; the stem has ``widths[0]`` channels.
        num_classes: Number of outputs of ``fc``.
        in_channels: Input image channels.

    Raises:
        ConfigError: ``blocks`` and ``widths`` differ in length or hold
            non-positive values, or an integer argument is below 1.
    """

    def __init__(
        self,
        blocks: tuple[int, ...],
        widths: tuple[int, ...],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_int("CifarResNet", "num_classes", num_classes)
        check_int("CifarResNet", "in_channels", in_channels)
        if len(blocks) != len(widths) or not blocks:
            raise ConfigError(
                f"CifarResNet: blocks={blocks!r} and widths={widths!r} must be non-empty and "
                f"of equal length (one entry per stage)"
            )
        for value in (*blocks, *widths):
            check_int("CifarResNet", "blocks/widths entry", value)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        for k, (n, planes) in enumerate(zip(blocks, widths, strict=True), start=1):
            stride = 1 if k == 1 else 2
            stage = [
                BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                for i in range(n)
            ]
            self.add_module(f"layer{k}", nn.Sequential(*stage))
            in_planes = planes
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))  # (B, widths[0], H, W)
        for k in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{k}")(x)  # stage k halves H, W for k > 1
        x = torch.flatten(self.avgpool(x), 1)  # (B, widths[-1])
        return self.fc(x)


def _create_resnet(
    name: str, blocks: tuple[int, ...], widths: tuple[int, ...], kwargs: dict[str, Any]
) -> CifarResNet:
    return construct(CifarResNet, name, {"blocks": blocks, "widths": widths}, kwargs)


_CIFAR_WIDTHS = (16, 32, 64)


def resnet20(**kwargs: Any) -> CifarResNet:
    """ResNet-20 (n = 3) for CIFAR (options: num_classes, in_channels)."""
    return _create_resnet("resnet20", (3, 3, 3), _CIFAR_WIDTHS, kwargs)


def resnet32(**kwargs: Any) -> CifarResNet:
    """ResNet-32 (n = 5) for CIFAR (options: num_classes, in_channels)."""
    return _create_resnet("resnet32", (5, 5, 5), _CIFAR_WIDTHS, kwargs)


def resnet56(**kwargs: Any) -> CifarResNet:
    """ResNet-56 (n = 9) for CIFAR (options: num_classes, in_channels)."""
    return _create_resnet("resnet56", (9, 9, 9), _CIFAR_WIDTHS, kwargs)


def resnet110(**kwargs: Any) -> CifarResNet:
    """ResNet-110 (n = 18) for CIFAR (options: num_classes, in_channels)."""
    return _create_resnet("resnet110", (18, 18, 18), _CIFAR_WIDTHS, kwargs)


def resnet18_cifar(**kwargs: Any) -> CifarResNet:
    """ResNet-18 with a 3×3 stem and no max-pool, for 32×32 (options: num_classes, in_channels)."""
    return _create_resnet("resnet18_cifar", (2, 2, 2, 2), (64, 128, 256, 512), kwargs)


def _cifar_spec(name: str, depth: int, builder: Any) -> ModelSpec:
    n = (depth - 2) // 6
    return ModelSpec(
        name=name,
        family="resnet_cifar",
        num_classes=10,
        input_shape=(3, 32, 32),
        description=f"ResNet-{depth} for CIFAR: 3 stages × {n} basic blocks of 16/32/64 "
        f"channels; option B shortcuts only where downsampling",
        paper=_HE_2016,
        builder=builder,
    )


MODELS = (
    _cifar_spec("resnet20", 20, resnet20),
    _cifar_spec("resnet32", 32, resnet32),
    _cifar_spec("resnet56", 56, resnet56),
    _cifar_spec("resnet110", 110, resnet110),
    ModelSpec(
        name="resnet18_cifar",
        family="resnet_cifar",
        num_classes=10,
        input_shape=(3, 32, 32),
        description="ResNet-18 (2-2-2-2 basic blocks, 64-512 channels) with a 3×3 stride-1 "
        "stem and no max-pool, for 32×32 images",
        paper=_HE_2016,
        builder=resnet18_cifar,
    ),
)
