"""Data sets held in memory as uint8 tensors, and fast deterministic loaders.

>>> from dualprune import data
>>> train, test, ds = data.loaders("cifar10", batch_size=128, seed=0)
>>> for epoch in range(epochs):
...     train.set_epoch(epoch)
...     for x, y in train: ...   # x float32 (B, C, H, W) normalised, y int64 (B,)

Names: ``mnist``, ``fashion_mnist`` (``fashion-mnist``), ``cifar10``, ``cifar100`` and
``imagefolder:PATH``. Files are read from :func:`resolve_root` in torchvision's layout and
downloaded (md5-checked) when missing. See docs/data.md.
"""

from dualprune.data.formats import read_cifar_batch, read_cifar_meta, read_idx
from dualprune.data.imagefolder import FolderData, channel_stats, load_folder
from dualprune.data.loader import Loader, epoch_generator, random_crop_flip
from dualprune.data.registry import (
    ALIASES,
    STATS,
    Dataset,
    canonical_name,
    load,
    loaders,
    names,
)
from dualprune.data.sources import SOURCES, cache_dir, ensure_files, resolve_root

__all__ = [
    "ALIASES",
    "SOURCES",
    "STATS",
    "Dataset",
    "FolderData",
    "Loader",
    "cache_dir",
    "canonical_name",
    "channel_stats",
    "ensure_files",
    "epoch_generator",
    "load",
    "load_folder",
    "loaders",
    "names",
    "random_crop_flip",
    "read_cifar_batch",
    "read_cifar_meta",
    "read_idx",
    "resolve_root",
]
