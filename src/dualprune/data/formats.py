"""Readers for the official file formats: IDX (MNIST, Fashion-MNIST) and CIFAR pickles.

Both return numpy arrays; the caller turns them into tensors. Damaged files raise
:class:`~dualprune.errors.DataError` naming the file and suggesting to delete it, so the
next run downloads it again.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from dualprune.errors import DataError

__all__ = ["read_cifar_batch", "read_cifar_meta", "read_idx"]

#: IDX type codes (third byte of the magic number) and their big-endian numpy dtypes.
IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"{path} is damaged ({why}); delete it so it is downloaded again")


def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping it when it starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(path, str(exc)) from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array.

    The format: two zero bytes, a type code (0x08 = uint8 ... 0x0E = float64), the number
    of dimensions d, then d big-endian uint32 sizes and the values in C order, big-endian.

    Args:
        path: An ``*-idx?-ubyte`` file, plain or ``.gz``.

    Returns:
        An array of the stored shape, in native byte order (uint8 for MNIST files).

    Raises:
        DataError: The file is not gzip/IDX or its size disagrees with its header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise _corrupt(path, "no IDX magic number")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise _corrupt(path, f"unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, "header cut short")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise _corrupt(
            path, f"header says {'x'.join(map(str, shape))} values, {len(raw) - header} bytes"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)


def _unpickle(path: Path) -> dict[Any, Any]:
    # The CIFAR files are the official python pickles (trusted input, written by Python 2;
    # "bytes" keeps their str keys and values as bytes).
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise _corrupt(path, f"not a CIFAR pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise _corrupt(path, f"holds a {type(obj).__name__}, not a dict")
    return obj


def _field(obj: dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise _corrupt(path, f"no '{key}' entry")


def read_cifar_batch(path: str | Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch pickle (``data_batch_1``, ``test_batch``, ``train`` ...).

    Args:
        path: The pickle file.
        label_key: ``"labels"`` for CIFAR-10, ``"fine_labels"`` for CIFAR-100.

    Returns:
        ``(x, y)``: x uint8 of shape (N, 3, 32, 32), y int64 of shape (N,).

    Raises:
        DataError: The file is not a CIFAR batch.
    """
    path = Path(path)
    obj = _unpickle(path)
    data = np.asarray(_field(obj, "data", path))
    labels = np.asarray(_field(obj, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(path, f"'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise _corrupt(path, f"{labels.size} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), labels  # rows are R plane, G plane, B plane


def read_cifar_meta(path: str | Path, names_key: str = "label_names") -> list[str]:
    """Read the class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100).

    Args:
        path: The meta pickle.
        names_key: ``"label_names"`` for CIFAR-10, ``"fine_label_names"`` for CIFAR-100.

    Returns:
        The class names in label order.

    Raises:
        DataError: The file is not a CIFAR meta pickle.
    """
    path = Path(path)
    names = _field(_unpickle(path), names_key, path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
