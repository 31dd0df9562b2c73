"""Where data set files live, and how missing ones are downloaded.

The data root holds the files in torchvision's layout::

    <root>/MNIST/raw/train-images-idx3-ubyte.gz ...
    <root>/FashionMNIST/raw/train-images-idx3-ubyte.gz ...
    <root>/cifar-10-batches-py/data_batch_1 ... test_batch batches.meta
    <root>/cifar-100-python/train test meta

:func:`ensure_files` checks that a set's files are there and, when they are not and
downloading is allowed, fetches them from the official mirrors, verifies their md5 and
moves them into place atomically.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dualprune.errors import DataError

__all__ = [
    "SOURCES",
    "Remote",
    "Source",
    "cache_dir",
    "download_file",
    "ensure_files",
    "file_md5",
    "resolve_root",
]

#: Seconds to wait for a server before trying the next mirror.
TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_HINT = "or point --data-dir / DUALPRUNE_DATA at a folder that has them"


@dataclass(frozen=True)
class Remote:
    """One file on a download server: its name and its published md5."""

    filename: str
    md5: str


@dataclass(frozen=True)
class Source:
    """Where a data set's files sit under the root and where to download them.

    Attributes:
        folder: Folder under the root holding ``needed`` (``"MNIST/raw"``).
        needed: Files that must exist in ``folder`` for the set to load.
        mirrors: Base URLs tried in order; a remote's URL is ``mirror + filename``.
        remotes: Files to download. Plain files go into ``folder``; archives go into
            the root and are unpacked there.
        archive: Whether ``remotes`` are ``.tar.gz`` archives that create ``folder``.
    """

    folder: str
    needed: tuple[str, ...]
    mirrors: tuple[str, ...]
    remotes: tuple[Remote, ...]
    archive: bool = False


_IDX = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_MNIST_MD5 = (
    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "d53e105ee54ea40749a09fcbcd1e9432",
    "9fb629c4189551a2d022fa330f9573f3",
    "ec29112dd5afa0611ce80d1b7f02629c",
)
_FASHION_MD5 = (
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79",
    "bb300cfdad3c16e7a12a480ee83cd310",
)

#: Official files of every built-in set, keyed by canonical set name.
SOURCES: dict[str, Source] = {
    "mnist": Source(
        folder="MNIST/raw",
        needed=_IDX,
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        remotes=tuple(Remote(f, m) for f, m in zip(_IDX, _MNIST_MD5, strict=True)),
    ),
    "fashion_mnist": Source(
        folder="FashionMNIST/raw",
        needed=_IDX,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        remotes=tuple(Remote(f, m) for f, m in zip(_IDX, _FASHION_MD5, strict=True)),
    ),
    "cifar10": Source(
        folder="cifar-10-batches-py",
        needed=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        remotes=(Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        archive=True,
    ),
    "cifar100": Source(
        folder="cifar-100-python",
        needed=("train", "test", "meta"),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        remotes=(Remote("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        archive=True,
    ),
}


def _user_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def resolve_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``data_dir``, else ``$DUALPRUNE_DATA``, else a user cache folder.

    The fallback is ``$XDG_CACHE_HOME/dualprune/data`` or ``~/.cache/dualprune/data``.
    Nothing is created or checked here.

    Args:
        data_dir: An explicit root (the CLI's ``--data-dir``); ``None`` to use the defaults.

    Returns:
        The root as an absolute path (``~`` expanded).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser().absolute()
    env = os.environ.get("DUALPRUNE_DATA")
    if env:
        return Path(env).expanduser().absolute()
    return (_user_cache() / "dualprune" / "data").absolute()


def cache_dir() -> Path:
    """Return the folder for decoded caches: ``$DUALPRUNE_CACHE`` or the user cache folder.

    The fallback is ``$XDG_CACHE_HOME/dualprune`` or ``~/.cache/dualprune``; it is kept
    apart from the data root, which may be read-only.

    Returns:
        The cache folder as an absolute path (not created here).
    """
    env = os.environ.get("DUALPRUNE_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    return (_user_cache() / "dualprune").absolute()


def file_md5(path: Path) -> str:
    """Return the hex md5 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _urlopen(url: str, timeout: float) -> Any:
    return urllib.request.urlopen(url, timeout=timeout)


def download_file(url: str, dest: Path, md5: str, *, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` through a temporary file, checking its md5.

    The bytes go to a temporary file next to ``dest`` that is renamed onto ``dest`` only
    once the md5 matches, so an interrupted download never leaves a partial file.

    Args:
        url: The address (``https://``, ``http://`` or ``file://``).
        dest: The final path; its folder must exist.
        md5: The expected hex md5 digest.
        timeout: Seconds to wait for the server.

    Returns:
        ``dest``.

    Raises:
        DataError: The download's md5 differs from ``md5`` (the file is deleted).
        OSError: The server cannot be reached or the folder cannot be written
            (:func:`ensure_files` turns these into :class:`DataError`).
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, _urlopen(url, timeout) as response:
            total = response.headers.get("Content-Length")
            with tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                leave=False,
                disable=None,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = digest.hexdigest()
        if got != md5:
            raise DataError(
                f"checksum mismatch for {dest.name} downloaded from {url}: md5 {got}, "
                f"expected {md5}; the file was deleted, try again or place a good copy at {dest}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _present(folder: Path, filename: str) -> bool:
    """Whether ``filename`` (or, for ``x.gz``, its unpacked ``x``) is in ``folder``."""
    if (folder / filename).is_file():
        return True
    return filename.endswith(".gz") and (folder / filename[:-3]).is_file()


def _within(base: Path, member: tarfile.TarInfo) -> bool:
    target = (base / member.name).resolve()
    return target.is_relative_to(base.resolve()) and (member.isfile() or member.isdir())


def _unpack(archive: Path, root: Path, folder: str) -> None:
    """Unpack the members of ``archive`` under ``folder/`` into ``root``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [
                m for m in tar.getmembers() if m.name.split("/")[0] == folder and _within(root, m)
            ]
            # Members were checked above; the "data" filter (where Python has it) checks again.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:
                tar.extractall(root, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"cannot unpack {archive} ({exc}); delete it so it is downloaded again"
        ) from exc


def _fetch(name: str, remote: Remote, mirrors: tuple[str, ...], dest: Path, looked: str) -> None:
    errors = []
    for mirror in mirrors:
        url = mirror + remote.filename
        try:
            download_file(url, dest, remote.md5)
            return
        except DataError:
            raise
        except (OSError, HTTPException, ValueError) as exc:  # URLError, timeouts, bad URLs
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise DataError(
        f"{name}: could not download {remote.filename} ({'; '.join(errors)}); "
        f"looked for {looked}; copy the files there {_HINT}"
    )


def ensure_files(name: str, root: Path, *, download: bool = True, alternative: str = "") -> Path:
    """Make sure the files of built-in set ``name`` are under ``root``; return their folder.

    An official archive already in the root (``cifar-10-python.tar.gz`` ...) is checked
    and unpacked without any download.

    Args:
        name: A key of :data:`SOURCES` (``"mnist"``, ``"cifar10"`` ...).
        root: The data root (see :func:`resolve_root`).
        download: Fetch missing files from the official mirrors. ``False`` never
            touches the network; neither does a non-empty ``DUALPRUNE_OFFLINE``
            environment variable (other than ``0``).
        alternative: Text naming another accepted layout, added to error messages.

    Returns:
        The folder holding the set's files, ``root / SOURCES[name].folder``.

    Raises:
        DataError: Files are missing and cannot be downloaded (``download=False``,
            offline, unwritable root), or a download fails its md5 check.
    """
    source = SOURCES[name]
    download = download and os.environ.get("DUALPRUNE_OFFLINE", "") in ("", "0")
    folder = root / source.folder
    missing = [f for f in source.needed if not _present(folder, f)]
    if not missing:
        return folder
    looked = f"{', '.join(missing)} in {folder}{alternative}"
    local = source.archive and all((root / r.filename).is_file() for r in source.remotes)
    if not download and not local:
        raise DataError(
            f"{name}: missing {looked} (downloading is off); "
            f"copy the files there, allow downloading, {_HINT}"
        )
    target = root if source.archive else folder
    created = [p for p in (target, *target.parents) if not p.exists()]
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass  # can we write here?
    except OSError as exc:
        raise DataError(
            f"{name}: missing {looked}, and {target} is not writable ({exc.strerror}) so they "
            f"cannot be downloaded; copy the files there {_HINT}"
        ) from exc
    try:
        _download_missing(name, source, root, folder, download, looked)
    except BaseException:
        for path in created:  # deepest first: leave no empty folders behind
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
    still = [f for f in source.needed if not _present(folder, f)]
    if still:
        raise DataError(
            f"{name}: the download did not provide {', '.join(still)} in {folder}; "
            f"copy the files there {_HINT}"
        )
    return folder


def _download_missing(
    name: str, source: Source, root: Path, folder: Path, download: bool, looked: str
) -> None:
    target = root if source.archive else folder
    for remote in source.remotes:
        dest = target / remote.filename
        if not source.archive:
            if not _present(folder, remote.filename):
                _fetch(name, remote, source.mirrors, dest, looked)
            continue
        if not (dest.is_file() and file_md5(dest) == remote.md5):
            if not download:
                raise DataError(
                    f"{name}: {dest} fails its md5 check (expected {remote.md5}) and "
                    f"downloading is off; delete it and allow downloading, {_HINT}"
                )
            _fetch(name, remote, source.mirrors, dest, looked)
        _unpack(dest, root, source.folder)
