"""Honest counting: weights, nonzeros, sparsity, bits, storage and MACs per layer.

Follows docs/algorithms.md §4:

- the sparsity of a layer is zeros / entries of its weight (biases and BatchNorm
  are not counted);
- compression ratio is prunable weights / nonzero prunable weights, and, over
  all parameters, (prunable weights + other parameters) / (nonzero prunable
  weights + other parameters) — biases and BatchNorm are never pruned;
- storage is counted by :mod:`dualprune.size.storage` (values + indices + scales);
- MACs are per sample on one forward pass, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2 for conv and
  linear; bias additions are not MACs). Effective MACs only count the MACs whose
  weight is nonzero: a weight entry takes part in one MAC per output position,
  so for conv and linear layers effective = dense · nonzero / weights exactly.
  Zero padding of convolutions is *not* subtracted (a MAC with a padded input
  still counts, in both figures), as FlopCounterMode does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from dualprune.constraints import Constraint
from dualprune.errors import PlanError, did_you_mean
from dualprune.plan import layer_weight, prunable_layers
from dualprune.size.storage import Storage, layer_storage, model_storage

__all__ = [
    "LayerStats",
    "compression_ratio",
    "dense_macs",
    "layer_stats",
    "model_totals",
    "structure_of",
    "totals",
]


@dataclass(frozen=True)
class LayerStats:
    """Counts for one prunable layer (per sample for MACs).

    ``structure`` names the sparsity structure of its constraint (``"dense"``
    without one), ``bits`` the bits of one stored value (32 unquantized) and
    ``storage`` how it is stored (:class:`~dualprune.size.storage.Storage`).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    nonzero: int
    macs: int
    effective_macs: int
    bits: int = 32
    structure: str = "dense"
    storage: Storage | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of weight entries that are zero."""
        return 1.0 - self.nonzero / self.weights if self.weights else 0.0

    def as_dict(self) -> dict[str, object]:
        """Plain data, with sparsity included."""
        d = asdict(self)
        d["storage"] = None if self.storage is None else self.storage.as_dict()
        return {**d, "shape": list(self.shape), "sparsity": self.sparsity}


def structure_of(constraint: Constraint | None) -> str:
    """Sparsity structure(s) of a constraint joined by ``+`` (``"dense"`` if none)."""
    if constraint is None:
        return "dense"
    parts = getattr(constraint, "supports", None)
    if parts is None:
        parts = () if constraint.restricts_values else (constraint,)
    names = [str(getattr(p, "structure", type(p).__name__.lower())) for p in parts]
    return "+".join(names) if names else "dense"


@torch.no_grad()
def dense_macs(model: nn.Module, example_input: Tensor) -> dict[str, int]:
    """MACs per sample of every prunable layer, by FlopCounterMode (FLOPs / 2).

    One forward pass of ``example_input[:1]`` in eval mode (the mode is restored).
    Each layer gets the FLOPs the counter adds while its ``forward`` runs (read by
    hooks, so names never need matching). A layer that runs twice counts twice;
    one that does not run counts 0.
    """
    layers = prunable_layers(model)
    flops = dict.fromkeys(layers, 0)
    start: dict[str, int] = {}
    counter = FlopCounterMode(display=False)
    handles = []
    for name, module in layers.items():

        def before(mod: nn.Module, inp: object, name: str = name) -> None:
            start[name] = counter.get_total_flops()

        def after(mod: nn.Module, inp: object, out: object, name: str = name) -> None:
            flops[name] += counter.get_total_flops() - start.pop(name)

        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    was_training = model.training
    model.eval()
    try:
        with counter:
            model(example_input[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {name: f // 2 for name, f in flops.items()}


def _check_names(constraints: Mapping[str, object], layers: Mapping[str, nn.Module]) -> None:
    for name in constraints:
        if name not in layers:
            raise PlanError(
                f"constraint for layer '{name}' matches no Conv1d/Conv2d/Linear module"
                f"{did_you_mean(name, list(layers))}"
            )


@torch.no_grad()
def layer_stats(
    model: nn.Module,
    example_input: Tensor | None = None,
    constraints: Mapping[str, Constraint | None] | None = None,
) -> list[LayerStats]:
    """Per-layer counts. MACs need ``example_input`` (one sample suffices); else they are 0.

    Args:
        model: the model, as it is (prune it first: zeros are what is counted as pruned).
        example_input: a batch; only its first sample runs.
        constraints: constraint per module name (as from ``Plan.resolve``); gives
            each layer's structure, value bits and scales. Missing layers are dense fp32.

    Raises:
        PlanError: a key of ``constraints`` is no prunable layer of ``model``.

    Example:
        >>> stats = layer_stats(models.create("lenet5"), torch.zeros(1, 1, 28, 28))
        >>> sum(s.weights for s in stats)
        430500
    """
    layers = prunable_layers(model)
    constraints = constraints or {}
    _check_names(constraints, layers)
    macs = dense_macs(model, example_input) if example_input is not None else {}
    stats = []
    for name, module in layers.items():
        w = layer_weight(module)
        nonzero = int((w != 0).sum())
        dense = macs.get(name, 0)
        storage = layer_storage(w, constraints.get(name))
        stats.append(
            LayerStats(
                name=name,
                kind=type(module).__name__,
                shape=tuple(w.shape),
                weights=w.numel(),
                nonzero=nonzero,
                macs=dense,
                # each weight entry takes part in dense / weights MACs (its output positions)
                effective_macs=dense * nonzero // w.numel() if w.numel() else 0,
                bits=storage.bits,
                structure=structure_of(constraints.get(name)),
                storage=storage,
            )
        )
    return stats


def totals(stats: list[LayerStats]) -> dict[str, float]:
    """Sums over prunable layers: counts, sparsity, compression, MACs and storage bits.

    ``storage_bits`` counts values + indices + scales of the prunable weights only;
    :func:`model_totals` adds the other parameters.
    """
    weights = sum(s.weights for s in stats)
    nonzero = sum(s.nonzero for s in stats)
    stored = [s.storage for s in stats if s.storage is not None]
    return {
        "weights": weights,
        "nonzero": nonzero,
        "sparsity": 1 - nonzero / weights if weights else 0.0,
        "compression": compression_ratio(weights, nonzero),
        "macs": sum(s.macs for s in stats),
        "effective_macs": sum(s.effective_macs for s in stats),
        "storage_bits_dense": sum(s.dense_bits for s in stored),
        "storage_bits": sum(s.total_bits for s in stored),
    }


def model_totals(model: nn.Module, stats: list[LayerStats]) -> dict[str, float]:
    """:func:`totals` plus figures over the whole model.

    Adds ``params_other`` (parameters that are not prunable weights: biases,
    BatchNorm), ``params_all``, ``compression_all`` = params_all / (nonzero +
    params_other), and storage in bytes, of the prunable weights and of the whole
    model (other parameters and floating-point buffers at 32 bits; every layer
    byte-aligned; :class:`~dualprune.size.storage.ModelStorage`).
    """
    t = totals(stats)
    layers = {s.name: s.storage for s in stats if s.storage is not None}
    store = model_storage(model, layers=layers if len(layers) == len(stats) else None)
    params_all = t["weights"] + store.other_params
    return {
        **t,
        "params_other": store.other_params,
        "params_all": params_all,
        "compression_all": compression_ratio(params_all, t["nonzero"] + store.other_params),
        "buffers": store.buffers,
        "storage_bytes_dense_prunable": store.prunable_dense_bits // 8,
        "storage_bytes_prunable": store.prunable_bytes,
        "storage_bytes_dense": store.dense_bytes,
        "storage_bytes": store.bytes,
        "storage_ratio": store.ratio,
        "storage_ratio_prunable": store.ratio_prunable,
    }


def compression_ratio(weights: float, nonzero: float) -> float:
    """weights / nonzero (∞ when everything is pruned)."""
    return weights / nonzero if nonzero else math.inf
