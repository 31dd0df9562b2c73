"""IDX and CIFAR pickle readers on small synthetic files in the official formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from dualprune.data import read_cifar_batch, read_cifar_meta, read_idx
from dualprune.errors import DataError


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path: Path, helpers, dtype: str, compress: bool) -> None:
    arr = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    path = helpers.write_idx(tmp_path / "x-idx3-ubyte.gz", arr, compress)
    got = read_idx(path)
    assert got.shape == (2, 3, 4)
    assert got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, arr)
    assert got.flags.writeable


def test_idx_labels_1d(tmp_path: Path, helpers) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    got = read_idx(helpers.write_idx(tmp_path / "l-idx1-ubyte.gz", labels))
    assert got.shape == (5,)
    np.testing.assert_array_equal(got, labels)


def test_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x01\x02\x08\x01\x00\x00\x00\x01\x07"))
    with pytest.raises(DataError, match=r"bad\.gz is damaged \(no IDX magic number\)"):
        read_idx(path)


def test_idx_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "code.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x07\x01\x00\x00\x00\x01\x07"))
    with pytest.raises(DataError, match="unknown IDX type code 0x07"):
        read_idx(path)


def test_idx_truncated_payload(tmp_path: Path, helpers) -> None:
    path = helpers.write_idx(tmp_path / "t.gz", np.zeros((4, 5), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match="header says 4x5 values, 17 bytes"):
        read_idx(path)


def test_idx_broken_gzip(tmp_path: Path, helpers) -> None:
    path = helpers.write_idx(tmp_path / "g.gz", np.zeros((40, 50), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"g\.gz is damaged .*delete it"):
        read_idx(path)


def test_cifar10_batch_and_meta(tmp_path: Path, helpers) -> None:
    batch = helpers.cifar_batch(5, fine=False, seed=0)
    helpers.dump(tmp_path / "data_batch_1", batch)
    x, y = read_cifar_batch(tmp_path / "data_batch_1")
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 2, 3, 4]
    # a row of the official layout is 1024 red, then 1024 green, then 1024 blue values
    np.testing.assert_array_equal(x[2, 1].reshape(-1), batch[b"data"][2, 1024:2048])
    helpers.dump(tmp_path / "batches.meta", {b"label_names": [b"cat", b"dog"]})
    assert read_cifar_meta(tmp_path / "batches.meta") == ["cat", "dog"]


def test_cifar100_fine_labels(tmp_path: Path, helpers) -> None:
    helpers.dump(tmp_path / "train", helpers.cifar_batch(7, fine=True, seed=1))
    x, y = read_cifar_batch(tmp_path / "train", "fine_labels")
    assert x.shape == (7, 3, 32, 32)
    assert y.tolist() == list(range(7))
    helpers.dump(tmp_path / "meta", {b"fine_label_names": [b"apple"], b"coarse_label_names": []})
    assert read_cifar_meta(tmp_path / "meta", "fine_label_names") == ["apple"]


def test_cifar_missing_key(tmp_path: Path, helpers) -> None:
    helpers.dump(tmp_path / "b", helpers.cifar_batch(3, fine=True, seed=1))
    with pytest.raises(DataError, match=r"b is damaged \(no 'labels' entry\)"):
        read_cifar_batch(tmp_path / "b")


def test_cifar_wrong_shape(tmp_path: Path, helpers) -> None:
    batch = helpers.cifar_batch(3, fine=False, seed=1)
    batch[b"data"] = batch[b"data"][:, :100]
    helpers.dump(tmp_path / "b", batch)
    with pytest.raises(DataError, match=r"expected uint8 \(N, 3072\)"):
        read_cifar_batch(tmp_path / "b")


def test_cifar_not_a_pickle(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="junk is damaged .*not a CIFAR pickle"):
        read_cifar_batch(tmp_path / "junk")
