"""A tiny learnable problem, a model and a loader that crashes, shared by the training tests."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from dualprune.data import Loader
from dualprune.train.config import TrainConfig

META = {"model_name": "tiny"}
CFG = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="cosine", weight_decay=1e-4)


def tiny_data(n: int = 256) -> tuple[Tensor, Tensor]:
    """``n`` 8×8 uint8 images of two classes; class 1 has a bright corner."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 100, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 1, :, :4, :4] += 150  # class 1 has a bright corner: learnable in a few steps
    return x, y


def loaders(seed: int = 0) -> tuple[Loader, Loader]:
    """A shuffled training loader (8 batches of 32) and a test loader (1 batch of 64)."""
    x, y = tiny_data()
    train = Loader(
        x, y, batch_size=32, mean=(0.5,), std=(0.25,), shuffle=True, augment=False, seed=seed
    )
    test = Loader(
        x[:64], y[:64], batch_size=64, mean=(0.5,), std=(0.25,), shuffle=False, augment=False
    )
    return train, test


def tiny_model() -> nn.Module:
    """Conv (4, 1, 3, 3) → ReLU → Dropout → Linear (2, 144), the same weights every call."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )


class Crash(Exception):
    """Raised by :class:`CrashingLoader`: the process was killed."""


class CrashingLoader:
    """Wraps a loader and raises in the middle of one epoch (a killed process)."""

    def __init__(self, inner: Loader, crash_epoch: int) -> None:
        self.inner, self.crash_epoch, self.epoch = inner, crash_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i, batch in enumerate(self.inner):
            if self.epoch == self.crash_epoch and i == 3:
                raise Crash
            yield batch
