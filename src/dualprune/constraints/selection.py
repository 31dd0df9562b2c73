"""Selecting the k largest scores with deterministic ties, fast on large tensors.

Every projection in :mod:`~dualprune.constraints.structures` reduces to "keep the
k largest scores" (globally, or inside each group). The rule for equal scores is
always the same: **the lower flat index is kept**. ``torch.topk`` gives no such
guarantee, so the functions here never use it:

- :func:`kth_largest` finds the k-th largest of a nonnegative float vector without
  sorting it: a histogram of the top bits of the floats' bit patterns (which, for
  nonnegative floats, order like the floats) locates the bucket that holds the
  answer exactly, and only that bucket goes through ``kthvalue``;
- :func:`topk_mask` keeps everything above it and, among entries equal to it, the
  ones with the lowest indices;
- :func:`ranks` (stable sort) and :func:`ranks_small` (pairwise comparisons along a
  short dimension) give per-group ranks with the same tie rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kth_largest", "ranks", "ranks_small", "topk_mask"]

_EXACT_BELOW = 1 << 15  # below this many scores, one kthvalue on everything
_INT = {torch.float32: (torch.int32, 31), torch.float64: (torch.int64, 63)}


def kth_largest(a: Tensor, k: int) -> tuple[Tensor, int]:
    """(t, c): the k-th largest entry t of the 1-D nonnegative tensor ``a`` and c = #{a ≥ t}.

    1 ≤ k ≤ a.numel(); float32 or float64. Exact: the histogram buckets are
    ranges of bit patterns, so no rounding decides which bucket an entry is in.
    """
    n = a.numel()
    if n <= _EXACT_BELOW or a.dtype not in _INT:
        t = a.kthvalue(n - k + 1).values
        return t, int(torch.count_nonzero(a >= t))
    int_dtype, width = _INT[a.dtype]
    key_bits = max(8, min(20, n.bit_length() - 3))  # ~8 entries per bucket on average
    key = a.view(int_dtype) >> (width - key_bits)  # a ≥ 0: sign bit clear, keys ≥ 0
    hist = torch.bincount(key)
    above = hist.flip(0).cumsum(0)  # above[i]: entries in the top i + 1 buckets
    i = int(torch.searchsorted(above, k))  # the first i with above[i] ≥ k
    n_above = int(above[i - 1]) if i > 0 else 0
    band = a[key == hist.numel() - 1 - i]
    t = band.kthvalue(band.numel() - (k - n_above) + 1).values
    return t, n_above + int(torch.count_nonzero(band >= t))


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Bool mask (scores' shape) of the k largest entries; equal scores keep the lower flat index.

    Scores must be nonnegative (magnitudes, norms, energies). Exact for any size.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    t, count = kth_largest(flat, k)
    keep = flat >= t
    drop_ties(flat, keep, t, count - k)
    return keep.view(scores.shape)


def drop_ties(flat: Tensor, out: Tensor, t: Tensor, extra: int) -> None:
    """In place: zero (or unkeep) ``out`` at the last ``extra`` entries where ``flat == t``."""
    if extra > 0:
        tied = torch.nonzero(flat == t).squeeze(1)
        out.view(-1)[tied[tied.numel() - extra :]] = 0


def ranks(scores: Tensor, dim: int = -1) -> Tensor:
    """Descending rank of every entry along ``dim`` (0 = largest); ties rank lower index first."""
    order = torch.sort(scores, dim=dim, descending=True, stable=True).indices
    size = scores.shape[dim]
    shape = [1] * scores.dim()
    shape[dim] = size
    pos = torch.arange(size, device=scores.device).view(shape).expand_as(order)
    return torch.empty_like(order).scatter_(dim, order, pos)


def ranks_small(scores: Tensor, dim: int) -> Tensor:
    """:func:`ranks` along a short ``dim`` by pairwise comparisons (int16), no sorting.

    rank_i = #{j : s_j > s_i} + #{j < i : s_j = s_i}. For each pair i < j one
    comparison c = [s_j > s_i] adds c to rank_i and 1 − c to rank_j.
    """
    size = scores.shape[dim]
    cols = scores.unbind(dim)

    def zeros() -> Tensor:
        return torch.zeros(cols[0].shape, dtype=torch.int16, device=scores.device)

    above = [zeros() for _ in range(size)]  # Σ_{j>i} [s_j > s_i]
    below = [zeros() for _ in range(size)]  # Σ_{i<j} [s_j > s_i], subtracted from j
    for i in range(size):
        for j in range(i + 1, size):
            c = cols[j] > cols[i]
            above[i] += c
            below[j] += c
    return torch.stack([above[i] - below[i] + i for i in range(size)], dim)
