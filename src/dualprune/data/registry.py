"""Data sets by name: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``imagefolder:PATH``.

:func:`load` returns a :class:`Dataset`, whole splits as in-memory uint8 tensors with the
set's normalisation constants; :func:`loaders` wraps it into train and test
:class:`~dualprune.data.loader.Loader` objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dualprune.data import formats
from dualprune.data.imagefolder import load_folder
from dualprune.data.loader import Loader
from dualprune.data.sources import ensure_files, resolve_root
from dualprune.errors import DataError, UnknownNameError, did_you_mean

__all__ = ["ALIASES", "STATS", "Dataset", "load", "loaders", "names"]

#: Per-channel (mean, std) in [0, 1] units, the customary values for each set.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
#: Other spellings accepted by :func:`load`.
ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist"}
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Image folder standing in for CIFAR-10 when the official pickles are absent.
CIFAR10_JPEG = "cifar10-jpeg"
_PREFIX = "imagefolder:"


@dataclass(eq=False, repr=False)
class Dataset:
    """A data set held in memory.

    Attributes:
        name: Canonical name (``"mnist"``, ``"imagefolder:/abs/path"`` ...).
        train_x: uint8 images (N, C, H, W).
        train_y: int64 labels (N,).
        test_x: uint8 images (M, C, H, W).
        test_y: int64 labels (M,).
        classes: Class names; label i is ``classes[i]``.
        mean: Per-channel mean in [0, 1] units, used for normalisation.
        std: Per-channel std in [0, 1] units.
        augment: Whether training uses random crop + flip.
        source: The folder the files were read from.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    source: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Image channels C (1 for MNIST, 3 for CIFAR)."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width (H, W)."""
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def __repr__(self) -> str:
        c, (h, w) = self.in_channels, self.image_size
        return (
            f"Dataset('{self.name}', train={len(self.train_y)}, test={len(self.test_y)}, "
            f"{c}x{h}x{w}, {self.num_classes} classes, augment={self.augment})"
        )


def names() -> list[str]:
    """Return the built-in data set names (``imagefolder:PATH`` is accepted as well)."""
    return sorted(STATS)


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _load_idx(name: str, root: Path, download: bool, classes: list[str]) -> Dataset:
    folder = ensure_files(name, root, download=download)

    def read(stem: str) -> np.ndarray:
        gz = folder / f"{stem}.gz"
        return formats.read_idx(gz if gz.is_file() else folder / stem)

    split = {}
    for part in ("train", "t10k"):
        x = read(f"{part}-images-idx3-ubyte")
        y = read(f"{part}-labels-idx1-ubyte")
        if x.ndim != 3 or y.shape != (x.shape[0],):
            raise DataError(
                f"{folder}/{part}-*: images {x.shape} and labels {y.shape} do not match; "
                "delete the files so they are downloaded again"
            )
        split[part] = (_tensor(x[:, None], torch.uint8), _tensor(y, torch.int64))  # (N,1,H,W)
    mean, std = STATS[name]
    return Dataset(name, *split["train"], *split["t10k"], classes, mean, std, False, str(folder))


def _mnist(root: Path, download: bool) -> Dataset:
    return _load_idx("mnist", root, download, [str(i) for i in range(10)])


_FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _fashion_mnist(root: Path, download: bool) -> Dataset:
    return _load_idx("fashion_mnist", root, download, list(_FASHION_CLASSES))


def _cifar(name: str, root: Path, download: bool, alternative: str = "") -> Dataset:
    folder = ensure_files(name, root, download=download, alternative=alternative)
    if name == "cifar10":
        parts = [formats.read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
        test_x, test_y = formats.read_cifar_batch(folder / "test_batch")
        classes = formats.read_cifar_meta(folder / "batches.meta")
    else:
        parts = [formats.read_cifar_batch(folder / "train", "fine_labels")]
        test_x, test_y = formats.read_cifar_batch(folder / "test", "fine_labels")
        classes = formats.read_cifar_meta(folder / "meta", "fine_label_names")
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    mean, std = STATS[name]
    return Dataset(
        name,
        _tensor(train_x, torch.uint8),
        _tensor(train_y, torch.int64),
        _tensor(test_x, torch.uint8),
        _tensor(test_y, torch.int64),
        classes,
        mean,
        std,
        True,
        str(folder),
    )


def _cifar10(root: Path, download: bool) -> Dataset:
    jpeg = root / CIFAR10_JPEG
    if not (root / "cifar-10-batches-py").is_dir() and jpeg.is_dir():
        data = load_folder(jpeg)
        if data.classes != list(CIFAR10_CLASSES):
            raise DataError(
                f"{jpeg}/train holds classes {', '.join(data.classes)}, expected the CIFAR-10 "
                f"classes {', '.join(CIFAR10_CLASSES)}; fix the folder or remove it"
            )
        mean, std = STATS["cifar10"]
        return Dataset(
            "cifar10",
            data.train_x,
            data.train_y,
            data.test_x,
            data.test_y,
            data.classes,
            mean,
            std,
            True,
            str(jpeg),
        )
    return _cifar("cifar10", root, download, f" (or an image folder {jpeg}/train/<class>/*.jpg)")


def _cifar100(root: Path, download: bool) -> Dataset:
    return _cifar("cifar100", root, download)


_BUILTIN: dict[str, Callable[[Path, bool], Dataset]] = {
    "mnist": _mnist,
    "fashion_mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
}


def _imagefolder(spec: str, root: str | os.PathLike[str] | None) -> Dataset:
    given = spec[len(_PREFIX) :].strip()
    if not given:
        raise DataError(
            "data set 'imagefolder:' names no folder; write imagefolder:PATH with PATH "
            "holding train/<class>/*.jpg and test/<class>/*.jpg"
        )
    path = Path(given).expanduser()
    if not path.is_absolute() and not path.exists():
        under_root = resolve_root(root) / path
        if not under_root.exists():
            raise DataError(
                f"image folder '{given}' is neither in {Path.cwd()} nor in the data root "
                f"{under_root.parent}; give an existing folder holding train/<class>/*.jpg "
                "and test/<class>/*.jpg"
            )
        path = under_root
    path = path.absolute()
    data = load_folder(path)
    h, w = data.train_x.shape[2:]
    return Dataset(
        f"{_PREFIX}{path}",
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        data.classes,
        data.mean,
        data.std,
        (h, w) == (32, 32),
        str(path),
    )


def canonical_name(name: str) -> str:
    """Return the canonical spelling of a data set name.

    Args:
        name: A built-in name or alias (case-insensitive) or ``imagefolder:PATH``.

    Returns:
        The name as :func:`names` lists it, or ``imagefolder:PATH`` unchanged.

    Raises:
        UnknownNameError: The name is not known.
    """
    key = str(name).strip()
    if key.lower().startswith(_PREFIX):
        return _PREFIX + key[len(_PREFIX) :]
    key = key.lower()
    key = ALIASES.get(key, key)
    if key not in _BUILTIN:
        raise UnknownNameError(
            f"unknown data set '{name}'{did_you_mean(key, names())}, or imagefolder:PATH"
        )
    return key


def load(name: str, root: str | os.PathLike[str] | None = None, download: bool = True) -> Dataset:
    """Load a data set into memory.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` (or ``"fashion-mnist"``), ``"cifar10"``,
            ``"cifar100"``, or ``"imagefolder:PATH"`` (a relative PATH is looked up in the
            current folder, then under the data root).
        root: Data root; ``None`` uses :func:`~dualprune.data.sources.resolve_root`.
        download: Fetch missing official files; ``False`` never touches the network.

    Returns:
        The :class:`Dataset`.

    Raises:
        UnknownNameError: ``name`` is not a known set.
        DataError: Files are missing and cannot be downloaded, or are damaged.

    Example:
        >>> ds = load("mnist", "/work/shared/data", download=False)
        >>> ds
        Dataset('mnist', train=60000, test=10000, 1x28x28, 10 classes, augment=False)
    """
    key = canonical_name(name)
    if key.startswith(_PREFIX):
        return _imagefolder(key, root)
    return _BUILTIN[key](resolve_root(root), download)


def loaders(
    name: str,
    batch_size: int = 128,
    *,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    download: bool = True,
    eval_batch_size: int | None = None,
    augment: bool = True,
) -> tuple[Loader, Loader, Dataset]:
    """Load a data set and return its train and test loaders.

    Args:
        name: Data set name, as for :func:`load`.
        batch_size: Training batch size.
        root: Data root, as for :func:`load`.
        seed: Seed of the training loader's per-epoch shuffling and augmentation.
        download: As for :func:`load`.
        eval_batch_size: Test batch size (default: ``batch_size``).
        augment: Allow augmentation; it applies only to sets that use it (CIFAR, 32x32
            image folders).

    Returns:
        ``(train, test, dataset)``: train is shuffled (and augmented where the set is),
        test keeps the stored order without augmentation.

    Raises:
        UnknownNameError: ``name`` is not a known set.
        DataError: As for :func:`load`.
        ConfigError: A batch size is not a positive integer.
    """
    ds = load(name, root, download)
    train = Loader(
        ds.train_x,
        ds.train_y,
        batch_size=batch_size,
        mean=ds.mean,
        std=ds.std,
        shuffle=True,
        augment=augment and ds.augment,
        seed=seed,
    )
    test = Loader(
        ds.test_x,
        ds.test_y,
        batch_size=eval_batch_size if eval_batch_size is not None else batch_size,
        mean=ds.mean,
        std=ds.std,
        shuffle=False,
        augment=False,
        seed=seed,
    )
    return train, test, ds
