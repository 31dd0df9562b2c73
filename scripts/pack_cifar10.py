"""Pack the CIFAR-10 JPEG folder into one ``.npz`` of raw JPEG bytes (no decoding).

The folder ``<data-dir>/cifar10-jpeg/{train,test}/<class>/NNNN.jpg`` holds 5,000 train and
1,000 test images per class; file k of a class is the k-th image of that class in the
official order. The archive stores, for each split, every file's bytes back to back
(``<split>_jpeg``, uint8), where each file starts (``<split>_offsets``, int64, N + 1 entries,
so file i is ``jpeg[offsets[i]:offsets[i + 1]]``) and its label (``<split>_labels``, int64),
plus the class names (``classes``). Order: class by class (labels 0..9), files by name.

Usage:
    python scripts/pack_cifar10.py OUT.npz [--data-dir ../shared/data]

The data dir defaults to ``$DUALPRUNE_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from dualprune.data.registry import CIFAR10_CLASSES, CIFAR10_JPEG

CLASSES = CIFAR10_CLASSES
SPLITS = ("train", "test")
PER_CLASS = {"train": 5000, "test": 1000}
FOLDER = CIFAR10_JPEG


def folder_files(root: Path, split: str) -> list[tuple[Path, int]]:
    """List the JPEG files of one split as ``(path, label)`` in packing order.

    Args:
        root: The ``cifar10-jpeg`` folder.
        split: ``"train"`` or ``"test"``.

    Returns:
        Files class by class (label order), sorted by file name within a class.

    Raises:
        SystemExit: A class folder is missing or holds an unexpected number of images.
    """
    out: list[tuple[Path, int]] = []
    for label, cls in enumerate(CLASSES):
        folder = root / split / cls
        if not folder.is_dir():
            raise SystemExit(f"missing folder {folder}")
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if len(names) != PER_CLASS[split]:
            raise SystemExit(f"{folder} holds {len(names)} images, expected {PER_CLASS[split]}")
        out.extend((folder / name, label) for name in names)
    return out


def pack_split(files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the files' bytes and concatenate them.

    Args:
        files: ``(path, label)`` pairs, in order.

    Returns:
        ``(jpeg uint8 (total,), offsets int64 (N + 1,), labels int64 (N,))``.
    """
    blobs = [path.read_bytes() for path, _ in files]
    sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    jpeg = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    labels = np.fromiter((y for _, y in files), dtype=np.int64, count=len(files))
    return jpeg, offsets, labels


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` atomically (temp file in the same folder + rename).

    Args:
        path: Destination file.
        arrays: Name -> array.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, pack both splits and write the archive.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .npz file to write")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DUALPRUNE_DATA") or "../shared/data"),
        help="folder holding cifar10-jpeg/ (default: $DUALPRUNE_DATA or ../shared/data)",
    )
    args = parser.parse_args(argv)
    root = args.data_dir.expanduser() / FOLDER
    arrays: dict[str, np.ndarray] = {"classes": np.array(CLASSES)}
    for split in SPLITS:
        jpeg, offsets, labels = pack_split(folder_files(root, split))
        arrays[f"{split}_jpeg"] = jpeg
        arrays[f"{split}_offsets"] = offsets
        arrays[f"{split}_labels"] = labels
        print(f"{split}: {len(labels)} images, {jpeg.size:,} bytes", flush=True)
    write_npz(args.out, arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
