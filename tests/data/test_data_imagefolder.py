"""Image folders: layout, labels, pixels, statistics, the decoded cache and its invalidation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualprune import data
from dualprune.data import imagefolder
from dualprune.errors import DataError


def no_decoding(*args, **kwargs):
    raise AssertionError("the images were decoded although the cache is valid")


def test_labels_pixels_and_stats(image_folder, helpers) -> None:
    root = image_folder()
    ds = data.load(f"imagefolder:{root}")
    assert ds.classes == ["ant", "moth", "zebra"]  # alphabetical
    assert ds.train_x.shape == (9, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (6, 3, 32, 32)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.augment and ds.name == f"imagefolder:{root}" and ds.source == str(root)
    expected = helpers.pixels("train", "moth", 1, (32, 32), "RGB")  # 5th train image
    np.testing.assert_array_equal(ds.train_x[4].permute(1, 2, 0).numpy(), expected)
    train = ds.train_x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, train.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(ds.std, train.std(axis=(0, 2, 3)), atol=1e-12)


def test_second_load_uses_cache(image_folder, monkeypatch, tmp_path: Path) -> None:
    root = image_folder()
    first = data.load(f"imagefolder:{root}")
    assert len(list((tmp_path / "cache" / "imagefolder").glob("*.pt"))) == 1
    monkeypatch.setattr(imagefolder, "_decode_files", no_decoding)
    second = data.load(f"imagefolder:{root}")
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert first.mean == second.mean and first.classes == second.classes


def test_added_file_rebuilds_cache(image_folder, monkeypatch, tmp_path: Path) -> None:
    root = image_folder()
    data.load(f"imagefolder:{root}")
    Image.new("RGB", (32, 32), (255, 0, 0)).save(root / "train" / "ant" / "extra.png")
    calls = []
    real = imagefolder._decode_files
    monkeypatch.setattr(imagefolder, "_decode_files", lambda *a: calls.append(1) or real(*a))
    ds = data.load(f"imagefolder:{root}")
    assert calls and ds.train_x.shape[0] == 10
    assert ds.train_x[3, 0].eq(255).all() and ds.train_y[3] == 0  # extra.png sorts last in ant
    caches = list((tmp_path / "cache" / "imagefolder").glob("*.pt"))
    assert len(caches) == 1  # the stale cache was removed


def test_touched_file_rebuilds_cache(image_folder, monkeypatch) -> None:
    root = image_folder()
    data.load(f"imagefolder:{root}")
    target = root / "test" / "moth" / "0000.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(target)
    os.utime(target, ns=(1, 1))  # new mtime even on coarse file systems
    ds = data.load(f"imagefolder:{root}")
    assert ds.test_x[2, :, 0, 0].tolist() == [1, 2, 3]


def test_corrupt_cache_is_rebuilt(image_folder, tmp_path: Path) -> None:
    root = image_folder()
    first = data.load(f"imagefolder:{root}")
    (cache,) = (tmp_path / "cache" / "imagefolder").glob("*.pt")
    cache.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="is unusable .*rebuilding it"):
        second = data.load(f"imagefolder:{root}")
    assert torch.equal(first.train_x, second.train_x)
    assert torch.load(cache, weights_only=True)["version"] == imagefolder.CACHE_VERSION


def test_unwritable_cache_warns(image_folder, monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    monkeypatch.setenv("DUALPRUNE_CACHE", str(tmp_path / "blocker" / "cache"))
    with pytest.warns(UserWarning, match="cannot write image folder cache .*DUALPRUNE_CACHE"):
        ds = data.load(f"imagefolder:{image_folder()}")
    assert ds.train_x.shape[0] == 9


def test_grayscale_and_other_size(image_folder) -> None:
    ds = data.load(f"imagefolder:{image_folder(size=(20, 24), mode='L')}")
    assert ds.train_x.shape == (9, 1, 20, 24) and ds.image_size == (20, 24)
    assert ds.in_channels == 1 and len(ds.mean) == 1
    assert not ds.augment  # crop + flip only for 32x32 images


def test_mixed_gray_and_rgb_become_rgb(image_folder) -> None:
    root = image_folder()
    Image.new("L", (32, 32), 77).save(root / "train" / "ant" / "gray.png")
    ds = data.load(f"imagefolder:{root}")
    assert ds.in_channels == 3 and ds.train_x[3].eq(77).all()


def test_relative_path_under_root(image_folder, tmp_path: Path) -> None:
    image_folder(name="mine")
    ds = data.load("imagefolder:mine", root=tmp_path)
    assert ds.source == str(tmp_path / "mine")


def test_missing_folder() -> None:
    with pytest.raises(
        DataError, match=r"image folder .*nowhere does not exist; expected .*/train/"
    ):
        data.load("imagefolder:/nowhere")


def test_missing_split(image_folder) -> None:
    root = image_folder()
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    for d in sorted((root / "test").iterdir()):
        d.rmdir()
    (root / "test").rmdir()
    with pytest.raises(DataError) as e:
        data.load(f"imagefolder:{root}")
    assert "has no 'test' split" in str(e.value) and f"{root}/test/<class>/" in str(e.value)


def test_empty_split(image_folder) -> None:
    root = image_folder(n_test=0)
    with pytest.raises(DataError, match=r"test holds no images"):
        data.load(f"imagefolder:{root}")


def test_test_class_missing_from_train(image_folder) -> None:
    root = image_folder()
    (root / "test" / "wasp").mkdir()
    with pytest.raises(DataError, match="class 'wasp' is in test/ but not in train/"):
        data.load(f"imagefolder:{root}")


def test_sizes_differ(image_folder) -> None:
    root = image_folder()
    Image.new("RGB", (30, 32)).save(root / "train" / "moth" / "odd.png")
    with pytest.raises(DataError, match=r"train/moth/odd.png is 30x32 pixels .*resize them"):
        data.load(f"imagefolder:{root}")


def test_undecodable_image(image_folder) -> None:
    root = image_folder()
    (root / "train" / "ant" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.jpg"):
        data.load(f"imagefolder:{root}")


def test_empty_imagefolder_name() -> None:
    with pytest.raises(DataError, match="names no folder"):
        data.load("imagefolder:")


def test_cifar10_falls_back_to_jpeg_folder(image_folder, tmp_path: Path) -> None:
    classes = tuple(sorted(data.registry.CIFAR10_CLASSES))
    image_folder(name="cifar10-jpeg", classes=classes, n_train=1, n_test=1)
    ds = data.load("cifar10", tmp_path, download=False)
    assert ds.name == "cifar10" and ds.classes == list(data.registry.CIFAR10_CLASSES)
    assert ds.mean == data.STATS["cifar10"][0] and ds.augment
    assert ds.train_y.tolist() == list(range(10))


def test_cifar10_jpeg_wrong_classes(image_folder, tmp_path: Path) -> None:
    image_folder(name="cifar10-jpeg", n_train=1, n_test=1)
    with pytest.raises(DataError, match="expected the CIFAR-10 classes"):
        data.load("cifar10", tmp_path, download=False)


@pytest.mark.slow
def test_real_cifar10_jpeg(shared_root: Path, default_cache: Path, monkeypatch) -> None:
    # The decoded cache is kept in the user's cache folder so it is built once, not per run.
    monkeypatch.setenv("DUALPRUNE_CACHE", str(default_cache))
    if not (shared_root / "cifar10-jpeg").is_dir():
        pytest.skip("no cifar10-jpeg folder in the real data root")
    ds = data.load("cifar10", shared_root, download=False)
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [5000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    mean, std = data.channel_stats(ds.train_x)
    np.testing.assert_allclose(mean, ds.mean, atol=2e-4)  # lossy JPEG copy: std is lower
    np.testing.assert_allclose(std, (0.2452, 0.2428, 0.2606), atol=2e-4)


def test_relative_path_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder 'absent' is neither in .* nor in the data"):
        data.load("imagefolder:absent", root=tmp_path)
