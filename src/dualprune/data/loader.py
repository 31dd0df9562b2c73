"""Batches straight from in-memory uint8 tensors, with per-sample augmentation.

A :class:`Loader` indexes a whole data set held as one uint8 tensor (N, C, H, W); there
are no worker processes and no per-sample PIL calls. For epoch e, the shuffling
permutation, the crop offsets and the flips all come from one ``torch.Generator`` seeded
from ``(seed, e)`` alone, so a run resumed at epoch k sees exactly the batches it would
have seen, and the global RNG is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dualprune.errors import ConfigError

__all__ = ["Loader", "epoch_generator", "random_crop_flip"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Return a CPU generator seeded from ``(seed, epoch)`` only.

    The two integers are mixed with numpy's ``SeedSequence``, so nearby seeds and epochs
    give unrelated streams.

    Args:
        seed: The run's seed (any int; taken modulo 2**64).
        epoch: The epoch number (≥ 0).

    Returns:
        A fresh ``torch.Generator``.
    """
    words = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed((int(words[0]) << 31) ^ int(words[1]))
    return g


def random_crop_flip(
    x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int
) -> torch.Tensor:
    """Crop each image from its zero-padded copy at its own offset, and mirror some.

    Sample b becomes ``P[b, :, dy:dy+H, dx:dx+W]`` (P = x zero-padded by ``pad`` on every
    side, ``(dy, dx) = shifts[b]``), left-right mirrored where ``flips[b]``. Both are done
    by one ``gather`` on the flattened padded batch: the mirrored crop simply reads its
    columns in reverse order.

    Args:
        x: Images (B, C, H, W), any dtype.
        shifts: int64 (B, 2) offsets in ``[0, 2 * pad]``.
        flips: bool (B,), which samples to mirror.
        pad: Zero padding on each side.

    Returns:
        The augmented batch, same shape and dtype as ``x``.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x  # (B, C, H+2p, W+2p)
    width = w + 2 * pad
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + shifts[:, 1:2]  # (B, W)
    rows = torch.arange(h, device=x.device) + shifts[:, 0:1]  # (B, H)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, h * w)  # (B, 1, H*W)
    out = padded.flatten(2).gather(2, index.expand(b, c, h * w))  # (B, C, H*W)
    return out.view(b, c, h, w)


class Loader:
    """Iterate ``(x, y)`` batches of an in-memory uint8 data set.

    Each batch is ``x`` float32 (B, C, H, W) normalised as ``(x/255 - mean) / std`` and
    ``y`` int64 (B,). With ``augment``, each sample is randomly cropped from its copy
    zero-padded by ``pad`` pixels (a random shift of up to ``pad`` pixels each way) and,
    with ``flip``, mirrored left-right with probability 1/2 (leave it off for digits).

    The order and augmentation of epoch e depend only on ``(seed, e)``. Call
    :meth:`set_epoch` before each epoch (like a ``DistributedSampler``); a pass that runs
    to the end also advances the epoch by one, so forgetting the call still reshuffles.

    Args:
        x: uint8 images (N, C, H, W).
        y: int64 labels (N,).
        batch_size: Samples per batch.
        mean: Per-channel mean in [0, 1] units (length C).
        std: Per-channel std in [0, 1] units (length C).
        shuffle: Draw a new permutation every epoch; otherwise keep the stored order.
        augment: Random crop (+ horizontal flip, see ``flip``), drawn per sample.
        seed: Seed of the per-epoch generators.
        drop_last: Skip the last, smaller batch.
        pad: Zero padding for the random crop.
        flip: Mirror half of the augmented samples left-right.
        device: Where to keep the data and build batches (default: where ``x`` is).

    Raises:
        ConfigError: Bad shapes or dtypes, or a non-positive batch size.

    Example:
        >>> train = Loader(ds.train_x, ds.train_y, batch_size=128, mean=ds.mean,
        ...                std=ds.std, shuffle=True, augment=True, seed=0)
        >>> for epoch in range(start, epochs):
        ...     train.set_epoch(epoch)
        ...     for x, y in train: ...
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool,
        augment: bool,
        seed: int = 0,
        drop_last: bool = False,
        pad: int = 4,
        flip: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x)
            raise ConfigError(f"Loader needs uint8 images (N, C, H, W), got {got}")
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
            got_y = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y)
            raise ConfigError(f"Loader needs labels of shape ({x.shape[0]},), got {got_y}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
        channels = x.shape[1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ConfigError(
                f"mean={tuple(mean)} and std={tuple(std)} need {channels} values each "
                "(std > 0), one per image channel"
            )
        if pad < 0:
            raise ConfigError(f"pad={pad} must be ≥ 0")
        device = torch.device(device) if device is not None else x.device
        self.x = x.to(device)
        self.y = y.to(device=device, dtype=torch.int64)
        self.batch_size = batch_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = drop_last
        self.pad = pad
        self.flip = flip
        self.epoch = 0
        # x_norm = x * (1 / (255 std)) - mean / std, per channel, shaped (1, C, 1, 1)
        std_t = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._bias = -mean_t / std_t

    @property
    def num_samples(self) -> int:
        """Number of samples in the data set (N)."""
        return int(self.x.shape[0])

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next pass uses.

        Args:
            epoch: Epoch number (≥ 0).

        Raises:
            ConfigError: ``epoch`` is negative or not an integer.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch={epoch!r} must be an integer ≥ 0")
        self.epoch = epoch

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Turn uint8 images into float32 ``(x/255 - mean) / std`` (one fused kernel)."""
        return torch.addcmul(self._bias, x, self._scale)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x float32 (B, C, H, W), y int64 (B,))`` for the current epoch."""
        n, bs, device = self.num_samples, self.batch_size, self.x.device
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=g).to(device) if self.shuffle else None
        if self.augment:
            shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(device)
            flips = (torch.rand(n, generator=g) < 0.5).to(device)
            if not self.flip:
                flips.zero_()
        for i in range(len(self)):
            lo, hi = i * bs, min((i + 1) * bs, n)
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                xb = random_crop_flip(xb, shifts[lo:hi], flips[lo:hi], self.pad)
            yield self.normalize(xb), yb
        self.epoch += 1

    def __repr__(self) -> str:
        return (
            f"Loader(samples={self.num_samples}, batch_size={self.batch_size}, "
            f"batches={len(self)}, shuffle={self.shuffle}, augment={self.augment}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )
