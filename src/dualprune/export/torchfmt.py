"""A (possibly compacted) zoo model as safetensors + the architecture to rebuild it, no pickle.

One ``.safetensors`` file (docs/export.md)::

    <key>      every state_dict entry, as it is
    metadata   {"format": FORMAT, "arch": JSON {"model": name, "kwargs": {...},
                                                "layers": {module: sizes}}}

Compaction only shrinks channel counts, so a compacted model is its zoo model
(``models.create(name, **kwargs)``) with some Conv1d/Conv2d/Linear/BatchNorm
layers narrower. ``layers`` records, for each layer whose size changed, the new
sizes: ``in``/``out``/``groups`` of a convolution, ``in``/``out`` of a Linear,
``num_features`` of a BatchNorm; kernel, stride, padding, dilation, bias, ε and
momentum are the zoo model's. :func:`load_torch` builds the zoo model, replaces
those layers by fresh ones of the recorded sizes and loads the state dict
strictly. :func:`save_torch` does the same rebuild first and refuses a model it
would not reproduce (another module, another option than the size).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from dualprune import models
from dualprune.errors import CheckpointError, ConfigError, DualpruneError
from dualprune.fileio import write_atomic

__all__ = ["FORMAT", "RESIZABLE", "changed_layers", "load_torch", "rebuild", "save_torch"]

#: ``format`` entry of the file's metadata.
FORMAT = "dualprune.torch/1"
#: Layers whose sizes may differ from the zoo model's.
RESIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def _sizes(m: nn.Module) -> dict[str, int]:
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
    if isinstance(m, nn.Linear):
        return {"in": m.in_features, "out": m.out_features}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"num_features": m.num_features}
    raise ConfigError(f"{type(m).__name__} is no resizable layer")


def _resized(ref: nn.Module, sizes: Mapping[str, Any]) -> nn.Module:
    """A fresh layer of ``ref``'s type and options with the sizes ``sizes``."""
    if isinstance(ref, (nn.Conv1d, nn.Conv2d)):
        return type(ref)(
            int(sizes["in"]),
            int(sizes["out"]),
            kernel_size=ref.kernel_size,  # type: ignore[arg-type]
            stride=ref.stride,  # type: ignore[arg-type]
            padding=ref.padding,  # type: ignore[arg-type]
            dilation=ref.dilation,  # type: ignore[arg-type]
            groups=int(sizes["groups"]),
            bias=ref.bias is not None,
            padding_mode=ref.padding_mode,
        )
    if isinstance(ref, nn.Linear):
        return nn.Linear(int(sizes["in"]), int(sizes["out"]), bias=ref.bias is not None)
    if isinstance(ref, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(ref)(
            int(sizes["num_features"]),
            eps=ref.eps,
            momentum=ref.momentum,
            affine=ref.affine,
            track_running_stats=ref.track_running_stats,
        )
    raise ConfigError(f"{type(ref).__name__} is no resizable layer")


def changed_layers(reference: nn.Module, model: nn.Module) -> dict[str, dict[str, int]]:
    """Module name → new sizes, for each resizable layer of ``model`` whose sizes differ.

    Raises:
        ConfigError: The two models do not have the same modules of the same types.
    """
    ref = dict(reference.named_modules())
    mine = dict(model.named_modules())
    extra = [n for n in mine if n not in ref] + [n for n in ref if n not in mine]
    if extra:
        raise ConfigError(
            f"{type(model).__name__} and its zoo model differ in module '{extra[0]}'; "
            "save_torch rebuilds zoo models whose Conv/Linear/BatchNorm layers changed size"
        )
    out: dict[str, dict[str, int]] = {}
    for name, m in mine.items():
        if type(m) is not type(ref[name]):
            raise ConfigError(
                f"module '{name}' is a {type(m).__name__}, the zoo model's a "
                f"{type(ref[name]).__name__}; save_torch cannot rebuild it"
            )
        if isinstance(m, RESIZABLE) and _sizes(m) != _sizes(ref[name]):
            out[name] = _sizes(m)
    return out


def rebuild(reference: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Replace, in place, each named layer of ``reference`` by a fresh one of the given sizes.

    Raises:
        ConfigError: A name that is no resizable layer of ``reference``.
    """
    for name, sizes in layers.items():
        try:
            old = reference.get_submodule(name)
        except AttributeError:
            old = None
        if not name or not isinstance(old, RESIZABLE) or not isinstance(sizes, Mapping):
            raise ConfigError(f"'{name}' is no resizable layer of {type(reference).__name__}")
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent), child, _resized(old, sizes))
    return reference


def _arch(arch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if not isinstance(arch, Mapping) or not isinstance(arch.get("model"), str):
        raise ConfigError(
            f"arch must be a dict with the zoo model name and its options, e.g. "
            f"{{'model': 'resnet20', 'num_classes': 10}}; got {arch!r}"
        )
    kwargs = {k: v for k, v in arch.items() if k != "model"}
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError):
        raise ConfigError(f"arch options {kwargs!r} must be plain JSON values") from None
    return str(arch["model"]), kwargs


def _check_same(rebuilt: nn.Module, model: nn.Module) -> None:
    """Every module prints the same options and every state entry has the same shape."""
    built = dict(rebuilt.named_modules())
    for name, m in model.named_modules():
        if m.extra_repr() != built[name].extra_repr():
            raise ConfigError(
                f"module '{name}' ({m.extra_repr()}) is not rebuilt as it is "
                f"({built[name].extra_repr()}); save_torch only records changed sizes"
            )
    want, got = model.state_dict(), rebuilt.state_dict()
    for key in set(want) | set(got):
        if key not in want or key not in got or want[key].shape != got[key].shape:
            raise ConfigError(f"state entry '{key}' would not be rebuilt with its shape")


def save_torch(model: nn.Module, path: str | os.PathLike[str], arch: Mapping[str, Any]) -> Path:
    """Write the state dict of a (possibly compacted) zoo model and how to rebuild it.

    Args:
        model: A zoo model, possibly with narrower Conv/Linear/BatchNorm layers.
        path: The ``.safetensors`` file to write (atomically).
        arch: ``{"model": zoo name, **constructor options}``, e.g.
            ``{"model": "resnet20", "num_classes": 10}``.

    Returns:
        ``path``.

    Raises:
        ConfigError: A bad ``arch``, or a model that its zoo model with resized
            layers would not reproduce.
        UnknownNameError: An unknown zoo model name.

    Example:
        >>> save_torch(small, "small.safetensors", {"model": "resnet20", "num_classes": 10})
        >>> load_torch("small.safetensors")(x)  # the same outputs as small(x)
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    name, kwargs = _arch(arch)
    reference = models.create(name, **kwargs)
    layers = changed_layers(reference, model)
    _check_same(rebuild(reference, layers), model)
    tensors = {k: t.detach().cpu().contiguous().clone() for k, t in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "arch": json.dumps({"model": name, "kwargs": kwargs, "layers": layers}),
    }
    write_atomic(path, safetensors_bytes(tensors, meta))
    return path


def load_torch(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model saved by :func:`save_torch` (in eval mode); nothing is unpickled.

    Raises:
        CheckpointError: The file is missing, corrupt or not in this format, names
            a model that cannot be built, or its weights do not fit it.
    """
    path = Path(path)
    origin = f"torch export '{path}'"
    if not path.is_file():
        raise CheckpointError(f"{origin} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state: dict[str, Tensor] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        arch = json.loads(meta.get("arch", "null"))
    except Exception as err:  # safetensors and json raise several types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{origin} is truncated or corrupt ({first[:120]})") from None
    if meta.get("format") != FORMAT or not isinstance(arch, dict):
        raise CheckpointError(f"{origin} is not a dualprune torch export (format '{FORMAT}')")
    try:
        model = models.create(str(arch["model"]), **dict(arch.get("kwargs") or {}))
        rebuild(model, arch.get("layers") or {})
    except (DualpruneError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{origin}: cannot rebuild its model ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:2])[:200]
        raise CheckpointError(f"{origin}: weights do not fit the rebuilt model: {detail}") from None
    return model.eval()
