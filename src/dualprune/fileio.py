"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``.

Every file dualprune writes that a later run reads back (checkpoints, masks,
exports) goes through :func:`write_atomic`, so an interrupted write never leaves
a truncated file under the real name (docs/design.md, "Conventions").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
