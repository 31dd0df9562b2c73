"""The packed format: a compressed model on disk, as large as its storage figure says (§4).

One ``.safetensors`` file (docs/export.md) with one uint8 tensor, ``payload``::

    payload    manifest   (:mod:`~dualprune.export.manifest`): names, shapes, dtypes,
                          quantizers, index codes, integer scalars
               streams    for each entry of the manifest, in its order: the bit stream
                          of a prunable layer (Conv1d, Conv2d, Linear; scales, values,
                          index: :mod:`~dualprune.export.layercode`) or
                          the little-endian bytes of any other tensor (biases,
                          BatchNorm γ/β and running statistics)
    metadata   {"format": FORMAT}

Each layer's stream has exactly ``layer_storage(W, constraint).bytes`` bytes and
every other float tensor its 4 bytes an entry, so the data of the file is
:func:`~dualprune.size.storage.model_storage`'s ``bytes``; offsets are not stored, they
follow from the manifest. The rest is fixed: the safetensors header (120-128 bytes
with one tensor) and the manifest (LeNet-5: about 70 bytes, ResNet-20: 700), which
also holds ``num_batches_tracked`` as varints. Nothing is unpickled on load.

Files of an earlier format (``dualprune.packed/1``, ``/2``) are refused with a
message naming their format: export the model again.
"""

from __future__ import annotations

import os
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
from dualprune.export.bits import tensor_bytes, tensor_from_bytes
from dualprune.export.layercode import decode_layer, encode_layer, stream_bytes
from dualprune.export.manifest import Record, decode_manifest, encode_manifest
from dualprune.fileio import write_atomic
from dualprune.masks.masks import Masks
from dualprune.plan import layer_of, layer_weight, prunable_layers, weight_key
from dualprune.size.storage import ModelStorage, Storage, model_storage

__all__ = ["FORMAT", "PAYLOAD", "PackedInfo", "load_packed", "read_manifest", "save_packed"]

#: ``format`` entry of a packed file's metadata.
FORMAT = "dualprune.packed/3"
#: Name of the one tensor of a packed file.
PAYLOAD = "payload"


@dataclass(frozen=True)
class PackedInfo:
    """What :func:`save_packed` wrote.

    Attributes:
        path: The file.
        file_bytes: Its size on disk.
        storage: The storage figure of the model (:func:`~dualprune.size.storage.model_storage`
            with the same constraints), per layer and in total.
        packed_bytes: Bytes of the packed layer streams (= ``storage.prunable_bytes``).
        other_bytes: Bytes of every other tensor stored in the payload (biases,
            BatchNorm γ/β and running statistics); integer scalars are in the manifest.
        manifest_bytes: Bytes of the manifest at the start of the payload.
    """

    path: Path
    file_bytes: int
    storage: ModelStorage
    packed_bytes: int
    other_bytes: int
    manifest_bytes: int

    @property
    def header_bytes(self) -> int:
        """Everything but the data: the safetensors header plus the manifest."""
        return self.file_bytes - self.packed_bytes - self.other_bytes

    @property
    def overhead_bytes(self) -> int:
        """file_bytes − storage.bytes (the header, when every other tensor is fp32)."""
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
            "manifest_bytes": self.manifest_bytes,
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
            name = layer_of(key)
            if name in layers and key == weight_key(name):
                found[name] = q
    return found


def save_packed(
    model: nn.Module,
    path: str | os.PathLike[str],
    masks: Masks | None = None,
    constraints: Mapping[str, Constraint | None] | None = None,
) -> PackedInfo:
    """Write ``model`` in the packed format (module docstring), atomically.

    Every prunable layer is stored in the cheapest code of
    :func:`~dualprune.size.storage.layer_storage` (none, bitmask, relative indices
    with escapes, or Golomb–Rice gaps) with its values (only the nonzeros' where
    an index marks them) and its scales α, so that the file
    holds ``model_storage(model, constraints).bytes`` of data (§4) plus about 120 bytes
    of safetensors header and the manifest (tens of bytes a layer at most).

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
            that is not on its grid, a weight that is not fp32/fp16/bf16, or a
            tensor of a dtype the format does not hold (complex, fp8).

    Example:
        >>> info = save_packed(model, "model.packed.safetensors", masks=masks)
        >>> info.file_bytes, info.storage.bytes
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    chosen = _layer_constraints(model, masks, constraints)
    scales = masks.scales if masks is not None else {}
    data: dict[str, Tensor] = {}
    entries: dict[str, tuple[dict[str, Any], torch.dtype]] = {}
    layers: dict[str, Storage] = {}
    for name, module in prunable_layers(model).items():
        key, weight = weight_key(name), layer_weight(module)
        data[key], entry, layers[name] = encode_layer(
            key, weight, chosen.get(name), scales.get(key)
        )
        entries[key] = entry, weight.dtype
    records: list[Record] = []
    for key, t in model.state_dict().items():
        if key in entries:
            entry, dtype = entries.pop(key)
            records.append(Record(key, tuple(entry["shape"]), dtype, layer=entry))
        elif Record.inline(t.dtype, tuple(t.shape)):
            records.append(Record(key, (), t.dtype, value=int(t)))
        else:
            records.append(Record(key, tuple(t.shape), t.dtype))
            data[key] = t
    for key, (entry, dtype) in entries.items():  # a prunable weight outside the state dict
        records.append(Record(key, tuple(entry["shape"]), dtype, layer=entry))
    manifest, ordered = encode_manifest(records)
    parts = [torch.frombuffer(bytearray(manifest), dtype=torch.uint8)]
    packed = other = 0
    for r in ordered:
        if r.key not in data:
            continue
        part = data[r.key] if r.layer is not None else tensor_bytes(data[r.key])
        parts.append(part)
        packed += part.numel() if r.layer is not None else 0
        other += part.numel() if r.layer is None else 0
    blob = safetensors_bytes({PAYLOAD: torch.cat(parts)}, {"format": FORMAT})
    write_atomic(path, blob)
    storage = model_storage(model, chosen, layers=layers)
    return PackedInfo(path, len(blob), storage, packed, other, len(manifest))


def _payload_bytes(r: Record) -> int:
    """Bytes of ``r`` in the payload: its stream, numel · itemsize, or 0 (held in the manifest)."""
    if r.layer is not None:
        return stream_bytes(r.layer)
    return 0 if r.value is not None else torch.Size(r.shape).numel() * r.dtype.itemsize


def _read(path: Path) -> tuple[list[tuple[Record, Tensor]], int]:
    """Each record of a packed file with its bytes in the payload, and the manifest's length."""
    origin = f"packed file '{path}'"
    if not path.is_file():
        raise CheckpointError(f"{origin} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, keys = f.metadata() or {}, list(f.keys())
            payload = f.get_tensor(PAYLOAD) if keys == [PAYLOAD] else None
    except Exception as err:  # safetensors raises several types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{origin} is truncated or corrupt ({first[:120]})") from None
    found = meta.get("format", "none")
    if found != FORMAT and found.startswith("dualprune.packed/"):
        raise CheckpointError(
            f"{origin} is in format '{found}', which this version no longer reads (it reads "
            f"'{FORMAT}'); export the model again (save_packed or dualprune export RUN_DIR "
            "--format packed)"
        )
    if found != FORMAT or payload is None or payload.dtype != torch.uint8:
        raise CheckpointError(
            f"{origin} is not a dualprune packed file of format '{FORMAT}' (format: '{found}')"
        )
    try:
        records, start = decode_manifest(memoryview(payload.numpy()))
    except CheckpointError as err:
        raise CheckpointError(f"{origin}: {err}") from None
    sizes = [_payload_bytes(r) for r in records]
    if start + sum(sizes) != payload.numel():
        raise CheckpointError(
            f"{origin} is truncated or corrupt: its payload has {payload.numel()} bytes, "
            f"its manifest describes {start + sum(sizes)}"
        )
    out, offset = [], start
    for r, n in zip(records, sizes, strict=True):
        out.append((r, payload[offset : offset + n]))
        offset += n
    return out, start


def read_manifest(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The manifest of a packed file, expanded: state-dict key → what is stored for it.

    A packed weight gives ``shape``, ``dtype``, ``q`` (its quantizer, as
    ``Quantization.to_dict()`` without ``type``; absent for fp32 values), ``index``
    (none, bitmask, relative, rice), ``b_idx`` (its parameter: 0, 1, b_idx or r),
    ``m`` (stored values), ``p`` (relative: escapes; rice: unary ones), ``offset``
    and ``bytes`` in the payload; another tensor ``shape``, ``dtype``, ``offset`` and
    ``bytes``, or ``value`` for an integer scalar held in the manifest.

    Raises:
        CheckpointError: The file is missing, corrupt or not a packed file.
    """
    entries, offset = _read(Path(path))
    out: dict[str, dict[str, Any]] = {}
    for r, data in entries:
        entry: dict[str, Any] = dict(r.layer) if r.layer is not None else {"shape": list(r.shape)}
        entry["dtype"] = str(r.dtype).removeprefix("torch.")
        if r.value is not None:
            entry["value"] = r.value
        else:
            entry.update(offset=offset, bytes=data.numel())
        offset += data.numel()
        out[r.key] = entry
    return out


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
    state: dict[str, Tensor] = {}
    for r, data in _read(path)[0]:
        try:
            if r.layer is not None:
                state[r.key] = decode_layer(r.key, data, r.layer)
            elif r.value is not None:
                state[r.key] = torch.tensor(r.value, dtype=r.dtype)
            else:
                state[r.key] = tensor_from_bytes(data, r.dtype, r.shape)
        except CheckpointError as err:
            raise CheckpointError(f"packed file '{path}': {err}") from None
        except (ValueError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
            raise CheckpointError(f"packed file '{path}': '{r.key}' is corrupt ({first})") from None
    if model is None:
        return state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:2])[:200]
        raise CheckpointError(
            f"packed file '{path}' does not fit {type(model).__name__}: {detail}"
        ) from None
    return model
