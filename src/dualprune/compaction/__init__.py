"""Compaction: physical removal of the channels a model's masks leave dead.

- :mod:`~dualprune.compaction.remove`: :func:`compact` and :func:`compaction_result`.
- :mod:`~dualprune.compaction.removable`: which zero channels can go exactly.
- :mod:`~dualprune.compaction.result`: :class:`CompactionResult`, the per-layer account.
"""

from dualprune.compaction.remove import CompactionWarning, compact, compaction_result
from dualprune.compaction.result import CompactionResult, LayerCompaction

__all__ = [
    "CompactionResult",
    "CompactionWarning",
    "LayerCompaction",
    "compact",
    "compaction_result",
]
