"""Atomic, safe checkpoints.

A checkpoint is a dict of tensors and plain values written with
``torch.save`` to a temporary file and renamed into place, so a crash never
leaves a half-written file behind. Loading uses ``weights_only=True``:
nothing in a checkpoint can execute code.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dualprune.errors import CheckpointError, ConfigError
from dualprune.fileio import write_atomic

__all__ = [
    "FORMAT",
    "atomic_save",
    "capture_rng",
    "ensure_writable",
    "load",
    "load_model_state",
    "restore_rng",
]

FORMAT = "dualprune.checkpoint/1"


def ensure_writable(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` if needed and check a file can be written in it.

    Raises:
        ConfigError: the directory cannot be created or written.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"cannot write to output directory '{path}': {reason}; pick another --out"
        ) from None
    return path


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a temporary file + ``os.replace``."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save` (``weights_only=True``).

    Raises:
        CheckpointError: missing, truncated, corrupt, or not a dualprune checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with warnings.catch_warnings():  # torch's remarks on a foreign pickle: the error says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:  # a pickle that names a function or class to call: code, not weights
            raise CheckpointError(
                f"'{path}' is not a safe checkpoint: loading it would call {found.group(1)}; "
                "refused, nothing in it was executed"
            ) from None
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt") from None
    except Exception as err:  # torch raises many types for corrupt zip/pickle data
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({first[:120]})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not a dualprune checkpoint (expected format '{FORMAT}')"
        )
    return obj


def load_model_state(
    model: nn.Module,
    ckpt: dict[str, Any],
    *,
    model_name: str,
    path: str | os.PathLike[str] = "checkpoint",
) -> None:
    """Load ``ckpt["model"]`` into ``model``, checking it was saved from ``model_name``.

    Raises:
        CheckpointError: the checkpoint belongs to another model or its tensors do not fit.
    """
    saved = ckpt.get("model_name")
    if saved != model_name:
        raise CheckpointError(
            f"checkpoint '{path}' was saved from model '{saved}', not '{model_name}'"
        )
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds no model weights (no 'model' tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(
        k
        for k in set(own) & set(state)
        if not isinstance(state[k], torch.Tensor) or own[k].shape != state[k].shape
    )
    if missing or extra or bad:
        what = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {extra[:3]}"
            if extra
            else f"'{bad[0]}' is not a tensor"
            if not isinstance(state[bad[0]], torch.Tensor)
            else f"shape of '{bad[0]}' is {tuple(state[bad[0]].shape)}, "
            f"model has {tuple(own[bad[0]].shape)}"
        )
        raise CheckpointError(f"checkpoint '{path}' does not fit model '{model_name}': {what}")
    model.load_state_dict(state)


def capture_rng() -> dict[str, Any]:
    """The global RNG states (torch CPU, Python), as tensors and plain values."""
    return {"torch": torch.get_rng_state(), "python": _py_state_to_list(random.getstate())}


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _py_state_to_list(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def check_resumable(ckpt: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse to resume a run whose fixed settings changed (all but ``epochs``)."""
    saved = dict(ckpt.get("config", {}))
    for key in sorted(set(saved) | set(config)):
        if key == "epochs":
            continue
        if saved.get(key) != config.get(key):
            raise CheckpointError(
                f"cannot resume '{path}': '{key}' was {saved.get(key)!r}, now "
                f"{config.get(key)!r}; use the original settings or another --out"
            )
