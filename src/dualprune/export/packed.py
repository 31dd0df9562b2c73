"""The packed format: a compressed model on disk, as large as its storage figure says (§4).

One ``.safetensors`` file (docs/export.md)::

    packed/<name>.weight   uint8, the bit stream of each prunable layer (Conv1d, Conv2d,
                           Linear): scales, values at b_w bits, index
                           (:mod:`~dualprune.export.layercode`)
    <key>                  every other state_dict entry as it is: biases, BatchNorm
                           γ/β and running statistics (fp32), num_batches_tracked
    metadata               {"format": FORMAT, "layers": JSON {<name>.weight: entry}}

The manifest sits in the safetensors metadata, so one file is the whole model.
Each layer's stream has exactly ``layer_storage(W, constraint).bytes`` bytes, so the
data of the file is :func:`~dualprune.storage.model_storage`'s ``bytes`` plus the
integer buffers (8 bytes per BatchNorm) that it does not count; the rest is the
safetensors header (about 85 bytes per tensor plus about 110 bytes of manifest
per prunable layer: 1.1 kB for LeNet-5, 13 kB for ResNet-20). Nothing is
unpickled on load.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from dualprune.constraints import Constraint
from dualprune.errors import CheckpointError, ConfigError, did_you_mean
from dualprune.export.layercode import decode_layer, encode_layer
from dualprune.masks import Masks
from dualprune.plan import prunable_layers
from dualprune.storage import ModelStorage, Storage, model_storage

__all__ = ["FORMAT", "PACKED_PREFIX", "PackedInfo", "load_packed", "read_manifest", "save_packed"]

#: ``format`` entry of a packed file's metadata.
FORMAT = "dualprune.packed/1"
#: Prefix of the tensor holding a packed weight.
PACKED_PREFIX = "packed/"


@dataclass(frozen=True)
class PackedInfo:
    """What :func:`save_packed` wrote.

    Attributes:
        path: The file.
        file_bytes: Its size on disk.
        storage: The storage figure of the model (:func:`~dualprune.storage.model_storage`
            with the same constraints), per layer and in total.
        packed_bytes: Bytes of the packed layer streams (= ``storage.prunable_bytes``).
        other_bytes: Bytes of every other tensor (biases, BatchNorm, integer buffers).
    """

    path: Path
    file_bytes: int
    storage: ModelStorage
    packed_bytes: int
    other_bytes: int

    @property
    def header_bytes(self) -> int:
        """The safetensors header with the manifest: file − data."""
        return self.file_bytes - self.packed_bytes - self.other_bytes

    @property
    def overhead_bytes(self) -> int:
        """file_bytes − storage.bytes: header and integer buffers."""
        return self.file_bytes - self.storage.bytes

    @property
    def dense_bytes(self) -> int:
        """The fp32 model (``storage.dense_bytes``)."""
        return self.storage.dense_bytes

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain data (file, storage, overhead and per-layer codes)."""
        return {
            "path": str(self.path),
            "file_bytes": self.file_bytes,
            "storage_bytes": self.storage.bytes,
            "dense_bytes": self.dense_bytes,
            "packed_bytes": self.packed_bytes,
            "other_bytes": self.other_bytes,
            "header_bytes": self.header_bytes,
            "overhead_bytes": self.overhead_bytes,
            "layers": {
                name: {"bytes": s.bytes, "index": s.index_kind, "bits": s.bits}
                for name, s in self.storage.layers.items()
            },
        }


def _layer_constraints(
    model: nn.Module,
    masks: Masks | None,
    constraints: Mapping[str, Constraint | None] | None,
) -> dict[str, Constraint | None]:
    """Module name → constraint: the given ones, else each masked layer's quantizer."""
    layers = prunable_layers(model)
    if constraints is not None:
        if not isinstance(constraints, Mapping):
            raise ConfigError(
                f"constraints must map layer names to constraints, got {constraints!r}"
            )
        for name, c in constraints.items():
            if name not in layers:
                raise ConfigError(
                    f"constraint key '{name}' is no prunable layer of {type(model).__name__}"
                    f"{did_you_mean(str(name), list(layers))}"
                )
            if c is not None and not isinstance(c, Constraint):
                raise ConfigError(f"constraint of '{name}' is {c!r}, not a Constraint")
        return dict(constraints)
    found: dict[str, Constraint | None] = {}
    if masks is not None:
        for key, q in masks.quantizers.items():
            name = key.removesuffix(".weight") if key != "weight" else ""
            if name in layers and key == _weight_key(name):
                found[name] = q
    return found


def _weight_key(name: str) -> str:
    return f"{name}.weight" if name else "weight"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + ``os.replace`` (docs/design.md)."""
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


def save_packed(
    model: nn.Module,
    path: str | os.PathLike[str],
    masks: Masks | None = None,
    constraints: Mapping[str, Constraint | None] | None = None,
) -> PackedInfo:
    """Write ``model`` in the packed format (module docstring), atomically.

    Every prunable layer is stored in the cheapest code of
    :func:`~dualprune.storage.layer_storage` (none, bitmask or relative indices
    with padding) with its values at b_w bits and its scales α, so that the file
    holds ``model_storage(model, constraints).bytes`` of data (§4).

    Args:
        model: The model after the hard prune (its zeros are the pruned entries).
        path: The ``.safetensors`` file to write.
        masks: The masks of the hard prune: their scales α are stored as they are
            (without masks, α is recovered from the weights exactly when possible).
        constraints: Layer (module) name → constraint, as ``Plan.resolve`` returns
            it; gives each layer's quantization. ``None``: the masks' quantizers.

    Returns:
        A :class:`PackedInfo` with the file size beside the storage figure.

    Raises:
        ConfigError: A constraint key that is no prunable layer, a quantized weight
            that is not on its grid, or a weight that is not fp32/fp16/bf16.

    Example:
        >>> info = save_packed(model, "model.packed.safetensors", masks=masks)
        >>> info.file_bytes, info.storage.bytes
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    chosen = _layer_constraints(model, masks, constraints)
    scales = masks.scales if masks is not None else {}
    tensors: dict[str, Tensor] = {}
    manifest: dict[str, dict[str, Any]] = {}
    layers: dict[str, Storage] = {}
    for name, module in prunable_layers(model).items():
        key = _weight_key(name)
        data, entry, storage = encode_layer(key, module.weight, chosen.get(name), scales.get(key))
        tensors[PACKED_PREFIX + key], manifest[key], layers[name] = data, entry, storage
    packed = sum(t.numel() for t in tensors.values())
    other = 0
    for key, t in model.state_dict().items():
        if key not in manifest:
            tensors[key] = t.detach().cpu().contiguous().clone()
            other += t.numel() * t.element_size()
    meta = {"format": FORMAT, "layers": json.dumps(manifest, separators=(",", ":"))}
    blob = safetensors_bytes(tensors, meta)
    write_atomic(path, blob)
    storage = model_storage(model, chosen, layers=layers)
    return PackedInfo(path, len(blob), storage, packed, other)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    origin = f"packed file '{path}'"
    if not path.is_file():
        raise CheckpointError(f"{origin} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        manifest = json.loads(meta.get("layers", "{}"))
    except Exception as err:  # safetensors and json raise several types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{origin} is truncated or corrupt ({first[:120]})") from None
    if meta.get("format") != FORMAT or not isinstance(manifest, dict):
        raise CheckpointError(f"{origin} is not a dualprune packed file (format '{FORMAT}')")
    return manifest, tensors


def read_manifest(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The per-layer manifest of a packed file: shape, dtype, quantizer, code widths.

    Raises:
        CheckpointError: The file is missing, corrupt or not a packed file.
    """
    return _read(Path(path))[0]


def load_packed(
    path: str | os.PathLike[str], model: nn.Module | None = None
) -> nn.Module | dict[str, Tensor]:
    """Read a file written by :func:`save_packed`; the weights come back bit for bit.

    Args:
        path: The packed ``.safetensors`` file.
        model: A model of the same architecture (e.g. freshly built by name) to
            load the weights into (strictly: every key, every shape).

    Returns:
        ``model`` with the weights loaded, or without a model the state dict.

    Raises:
        CheckpointError: The file is missing, corrupt or not a packed file, or its
            weights do not fit ``model``.
    """
    path = Path(path)
    manifest, tensors = _read(path)
    state: dict[str, Tensor] = {}
    for key, t in tensors.items():
        if not key.startswith(PACKED_PREFIX):
            state[key] = t
            continue
        name = key[len(PACKED_PREFIX) :]
        entry = manifest.get(name)
        if not isinstance(entry, dict) or t.dtype != torch.uint8:
            raise CheckpointError(f"packed file '{path}': no manifest entry for '{name}'")
        state[name] = decode_layer(name, t, entry)
    missing = sorted(set(manifest) - set(state))
    if missing:
        raise CheckpointError(f"packed file '{path}': packed weights {missing} are missing")
    if model is None:
        return state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:200]
        raise CheckpointError(
            f"packed file '{path}' does not fit {type(model).__name__}: {detail}"
        ) from None
    return model
