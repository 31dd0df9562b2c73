"""Fixtures for the data tests: isolated environment, synthetic files, the real data root."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import urllib.error
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualprune.data import sources

#: Real data (MNIST/raw, FashionMNIST/raw, cifar10-jpeg); tests needing it skip without it.
SHARED_DATA = Path(os.environ.get("DUALPRUNE_TEST_DATA", "/work/shared/data"))
#: The cache folder in effect before the tests isolate theirs (reused by the slow test).
DEFAULT_CACHE = sources.cache_dir()

IDX_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Private cache and data roots, and no network: only file:// URLs can be opened.

    Returns the list of URLs opened, for tests that check the network was not used.
    """
    monkeypatch.setenv("DUALPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DUALPRUNE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    opened: list[str] = []
    real = sources._urlopen

    def file_only(url: str, timeout: float):
        opened.append(url)
        if not url.startswith("file:"):
            raise urllib.error.URLError("network disabled in tests")
        return real(url, timeout)

    monkeypatch.setattr(sources, "_urlopen", file_only)
    return opened


@pytest.fixture
def default_cache() -> Path:
    """The cache folder the user would get, ignoring the per-test isolation."""
    return DEFAULT_CACHE


@pytest.fixture
def shared_root() -> Path:
    """The real data root; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> Path:
    """Write ``arr`` as an IDX file (gzipped when ``compress``)."""
    header = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + struct.pack(
        f">{arr.ndim}I", *arr.shape
    )
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.fixture
def mnist_root(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a root holding small synthetic IDX files in ``<root>/<folder>``."""

    def make(
        folder: str = "MNIST/raw",
        n_train: int = 20,
        n_test: int = 10,
        compress: bool = True,
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        root = tmp_path / "root"
        raw = root / folder
        for part, n in (("train", n_train), ("t10k", n_test)):
            images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            labels = (np.arange(n) % 10).astype(np.uint8)
            suffix = ".gz" if compress else ""
            write_idx(raw / f"{part}-images-idx3-ubyte{suffix}", images, compress)
            write_idx(raw / f"{part}-labels-idx1-ubyte{suffix}", labels, compress)
        return root

    return make


def cifar_batch(n: int, fine: bool, seed: int) -> dict[bytes, object]:
    """A batch dict shaped like the official CIFAR pickles (bytes keys)."""
    rng = np.random.default_rng(seed)
    batch: dict[bytes, object] = {
        b"batch_label": b"synthetic batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if fine:
        batch[b"fine_labels"] = [i % 100 for i in range(n)]
        batch[b"coarse_labels"] = [i % 20 for i in range(n)]
    else:
        batch[b"labels"] = [i % 10 for i in range(n)]
    return batch


def dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Callable[[str], Path]:
    """Factory: a root with small synthetic official-format pickles for cifar10/cifar100."""

    def make(name: str) -> Path:
        root = tmp_path / "root"
        if name == "cifar10":
            folder = root / "cifar-10-batches-py"
            for i in range(1, 6):
                dump(folder / f"data_batch_{i}", cifar_batch(4, False, seed=i))
            dump(folder / "test_batch", cifar_batch(6, False, seed=9))
            names = [
                c.encode()
                for c in (
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
            ]
            dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
        else:
            folder = root / "cifar-100-python"
            dump(folder / "train", cifar_batch(12, True, seed=1))
            dump(folder / "test", cifar_batch(5, True, seed=2))
            dump(
                folder / "meta",
                {
                    b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                    b"coarse_label_names": [b"x"] * 20,
                },
            )
        return root

    return make


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: writes PNGs into ``<tmp>/<name>/{train,test}/<class>/`` with known pixels.

    Pixel values are deterministic: see :func:`pixels`.
    """

    def make(
        name: str = "folder",
        classes: tuple[str, ...] = ("zebra", "ant", "moth"),
        n_train: int = 3,
        n_test: int = 2,
        size: tuple[int, int] = (32, 32),
        mode: str = "RGB",
    ) -> Path:
        root = tmp_path / name
        for split, n in (("train", n_train), ("test", n_test)):
            for cls in classes:
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    arr = pixels(split, cls, i, size, mode)
                    Image.fromarray(arr).save(root / split / cls / f"{i:04d}.png")
        return root

    return make


def pixels(split: str, cls: str, i: int, size: tuple[int, int], mode: str) -> np.ndarray:
    """The image written for ``split/cls/i``: (H, W, 3) for RGB, (H, W) for L."""
    seed = zlib.crc32(f"{split}/{cls}/{i}".encode())
    h, w = size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def helpers() -> object:
    """The module's helper functions (write_idx, cifar_batch, dump, pixels) for tests."""

    class Helpers:
        write_idx = staticmethod(write_idx)
        cifar_batch = staticmethod(cifar_batch)
        dump = staticmethod(dump)
        pixels = staticmethod(pixels)

    return Helpers
