"""Root resolution, download with md5 checks (file:// mirrors), and missing-file errors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dualprune import data
from dualprune.data import sources
from dualprune.errors import DataError

FILES = sources.SOURCES["mnist"].needed


def test_resolve_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data.resolve_root() == tmp_path / "xdg" / "dualprune" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_root() == tmp_path / "home" / ".cache" / "dualprune" / "data"
    monkeypatch.setenv("DUALPRUNE_DATA", str(tmp_path / "env"))
    assert data.resolve_root() == tmp_path / "env"
    assert data.resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("DUALPRUNE_CACHE")
    assert data.cache_dir() == tmp_path / "xdg" / "dualprune"


def serve_mnist(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Small fake MNIST files in a folder (the 'server'); returns it and their md5s."""
    server = tmp_path / "server"
    server.mkdir()
    rng = np.random.default_rng(0)
    md5 = {}
    for name in FILES:
        n = 8 if name.startswith("train") else 4
        if "images" in name:
            arr = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            header = b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        else:
            arr = np.arange(n, dtype=np.uint8)
            header = b"\x00\x00\x08\x01" + n.to_bytes(4, "big")
        blob = gzip.compress(header + arr.tobytes())
        (server / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    return server, md5


def patch_source(
    monkeypatch: pytest.MonkeyPatch, name: str, mirrors: tuple[str, ...], md5: dict[str, str]
) -> None:
    source = sources.SOURCES[name]
    remotes = tuple(sources.Remote(r.filename, md5[r.filename]) for r in source.remotes)
    new = dataclasses.replace(source, mirrors=mirrors, remotes=remotes)
    monkeypatch.setitem(sources.SOURCES, name, new)


def test_download_from_second_mirror(monkeypatch, tmp_path: Path, isolated) -> None:
    server, md5 = serve_mnist(tmp_path)
    dead = "https://unreachable.invalid/mnist/"
    patch_source(monkeypatch, "mnist", (dead, server.as_uri() + "/"), md5)
    root = tmp_path / "root"
    ds = data.load("mnist", root)
    assert ds.train_x.shape == (8, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)  # no temporary files left
    assert all(sources.file_md5(raw / f) == md5[f] for f in FILES)
    assert any(url.startswith(dead) for url in isolated)
    # a second load finds the files and opens nothing
    isolated.clear()
    data.load("mnist", root)
    assert isolated == []


def test_download_checksum_mismatch(monkeypatch, tmp_path: Path) -> None:
    server, md5 = serve_mnist(tmp_path)
    md5["t10k-labels-idx1-ubyte.gz"] = "0" * 32
    patch_source(monkeypatch, "mnist", (server.as_uri() + "/",), md5)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="checksum mismatch for t10k-labels-idx1-ubyte.gz") as e:
        data.load("mnist", root)
    assert "\n" not in str(e.value) and "expected 00000000" in str(e.value)
    raw = root / "MNIST" / "raw"
    assert not (raw / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]  # temp file deleted


def test_offline_without_files(tmp_path: Path, isolated) -> None:
    root = tmp_path / "root"
    with pytest.raises(DataError) as e:
        data.load("mnist", root)
    msg = str(e.value)
    assert "\n" not in msg
    assert "could not download train-images-idx3-ubyte.gz" in msg
    assert "ossci-datasets" in msg and "yann.lecun.com" in msg
    assert str(root / "MNIST" / "raw") in msg and "DUALPRUNE_DATA" in msg
    assert not root.exists()  # the folders made for the download were removed again


def test_download_false_never_opens_network(tmp_path: Path, isolated) -> None:
    root = tmp_path / "root"
    with pytest.raises(DataError) as e:
        data.load("fashion-mnist", root, download=False)
    msg = str(e.value)
    for name in FILES:
        assert name in msg
    assert str(root / "FashionMNIST" / "raw") in msg
    assert "--data-dir" in msg and "DUALPRUNE_DATA" in msg and "\n" not in msg
    assert isolated == []
    assert not root.exists()  # nothing created either


def test_offline_environment_variable(tmp_path: Path, isolated, monkeypatch) -> None:
    monkeypatch.setenv("DUALPRUNE_OFFLINE", "1")
    with pytest.raises(DataError, match="downloading is off"):
        data.load("mnist", tmp_path / "root")
    assert isolated == []  # not even tried


def test_only_missing_files_listed(mnist_root, tmp_path: Path) -> None:
    root = mnist_root()
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\.gz in "):
        data.load("mnist", root, download=False)


def test_unwritable_root(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="is not writable .*cannot be downloaded"):
        data.load("mnist", blocker / "root")


def cifar_tarball(tmp_path: Path, helpers, evil: bool = False) -> Path:
    """A small cifar-10-python.tar.gz with the official member names."""
    buf = io.BytesIO()
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    members = {f"data_batch_{i}": helpers.cifar_batch(2, False, i) for i in range(1, 6)}
    members |= {"test_batch": helpers.cifar_batch(3, False, 7), "batches.meta": meta}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in members.items():
            helpers.dump(tmp_path / "staging" / name, obj)
            tar.add(tmp_path / "staging" / name, arcname=f"cifar-10-batches-py/{name}")
        if evil:
            tar.add(tmp_path / "staging" / "test_batch", arcname="../escaped")
            tar.add(tmp_path / "staging" / "test_batch", arcname="other/elsewhere")
    server = tmp_path / "server"
    server.mkdir(exist_ok=True)
    path = server / "cifar-10-python.tar.gz"
    path.write_bytes(buf.getvalue())
    return path


def test_cifar_archive_download(monkeypatch, tmp_path: Path, helpers) -> None:
    tarball = cifar_tarball(tmp_path, helpers, evil=True)
    md5 = {tarball.name: sources.file_md5(tarball)}
    patch_source(monkeypatch, "cifar10", (tarball.parent.as_uri() + "/",), md5)
    root = tmp_path / "root"
    ds = data.load("cifar10", root)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.classes[3] == "class3"
    assert (root / "cifar-10-python.tar.gz").is_file()
    assert not (tmp_path / "escaped").exists() and not (root / "other").exists()


def test_cifar_archive_mismatch(monkeypatch, tmp_path: Path, helpers) -> None:
    tarball = cifar_tarball(tmp_path, helpers)
    patch_source(monkeypatch, "cifar10", (tarball.parent.as_uri() + "/",), {tarball.name: "f" * 32})
    root = tmp_path / "root"
    with pytest.raises(DataError, match="checksum mismatch for cifar-10-python.tar.gz"):
        data.load("cifar10", root)
    assert not (root / "cifar-10-python.tar.gz").exists()
    assert not (root / "cifar-10-batches-py").exists()


def test_cifar100_missing_offline(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        data.load("cifar100", tmp_path / "root", download=False)
    msg = str(e.value)
    assert "missing train, test, meta in" in msg and "cifar-100-python" in msg


def test_local_archive_unpacked_offline(tmp_path: Path, helpers, monkeypatch, isolated) -> None:
    tarball = cifar_tarball(tmp_path, helpers)
    patch_source(
        monkeypatch,
        "cifar10",
        ("https://unreachable.invalid/",),
        {tarball.name: sources.file_md5(tarball)},
    )
    root = tmp_path / "root"
    root.mkdir()
    (root / tarball.name).write_bytes(tarball.read_bytes())
    ds = data.load("cifar10", root, download=False)
    assert ds.train_x.shape == (10, 3, 32, 32) and isolated == []
    (root / tarball.name).write_bytes(b"damaged")
    for f in (root / "cifar-10-batches-py").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="fails its md5 check .*downloading is off"):
        data.load("cifar10", root, download=False)


def test_cifar10_message_mentions_jpeg_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        data.load("cifar10", tmp_path / "root", download=False)
    msg = str(e.value)
    assert "data_batch_1, data_batch_2" in msg and "batches.meta in " in msg
    assert "cifar10-jpeg/train/<class>/*.jpg" in msg and "\n" not in msg
