"""The masks file: a safetensors layout for :class:`~dualprune.masks.masks.Masks` (docs/masks.md).

    mask/<name>     uint8 0/1, the support M of parameter <name> (1 = kept)
    scales/<name>   float (dtype kept), the fixed scales α of a quantized parameter
    metadata        {"format": FORMAT, "quantizers": JSON {name: Quantization.to_dict()}}

:func:`parse` checks the state-dict form and splits it into what ``Masks`` takes.
Files are written atomically (temp file + ``os.replace``, docs/design.md) and read
without unpickling anything. Both functions speak the ``state_dict`` form of
``Masks`` (``{"format", "state": {name: {"mask", "scales"?}}, "quantizers"}``);
latent weights, which only an attached retraining has, are not written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from dualprune.constraints import from_dict
from dualprune.errors import CheckpointError, DualpruneError
from dualprune.fileio import write_atomic

__all__ = ["FORMAT", "parse", "read", "write"]

#: ``format`` of the masks state dict and of the files written here.
FORMAT = "dualprune.masks/1"


def write(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (``Masks.state_dict()`` form) to ``path`` atomically."""
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    for name, entry in state["state"].items():
        tensors[f"mask/{name}"] = entry["mask"].to(torch.uint8).cpu().contiguous()
        if "scales" in entry:
            tensors[f"scales/{name}"] = entry["scales"].detach().cpu().contiguous()
    meta = {"format": FORMAT, "quantizers": json.dumps(state["quantizers"])}
    write_atomic(path, safetensors_bytes(tensors, meta))


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``Masks.state_dict()`` form stored in ``path``.

    Raises:
        CheckpointError: The file is missing, truncated, corrupt or not a masks file
            (one line naming the file).
    """
    path = Path(path)
    origin = f"masks file '{path}'"
    if not path.is_file():
        raise CheckpointError(f"{origin} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        specs = json.loads(meta.get("quantizers", "{}"))
    except Exception as err:  # safetensors and json raise several types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{origin} is truncated or corrupt ({first[:120]})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{origin} is not a dualprune masks file (format '{FORMAT}')")
    state: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        kind, _, name = key.partition("/")
        if kind == "mask":
            if t.dtype != torch.uint8 or bool((t > 1).any()):
                raise CheckpointError(f"{origin}: mask of '{name}' is not 0/1 uint8")
            state.setdefault(name, {})["mask"] = t.bool()
        elif kind == "scales":
            state.setdefault(name, {})["scales"] = t
        else:
            raise CheckpointError(f"{origin}: unexpected tensor '{key}'")
    return {"format": FORMAT, "state": state, "quantizers": specs}


def parse(
    sd: object, origin: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split a masks state dict into (masks, quantizers, scales, latent) by parameter name.

    Raises:
        CheckpointError: Not a masks state, an entry without a mask, or a quantizer
            spec that ``constraints.from_dict`` rejects (messages start with ``origin``).
    """
    if not isinstance(sd, Mapping) or sd.get("format") != FORMAT:
        raise CheckpointError(f"{origin}: not a dualprune masks state (format '{FORMAT}')")
    state, specs = sd.get("state"), sd.get("quantizers", {})
    if not isinstance(state, Mapping) or not isinstance(specs, Mapping):
        raise CheckpointError(f"{origin}: 'state' and 'quantizers' must be mappings")
    if any(not isinstance(e, Mapping) or "mask" not in e for e in state.values()):
        raise CheckpointError(f"{origin}: every entry of 'state' needs a 'mask'")
    quantizers = {}
    for name, spec in specs.items():
        try:
            quantizers[name] = from_dict(spec)
        except DualpruneError as err:
            raise CheckpointError(f"{origin}: quantizer of '{name}': {err}") from None
    masks = {n: e["mask"] for n, e in state.items()}
    scales = {n: e["scales"] for n, e in state.items() if "scales" in e}
    latent = {n: e["latent"] for n, e in state.items() if "latent" in e}
    return masks, quantizers, scales, latent
