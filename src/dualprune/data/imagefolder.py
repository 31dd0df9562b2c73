"""Image folders: ``PATH/{train,test}/<class>/*.{jpg,jpeg,png}``, decoded once and cached.

Classes are the sub-folders of ``train/`` in alphabetical order (label i = i-th name).
The first load decodes every image with Pillow (two threads; Pillow releases the GIL
while decoding) into uint8 tensors, computes the train split's per-channel mean and std,
and writes all of it to one cache file under :func:`~dualprune.data.sources.cache_dir`.
The cache file name holds a hash of the sorted file list (relative path, size, mtime), so
adding, removing or touching an image rebuilds it, and later runs load it in a fraction
of a second. A cache file that cannot be read is rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dualprune.data.sources import cache_dir
from dualprune.errors import DataError

__all__ = [
    "EXTENSIONS",
    "SPLITS",
    "FolderData",
    "FolderIndex",
    "channel_stats",
    "load_folder",
    "scan",
]

EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
#: Bump when the cache file's content changes meaning; old files are then rebuilt.
CACHE_VERSION = 1
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_CHUNK = 512


@dataclass
class FolderData:
    """A decoded image folder: uint8 (N, C, H, W) images, int64 labels, stats in [0, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class FolderIndex:
    """The listing of an image folder, as :func:`scan` finds it."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]  # split -> [(path relative to root, label)]
    key: str  # hash of the sorted (relative path, size, mtime) list


def _layout(root: Path) -> str:
    exts = ",".join(e.lstrip(".") for e in EXTENSIONS)
    return f"{root}/train/<class>/*.{{{exts}}} and {root}/test/<class>/*.{{{exts}}}"


def _subdirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def scan(root: str | Path) -> FolderIndex:
    """List the images of an image folder and hash the listing.

    Args:
        root: The folder holding ``train/`` and ``test/``.

    Returns:
        The class names, the files of each split with their labels, and the cache key.

    Raises:
        DataError: The folder, a split, or any image is missing, or ``test/`` has a class
            that ``train/`` lacks.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; expected {_layout(root)}")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DataError(f"image folder {root} has no '{split}' split; expected {_layout(root)}")
    classes = _subdirs(root / "train")
    label_of = {c: i for i, c in enumerate(classes)}
    digest = hashlib.sha256(f"dualprune imagefolder v{CACHE_VERSION}\n".encode())
    files: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        listing = []
        for cls in _subdirs(root / split):
            if cls not in label_of:
                raise DataError(
                    f"image folder {root}: class '{cls}' is in {split}/ but not in train/ "
                    f"(train classes: {', '.join(classes)}); add it to train/ or remove it"
                )
            with os.scandir(root / split / cls) as it:
                entries = [e for e in it if e.is_file() and e.name.lower().endswith(EXTENSIONS)]
            for e in sorted(entries, key=lambda e: e.name):
                rel = f"{split}/{cls}/{e.name}"
                st = e.stat()
                digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
                listing.append((rel, label_of[cls]))
        if not listing:
            raise DataError(
                f"image folder {root}/{split} holds no images; expected {_layout(root)}"
            )
        files[split] = listing
    return FolderIndex(root, classes, files, digest.hexdigest())


def _decode_one(path: Path) -> np.ndarray:
    """Decode one image to uint8 (H, W, C) with C = 1 (grayscale) or 3 (RGB)."""
    try:
        with Image.open(path) as im:
            gray = im.mode in _GRAY_MODES
            im = im.convert("L" if gray else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path} ({exc}); delete or replace it") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_chunk(paths: Sequence[Path]) -> list[np.ndarray]:
    return [_decode_one(p) for p in paths]


def _decode_files(paths: Sequence[Path], workers: int, desc: str) -> list[np.ndarray]:
    """Decode images in order, in chunks spread over ``workers`` threads."""
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    out: list[np.ndarray] = []
    with tqdm(total=len(paths), unit="img", desc=desc, leave=False, disable=None) as bar:
        if workers <= 1 or len(chunks) <= 1:
            results = map(_decode_chunk, chunks)
            for arrays in results:
                out.extend(arrays)
                bar.update(len(arrays))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for arrays in pool.map(_decode_chunk, chunks):
                    out.extend(arrays)
                    bar.update(len(arrays))
    return out


def _stack(arrays: list[np.ndarray], rels: list[str], root: Path, channels: int) -> torch.Tensor:
    """Stack (H, W, C) arrays into one uint8 (N, channels, H, W) tensor."""
    h, w = arrays[0].shape[:2]
    out = np.empty((len(arrays), h, w, channels), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.shape[:2] != (h, w):
            raise DataError(
                f"image folder {root}: {rels[i]} is {a.shape[1]}x{a.shape[0]} pixels but "
                f"{rels[0]} is {w}x{h}; all images must have one size, resize them first"
            )
        out[i] = a  # a grayscale (H, W, 1) image broadcasts to every channel
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images, in [0, 1] units.

    Exact: both come from a 256-bin histogram of each channel, in float64.

    Args:
        x: uint8 images (N, C, H, W).

    Returns:
        ``(mean, std)``, one value per channel each.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        m = (counts * levels).sum() / n
        var = (counts * levels.square()).sum() / n - m.square()
        mean.append(float(m))
        std.append(float(var.clamp_min(0).sqrt()))
    return tuple(mean), tuple(std)


def _build(index: FolderIndex, workers: int) -> FolderData:
    rels = {s: [rel for rel, _ in index.files[s]] for s in SPLITS}
    arrays = {
        s: _decode_files(
            [index.root / r for r in rels[s]], workers, f"decoding {index.root.name}/{s}"
        )
        for s in SPLITS
    }
    channels = 3 if any(a.shape[2] == 3 for s in SPLITS for a in arrays[s]) else 1
    xs = {s: _stack(arrays[s], rels[s], index.root, channels) for s in SPLITS}
    if xs["train"].shape[2:] != xs["test"].shape[2:]:
        raise DataError(
            f"image folder {index.root}: train images are {tuple(xs['train'].shape[2:])} "
            f"but test images are {tuple(xs['test'].shape[2:])}; resize them to one size"
        )
    ys = {s: torch.tensor([y for _, y in index.files[s]], dtype=torch.int64) for s in SPLITS}
    mean, std = channel_stats(xs["train"])
    return FolderData(xs["train"], ys["train"], xs["test"], ys["test"], index.classes, mean, std)


def _cache_path(index: FolderIndex, folder: Path) -> Path:
    where = hashlib.sha256(str(index.root.resolve()).encode()).hexdigest()[:8]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in index.root.name) or "root"
    return folder / "imagefolder" / f"{stem}-{where}-{index.key[:16]}.pt"


def _read_cache(path: Path, index: FolderIndex) -> FolderData | None:
    """Load a cache file; ``None`` (with a warning) when it is unreadable or stale."""
    if not path.is_file():
        return None
    try:
        obj: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if obj["version"] != CACHE_VERSION or obj["key"] != index.key:
            raise ValueError("written for other files")
        data = FolderData(
            obj["train_x"],
            obj["train_y"],
            obj["test_x"],
            obj["test_y"],
            list(obj["classes"]),
            tuple(float(v) for v in obj["mean"]),
            tuple(float(v) for v in obj["std"]),
        )
        n = {s: len(index.files[s]) for s in SPLITS}
        ok = (
            data.train_x.dtype == torch.uint8
            and data.train_x.ndim == 4
            and data.train_x.shape[0] == n["train"]
            and data.test_x.shape[0] == n["test"]
            and data.train_y.shape == (n["train"],)
            and data.test_y.shape == (n["test"],)
            and data.classes == index.classes
        )
        if not ok:
            raise ValueError("contents do not match the folder")
        return data
    except Exception as exc:  # any damage means: decode again
        lines = str(exc).strip().splitlines() or [""]
        why = f"{type(exc).__name__}: {lines[0][:120]}"
        warnings.warn(f"image folder cache {path} is unusable ({why}); rebuilding it", stacklevel=3)
        return None


def _write_cache(path: Path, index: FolderIndex, data: FolderData) -> None:
    """Write the cache atomically and drop older caches of the same folder."""
    obj = {
        "version": CACHE_VERSION,
        "key": index.key,
        "root": str(index.root),
        "classes": data.classes,
        "mean": list(data.mean),
        "std": list(data.std),
        "train_x": data.train_x,
        "train_y": data.train_y,
        "test_x": data.test_x,
        "test_y": data.test_y,
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(
            f"cannot write image folder cache {path} ({exc}); the images will be decoded "
            "again next time; set DUALPRUNE_CACHE to a writable folder",
            stacklevel=3,
        )
        return
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(f"{prefix}*.pt"):
        if old != path:
            old.unlink(missing_ok=True)


def load_folder(root: str | Path, *, cache: bool = True, workers: int | None = None) -> FolderData:
    """Load an image folder, from its cache file when the files have not changed.

    Args:
        root: The folder holding ``train/<class>/`` and ``test/<class>/``.
        cache: Read and write the decoded cache (under ``$DUALPRUNE_CACHE``).
        workers: Decoding threads; defaults to ``min(2, cpu count)``.

    Returns:
        The decoded images, labels, class names and the train split's mean/std.

    Raises:
        DataError: The layout is wrong, an image cannot be decoded, or sizes differ.
    """
    index = scan(Path(root).expanduser().absolute())
    path = _cache_path(index, cache_dir())
    if cache and (data := _read_cache(path, index)) is not None:
        return data
    data = _build(index, workers if workers is not None else min(2, os.cpu_count() or 1))
    if cache:
        _write_cache(path, index, data)
    return data
