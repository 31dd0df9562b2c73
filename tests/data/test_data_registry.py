"""Names, aliases, loading the built-in sets (synthetic and real files) and loaders()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dualprune import data
from dualprune.errors import DataError, UnknownNameError


def test_names() -> None:
    assert data.names() == ["cifar10", "cifar100", "fashion_mnist", "mnist"]


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("mnist", "mnist"),
        ("MNIST", "mnist"),
        ("fashion-mnist", "fashion_mnist"),
        (" Fashion_MNIST ", "fashion_mnist"),
        ("imagefolder:/a/B", "imagefolder:/a/B"),
    ],
)
def test_canonical_names(given: str, canonical: str) -> None:
    assert data.canonical_name(given) == canonical


def test_unknown_name() -> None:
    with pytest.raises(UnknownNameError) as e:
        data.load("mnsit")
    msg = str(e.value)
    assert msg.startswith("unknown data set 'mnsit' (did you mean 'mnist'?)")
    assert "cifar10, cifar100" in msg and "imagefolder:PATH" in msg and "\n" not in msg


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_synthetic_idx(mnist_root, compress: bool) -> None:
    ds = data.load("mnist", mnist_root(compress=compress), download=False)
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.train_y.tolist() == [i % 10 for i in range(20)]
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 1, (28, 28))
    assert ds.mean == (0.1307,) and not ds.augment
    assert repr(ds) == "Dataset('mnist', train=20, test=10, 1x28x28, 10 classes, augment=False)"


def test_fashion_alias_reads_its_own_folder(mnist_root) -> None:
    root = mnist_root(folder="FashionMNIST/raw", n_train=12)
    ds = data.load("fashion-mnist", root, download=False)
    assert ds.name == "fashion_mnist" and ds.train_x.shape[0] == 12
    assert ds.classes[0] == "T-shirt/top" and ds.mean == (0.2860,)


def test_root_from_environment(mnist_root, monkeypatch) -> None:
    monkeypatch.setenv("DUALPRUNE_DATA", str(mnist_root()))
    assert data.load("mnist", download=False).train_x.shape[0] == 20


def test_mismatched_idx_counts(mnist_root, helpers) -> None:
    root = mnist_root()
    helpers.write_idx(root / "MNIST/raw/t10k-labels-idx1-ubyte.gz", torch.zeros(3).byte().numpy())
    with pytest.raises(DataError, match="do not match; delete the files"):
        data.load("mnist", root, download=False)


def test_cifar10_pickles(cifar_root) -> None:
    ds = data.load("cifar10", cifar_root("cifar10"), download=False)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (6, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.num_classes == 10 and ds.augment
    assert ds.std == (0.2470, 0.2435, 0.2616)


def test_cifar100_pickles(cifar_root) -> None:
    ds = data.load("cifar100", cifar_root("cifar100"), download=False)
    assert ds.train_x.shape == (12, 3, 32, 32) and ds.test_y.tolist() == [0, 1, 2, 3, 4]
    assert ds.num_classes == 100 and ds.mean == (0.5071, 0.4865, 0.4409)


def test_loaders_api(cifar_root) -> None:
    train, test, ds = data.loaders(
        "cifar10", 8, root=cifar_root("cifar10"), download=False, eval_batch_size=4, seed=7
    )
    assert train.shuffle and train.augment and train.seed == 7 and train.batch_size == 8
    assert not test.shuffle and not test.augment and test.batch_size == 4
    assert torch.cat([y for _, y in test]).tolist() == ds.test_y.tolist()
    train2, _, _ = data.loaders(
        "cifar10", 8, root=cifar_root("cifar10"), download=False, augment=False
    )
    assert not train2.augment


def test_real_mnist(shared_root: Path) -> None:
    ds = data.load("mnist", shared_root, download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.min() == 0 and ds.train_y.max() == 9
    assert torch.bincount(ds.test_y).tolist()[:3] == [980, 1135, 1032]
    assert abs(ds.train_x.float().mean().item() / 255 - 0.1307) < 1e-4


def test_real_fashion_mnist_loaders(shared_root: Path) -> None:
    train, test, ds = data.loaders("fashion_mnist", 256, root=shared_root, download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert not train.augment and len(train) == 235 and len(test) == 40
    xb, yb = next(iter(test))
    assert xb.shape == (256, 1, 28, 28) and torch.equal(yb, ds.test_y[:256])
    assert abs(xb.mean().item()) < 0.2  # roughly centred by the standard constants
