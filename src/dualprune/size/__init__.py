"""Honest counting (docs/algorithms.md §4): weights, MACs and storage with every index bit.

- :mod:`~dualprune.size.metrics`: per-layer weights, nonzeros, sparsity and MACs.
- :mod:`~dualprune.size.storage`: bits of values, indices and scales per layer.
- :mod:`~dualprune.size.indexcodes`: the sparse index codes storage chooses from.
"""

from dualprune.size.metrics import LayerStats, compression_ratio, dense_macs, layer_stats
from dualprune.size.storage import ModelStorage, Storage, layer_storage, model_storage

__all__ = [
    "LayerStats",
    "ModelStorage",
    "Storage",
    "compression_ratio",
    "dense_macs",
    "layer_stats",
    "layer_storage",
    "model_storage",
]
