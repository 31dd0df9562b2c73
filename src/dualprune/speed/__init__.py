"""Speed: measured latency, sparse execution, break-even sparsity and width search.

- :mod:`~dualprune.speed.latency`: timings with fixed threads, warm-up, median and IQR.
- :mod:`~dualprune.speed.sparse`: CSR/BSR ``SparseLinear`` and ``SparseConv2d``.
- :mod:`~dualprune.speed.sparsify`: swap a layer for its sparse form where it is faster.
- :mod:`~dualprune.speed.breakeven`: each layer's break-even sparsity on this CPU.
- :mod:`~dualprune.speed.widths`: kept channel counts that run fastest.
"""

from dualprune.speed.breakeven import BreakEven, break_even_sparsity
from dualprune.speed.latency import compare_latency, measure_latency
from dualprune.speed.sparse import SparseConv2d, SparseLinear
from dualprune.speed.sparsify import SparsifyReport, sparsify_for_inference
from dualprune.speed.widths import WidthSearch, search_widths

__all__ = [
    "BreakEven",
    "SparseConv2d",
    "SparseLinear",
    "SparsifyReport",
    "WidthSearch",
    "break_even_sparsity",
    "compare_latency",
    "measure_latency",
    "search_widths",
    "sparsify_for_inference",
]
