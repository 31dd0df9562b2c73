"""LeNet-5 (Caffe variant) and LeNet-300-100, the MNIST models of the pruning literature.

Both are the versions used by Han et al. (2015) and the ADMM pruning papers
that followed, so compression ratios can be compared with theirs:

* ``lenet5``: 430,500 conv+fc weights (500 + 25,000 + 400,000 + 5,000) and
  580 biases on 1×28×28 inputs.
* ``lenet300``: 266,200 weights (235,200 + 30,000 + 1,000) and 410 biases.

Both keep PyTorch's default initialisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dualprune.errors import ConfigError
from dualprune.models.base import ModelSpec, check_int, construct

__all__ = ["LeNet5", "LeNet300", "lenet5", "lenet300"]

_LENET_PAPER = (
    "LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document "
    "recognition. Proc. IEEE 1998; Caffe variant as in Han, Pool, Tran, Dally. "
    "Learning both weights and connections for efficient neural networks. NeurIPS 2015"
)


class LeNet5(nn.Module):
    """Caffe's LeNet-5: two 5×5 convs with 2×2 max-pooling, then two fully connected layers.

    Layout (shapes for the default 1×28×28 input)::

        conv1  1→20, 5×5   (B, 20, 24, 24) → pool1 2×2 → (B, 20, 12, 12)
        conv2 20→50, 5×5   (B, 50,  8,  8) → pool2 2×2 → (B, 50,  4,  4)
        flatten            (B, 800)
        fc1  800→500, ReLU
        fc2  500→num_classes

    Faithful to Caffe's ``lenet_train_test.prototxt``, there is no
    nonlinearity after the convolutions: the only ReLU follows ``fc1``.

    Args:
        num_classes: Number of outputs of ``fc2``.
        in_channels: Input channels (1 for MNIST, 3 to run on CIFAR images).
        image_size: Input height and width; ``fc1``'s input size follows from it.
            At least 16 so that both convolutions fit.

    Raises:
        ConfigError: An argument is not a positive integer or ``image_size`` < 16.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        check_int("LeNet5", "num_classes", num_classes)
        check_int("LeNet5", "in_channels", in_channels)
        check_int("LeNet5", "image_size", image_size)
        side = ((image_size - 4) // 2 - 4) // 2  # after conv1, pool1, conv2, pool2
        if side < 1:
            raise ConfigError(
                f"LeNet5: image_size={image_size} is too small for two 5×5 convs and two "
                f"2×2 pools; use image_size >= 16"
            )
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        x = self.pool1(self.conv1(x))  # (B, 20, 12, 12) for 28×28
        x = self.pool2(self.conv2(x))  # (B, 50, 4, 4)
        x = torch.flatten(x, 1)  # (B, 800)
        return self.fc2(self.relu(self.fc1(x)))


class LeNet300(nn.Module):
    """LeNet-300-100: a multilayer perceptron 784 → 300 → 100 → classes with ReLU.

    Args:
        num_classes: Number of outputs of ``fc3``.
        in_channels: Input channels; the input is flattened to
            ``in_channels * image_size²`` features.
        image_size: Input height and width.

    Raises:
        ConfigError: An argument is not a positive integer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        check_int("LeNet300", "num_classes", num_classes)
        check_int("LeNet300", "in_channels", in_channels)
        check_int("LeNet300", "image_size", image_size)
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 300)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        x = torch.flatten(x, 1)  # (B, C·H·W)
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def lenet5(**kwargs: Any) -> LeNet5:
    """Caffe LeNet-5 for 1×28×28 MNIST (options: num_classes, in_channels, image_size)."""
    return construct(LeNet5, "lenet5", {}, kwargs)


def lenet300(**kwargs: Any) -> LeNet300:
    """LeNet-300-100 for 1×28×28 MNIST (options: num_classes, in_channels, image_size)."""
    return construct(LeNet300, "lenet300", {}, kwargs)


MODELS = (
    ModelSpec(
        name="lenet5",
        family="lenet",
        num_classes=10,
        input_shape=(1, 28, 28),
        description="Caffe LeNet-5: conv 20, conv 50 (no ReLU), fc 500 + ReLU, fc; MNIST",
        paper=_LENET_PAPER,
        builder=lenet5,
    ),
    ModelSpec(
        name="lenet300",
        family="lenet",
        num_classes=10,
        input_shape=(1, 28, 28),
        description="LeNet-300-100 multilayer perceptron, ReLU; MNIST",
        paper=_LENET_PAPER,
        builder=lenet300,
    ),
)
