"""MobileNetV2 adapted to 32×32 images.

The network of Sandler et al. (2018), table 2: a 3×3 stem conv with 32
filters, 17 inverted residual blocks (1×1 expansion by a factor t, 3×3
depthwise conv, linear 1×1 projection; a residual connection when the block
keeps its shape), a 1×1 conv to 1280 channels, global average pooling and a
linear classifier. For 32×32 inputs the stem and the first block of the
24-channel stage use stride 1 instead of 2 (the usual CIFAR adaptation), so
the total downsampling is 8 instead of 32 and the last feature map is 4×4.
The parameter count is that of the ImageNet model with a smaller classifier:
2.24M for 10 classes.

Activations are ReLU6 as in the paper; no dropout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dualprune.models.base import ModelSpec, check_int, construct, kaiming_init

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2_cifar"]

# (expansion t, output channels c, blocks n, stride s of the first block), table 2 of the
# paper with the 24-channel stage at stride 1 for 32×32 inputs.
_CIFAR_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1×1), filter (3×3 depthwise), project (1×1, linear); add the input if shapes match.

    Module names: ``conv_pw``/``bn1``/``act1`` (expansion, absent when
    ``expand_ratio == 1``), ``conv_dw``/``bn2``/``act2`` (depthwise) and
    ``conv_pwl``/``bn3`` (linear projection).

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the depthwise conv.
        expand_ratio: Expansion factor t; the hidden width is ``t * in_planes``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_planes * expand_ratio
        self.use_residual = stride == 1 and in_planes == planes
        self.conv_pw: nn.Conv2d | None = None
        self.bn1: nn.BatchNorm2d | None = None
        self.act1: nn.ReLU6 | None = None
        if expand_ratio != 1:
            self.conv_pw = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
            self.act1 = nn.ReLU6(inplace=True)
        self.conv_dw = nn.Conv2d(
            hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False
        )
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pwl = nn.Conv2d(hidden, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``(B, in_planes, H, W)``; returns ``(B, planes, H/s, W/s)``."""
        out = x
        if self.conv_pw is not None and self.bn1 is not None and self.act1 is not None:
            out = self.act1(self.bn1(self.conv_pw(out)))  # (B, t·in_planes, H, W)
        out = self.act2(self.bn2(self.conv_dw(out)))  # (B, t·in_planes, H/s, W/s)
        out = self.bn3(self.conv_pwl(out))  # (B, planes, H/s, W/s), no activation
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem conv, inverted residual blocks, 1×1 head conv, global average pooling, classifier.

    Module names: ``conv_stem``/``bn1``, ``blocks.N.*`` (N from 0 to 16; see
    :class:`InvertedResidual`), ``conv_head``/``bn2`` and ``classifier``.

    Args:
        stages: ``(t, c, n, s)`` rows: expansion, channels, number of blocks and
            stride of the first block of each stage.
        stem_stride: Stride of the stem conv (1 for 32×32, 2 for ImageNet).
        num_classes: Number of outputs of ``classifier``.
        in_channels: Input image channels.

    Raises:
        ConfigError: ``num_classes`` or ``in_channels`` is not a positive integer.
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int, int, int], ...] = _CIFAR_STAGES,
        stem_stride: int = 1,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_int("MobileNetV2", "num_classes", num_classes)
        check_int("MobileNetV2", "in_channels", in_channels)
        stem, head = 32, 1280
        self.conv_stem = nn.Conv2d(in_channels, stem, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act1 = nn.ReLU6(inplace=True)
        blocks: list[nn.Module] = []
        in_planes = stem
        for t, c, n, s in stages:
            for i in range(n):
                blocks.append(InvertedResidual(in_planes, c, s if i == 0 else 1, t))
                in_planes = c
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(in_planes, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.act2 = nn.ReLU6(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        x = self.act1(self.bn1(self.conv_stem(x)))  # (B, 32, H, W) for stem_stride 1
        x = self.blocks(x)  # (B, 320, H/8, W/8)
        x = self.act2(self.bn2(self.conv_head(x)))  # (B, 1280, H/8, W/8)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 1280)
        return self.classifier(x)


def _create_mobilenetv2(
    name: str,
    stages: tuple[tuple[int, int, int, int], ...],
    stem_stride: int,
    kwargs: dict[str, Any],
) -> MobileNetV2:
    fixed = {"stages": stages, "stem_stride": stem_stride}
    return construct(MobileNetV2, name, fixed, kwargs)


def mobilenetv2_cifar(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 for 32×32 images (options: num_classes, in_channels)."""
    return _create_mobilenetv2("mobilenetv2_cifar", _CIFAR_STAGES, 1, kwargs)


MODELS = (
    ModelSpec(
        name="mobilenetv2_cifar",
        family="mobilenetv2",
        num_classes=10,
        input_shape=(3, 32, 32),
        description="MobileNetV2 (width 1.0) with stride 1 in the stem and the 24-channel "
        "stage, for 32×32 images; depthwise convs",
        paper="Sandler, Howard, Zhu, Zhmoginov, Chen. MobileNetV2: Inverted residuals and "
        "linear bottlenecks. CVPR 2018 (arXiv:1801.04381)",
        builder=mobilenetv2_cifar,
    ),
)
