"""Honest counting: weights, nonzeros, sparsity and MACs per layer.

Follows docs/algorithms.md §4: the sparsity of a layer is zeros / entries of
its weight (biases and BatchNorm are not counted); compression ratio is
prunable weights / nonzero prunable weights; MACs are counted per sample on a
forward pass, dense and effective (only MACs whose weight is nonzero).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from dualprune.plan import prunable_layers

__all__ = ["LayerStats", "compression_ratio", "layer_stats", "totals"]


@dataclass(frozen=True)
class LayerStats:
    """Counts for one prunable layer (per sample for MACs)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    nonzero: int
    macs: int
    effective_macs: int

    @property
    def sparsity(self) -> float:
        """Fraction of weight entries that are zero."""
        return 1.0 - self.nonzero / self.weights if self.weights else 0.0

    def as_dict(self) -> dict[str, object]:
        """Plain data, with sparsity included."""
        return {**asdict(self), "shape": list(self.shape), "sparsity": self.sparsity}


@torch.no_grad()
def layer_stats(model: nn.Module, example_input: Tensor | None = None) -> list[LayerStats]:
    """Per-layer counts. MACs need ``example_input`` (one sample suffices); else they are 0.

    Example:
        >>> stats = layer_stats(models.create("lenet5"), torch.zeros(1, 1, 28, 28))
        >>> sum(s.weights for s in stats)
        430500
    """
    layers = prunable_layers(model)
    spatial: dict[str, int] = {}
    handles = []
    if example_input is not None:
        for name, module in layers.items():

            def hook(mod: nn.Module, inp: object, out: Tensor, name: str = name) -> None:
                # output positions per sample: conv (B, C, *S) -> Π S; linear (B, *T, F) -> Π T
                channels = out.shape[-1] if isinstance(mod, nn.Linear) else out.shape[1]
                spatial[name] = out[0].numel() // channels

            handles.append(module.register_forward_hook(hook))
        was_training = model.training
        model.eval()
        try:
            model(example_input[:1])
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
    stats = []
    for name, module in layers.items():
        w = module.weight
        nonzero = int((w != 0).sum())
        positions = spatial.get(name, 0)  # each weight takes part in one MAC per output position
        stats.append(
            LayerStats(
                name=name,
                kind=type(module).__name__,
                shape=tuple(w.shape),
                weights=w.numel(),
                nonzero=nonzero,
                macs=positions * w.numel(),
                effective_macs=positions * nonzero,
            )
        )
    return stats


def totals(stats: list[LayerStats]) -> dict[str, float]:
    """Sums over layers plus overall sparsity and compression ratio."""
    weights = sum(s.weights for s in stats)
    nonzero = sum(s.nonzero for s in stats)
    return {
        "weights": weights,
        "nonzero": nonzero,
        "sparsity": 1 - nonzero / weights if weights else 0.0,
        "compression": compression_ratio(weights, nonzero),
        "macs": sum(s.macs for s in stats),
        "effective_macs": sum(s.effective_macs for s in stats),
    }


def compression_ratio(weights: int, nonzero: int) -> float:
    """weights / nonzero (∞ when everything is pruned)."""
    return weights / nonzero if nonzero else float("inf")
