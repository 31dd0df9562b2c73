"""Sparsity structures: the pure projections behind :class:`~dualprune.constraints.Sparsity`.

Every structure is a pair of pure functions: ``<name>_mask(w, ratio, **options)``
returns the support that Π_S keeps (a bool tensor of w's shape) and
``project_<name>(w, ratio, **options)`` returns Π_S(w) itself (``pattern`` lives in
:mod:`~dualprune.constraints.patterns`); one line of
:data:`~dualprune.constraints.registry.STRUCTURES` names the pair, its options and
its shape rules. Shapes are assumed valid here; :meth:`Sparsity.check` validates
them with messages that name the layer.

Conventions (docs/algorithms.md §3):

- A weight is (out, in, *kernel): Linear (out, in), Conv1d (out, in, k), Conv2d
  (out, in/groups, kh, kw). Its *GEMM view* is the matrix G = W.reshape(out, −1)ᵀ
  of shape R × C with R = in·Πk inputs (rows, crossbar wordlines, ordered as
  PyTorch flattens (c, y, x)) and C = out outputs (columns, bitlines).
- k = round((1 − ratio)·count), halves up (:func:`~dualprune.constraints.base.kept_count`);
  ``filter`` and ``channel`` take ``multiple_of`` m, which moves k to the nearest
  positive multiple of m or to count (:func:`~dualprune.constraints.base.round_to_multiple`).
- Groups are scored by ||g||² (a sum of squares); removing a group costs exactly
  that, so keeping the k largest is the exact Euclidean projection.
- Ties: among equal scores the lower index is kept (:mod:`~dualprune.constraints.selection`).
- Scores are computed in float32 (float64 for float64 weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dualprune.constraints.base import kept_count
from dualprune.constraints.selection import drop_ties, kth_largest, ranks, ranks_small, topk_mask

__all__ = [
    "apply_mask",
    "block_mask",
    "channel_mask",
    "column_energy",
    "column_mask",
    "filter_mask",
    "gemm_shape",
    "gemm_view",
    "irregular_mask",
    "nm_mask",
    "project_block",
    "project_channel",
    "project_column",
    "project_filter",
    "project_irregular",
    "project_nm",
    "project_tile_cols",
    "project_tile_rows",
    "score_matrix",
    "tile_cols_mask",
    "tile_energy",
    "tile_rows_mask",
]

_PAIRWISE_UP_TO = 16  # N:M groups up to this M are ranked by pairwise comparisons


def gemm_shape(shape: Sequence[int]) -> tuple[int, int]:
    """(R, C) = (in·Πk, out), the GEMM view's rows (inputs) and columns (outputs)."""
    return math.prod(shape[1:]), shape[0]


def gemm_view(w: Tensor) -> Tensor:
    """G = W.reshape(out, −1)ᵀ, the R × C GEMM view (a view when w is contiguous)."""
    return w.reshape(w.shape[0], -1).t()


def apply_mask(w: Tensor, keep: Tensor) -> Tensor:
    """w where ``keep`` (bool, broadcastable to w) holds, +0 elsewhere; a new contiguous tensor."""
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    if w.requires_grad:  # out= does not record autograd
        return torch.where(keep, w, zero).contiguous()
    return torch.where(keep, w, zero, out=torch.empty(w.shape, dtype=w.dtype, device=w.device))


def _score_dtype(w: Tensor) -> torch.dtype:
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def score_matrix(w: Tensor) -> Tensor:
    """w as the (C, R) = (out, in·Πk) matrix, detached, in the scoring dtype."""
    w2 = w.detach().reshape(w.shape[0], -1)
    return w2 if w2.dtype == _score_dtype(w) else w2.to(_score_dtype(w))


def column_energy(w: Tensor) -> Tensor:
    """Σ_o W[o, r]² for every GEMM row r, (R,)."""
    w2 = score_matrix(w)
    return (w2 * w2).sum(0)


# ---------------------------------------------------------------------------------------
# irregular


def _magnitudes(w: Tensor) -> Tensor:
    a = w.detach().reshape(-1).abs()
    return a if a.dtype in (torch.float32, torch.float64) else a.float()


def irregular_mask(w: Tensor, ratio: float) -> Tensor:
    """Support of Π_S for S = {z : ||z||_0 ≤ k}: the k largest |w| (ties: lower flat index)."""
    return topk_mask(_magnitudes(w), kept_count(ratio, w.numel())).view(w.shape)


def project_irregular(w: Tensor, ratio: float) -> Tensor:
    """Π_S(w) for S = {z : ||z||_0 ≤ k}: keep the k largest |w|, zero the rest (exact).

    One hard-shrinkage pass at the k-th largest magnitude t (|w| ≥ t kept), then
    the surplus entries equal to t, if any, are zeroed from the highest index down.
    """
    n, k = w.numel(), kept_count(ratio, w.numel())
    if k >= n:
        return w.clone()
    if k == 0:
        return torch.zeros_like(w)
    if w.dtype not in (torch.float32, torch.float64):
        return apply_mask(w, irregular_mask(w, ratio))
    w = w.contiguous()
    a = _magnitudes(w)
    t, count = kth_largest(a, k)
    below = torch.nextafter(t, torch.full_like(t, -math.inf))
    out = F.hardshrink(w, float(below)) if float(t) > 0 else w.clone()  # keeps |w| > below
    if float(t) > 0:
        drop_ties(a, out, t, count - k)
    return out


# ---------------------------------------------------------------------------------------
# filter / channel / column: whole rows or columns of the weight


def _filter_keep(w: Tensor, ratio: float, multiple_of: int = 1) -> Tensor:
    w2 = score_matrix(w)
    k = kept_count(ratio, w.shape[0], multiple_of)
    return topk_mask((w2 * w2).sum(1), k)  # ||W[o]||², (out,)


def _channel_keep(w: Tensor, ratio: float, multiple_of: int = 1) -> Tensor:
    e = column_energy(w).view(w.shape[1], -1).sum(1)  # (in,)
    return topk_mask(e, kept_count(ratio, w.shape[1], multiple_of))


def _column_keep(w: Tensor, ratio: float) -> Tensor:
    e = column_energy(w)  # (in·Πk,)
    return topk_mask(e, kept_count(ratio, e.numel()))


def _bcast(keep: Tensor, w: Tensor, dim: int) -> Tensor:
    """keep over dim 0 (filters), dim 1 (channels) or dims 1.. (columns), viewed against w."""
    if dim == 0:
        return keep.view(-1, *([1] * (w.dim() - 1)))
    if dim == 1:
        return keep.view(1, -1, *([1] * (w.dim() - 2)))
    return keep.view(1, *w.shape[1:])


def filter_mask(w: Tensor, ratio: float, multiple_of: int = 1) -> Tensor:
    """Support of Π_S, S = {at most k nonzero filters W[o]}: the k largest ||W[o]||.

    k = kept_count(ratio, out, multiple_of): with m = ``multiple_of`` > 1 the count
    of :func:`~dualprune.constraints.base.round_to_multiple` (a multiple of m, or out).
    """
    return _bcast(_filter_keep(w, ratio, multiple_of), w, 0).expand(w.shape).contiguous()


def project_filter(w: Tensor, ratio: float, multiple_of: int = 1) -> Tensor:
    """Π_S(w), S = {at most k nonzero filters W[o]} (a column of the GEMM view); exact.

    k as in :func:`filter_mask`.
    """
    return apply_mask(w, _bcast(_filter_keep(w, ratio, multiple_of), w, 0))


def channel_mask(w: Tensor, ratio: float, multiple_of: int = 1) -> Tensor:
    """Support of Π_S, S = {at most k nonzero input channels W[:, c]}.

    k = kept_count(ratio, in, multiple_of), as for :func:`filter_mask`.
    """
    return _bcast(_channel_keep(w, ratio, multiple_of), w, 1).expand(w.shape).contiguous()


def project_channel(w: Tensor, ratio: float, multiple_of: int = 1) -> Tensor:
    """Π_S(w), S = {at most k nonzero input channels W[:, c]}; exact (k as in channel_mask)."""
    return apply_mask(w, _bcast(_channel_keep(w, ratio, multiple_of), w, 1))


def column_mask(w: Tensor, ratio: float) -> Tensor:
    """Support of Π_S, S = {at most k nonzero shapes W[:, c, y, x]}."""
    return _bcast(_column_keep(w, ratio), w, 2).expand(w.shape).contiguous()


def project_column(w: Tensor, ratio: float) -> Tensor:
    """Π_S(w), S = {at most k nonzero shapes W[:, c, y, x]} (one input row of the GEMM view).

    The name follows the papers' (out × in·Πk) im2col matrix, where this group is
    a column; in dualprune's (in·Πk × out) GEMM view it is a row (one wordline).
    """
    return apply_mask(w, _bcast(_column_keep(w, ratio), w, 2))


# ---------------------------------------------------------------------------------------
# tiles of the GEMM view: block, tile_rows, tile_cols


def _grid(w: Tensor, block: tuple[int, int]) -> tuple[int, int, int, int, int, int]:
    """(R, C, br, bc, TR, TC): GEMM view size, tile size, tile grid (edge tiles partial)."""
    r, c = gemm_shape(w.shape)
    br, bc = block
    return r, c, br, bc, -(-r // br), -(-c // bc)


def _segment_energy(w: Tensor, br: int) -> Tensor:
    """Σ over each run of br consecutive GEMM rows of W[o, r]²: (C, TR) (the last run partial)."""
    w2 = score_matrix(w)
    e = w2 * w2
    if e.shape[1] % br:
        e = F.pad(e, (0, -e.shape[1] % br))
    return e if br == 1 else e.view(e.shape[0], -1, br).sum(2)


def _expand(keep: Tensor, w: Tensor, block: tuple[int, int]) -> Tensor:
    """A keep matrix indexed (C or TC, R or TR) → a bool tensor of w's shape."""
    r, c, br, bc, tr, tc = _grid(w, block)
    if keep.shape[0] == tc and bc > 1:
        keep = keep.repeat_interleave(bc, 0)[:c]
    if keep.shape[1] == tr and br > 1:
        keep = keep.repeat_interleave(br, 1)[:, :r]
    return keep.reshape(w.shape)


def _apply_tiles(w: Tensor, keep: Tensor, block: tuple[int, int]) -> Tensor:
    """w ⊙ expand(keep), broadcasting instead of expanding when the tiles divide the view."""
    r, c, br, bc, tr, tc = _grid(w, block)
    by_c, by_r = keep.shape[0] == tc and bc > 1, keep.shape[1] == tr and br > 1
    if (not by_c or c % bc == 0) and (not by_r or r % br == 0):
        view = w.reshape(tc if by_c else c, bc if by_c else 1, tr if by_r else r, br if by_r else 1)
        return apply_mask(view, keep[:, None, :, None]).view(w.shape)
    return apply_mask(w, _expand(keep, w, block))


def _block_keep(w: Tensor, ratio: float, block: tuple[int, int]) -> Tensor:
    """(TC, TR) keep of the k tiles with the largest norm (ties: lower row-major tile index)."""
    e = tile_energy(w, block)  # (TR, TC)
    return topk_mask(e, kept_count(ratio, e.numel())).t()


def tile_energy(w: Tensor, block: tuple[int, int]) -> Tensor:
    """||tile||² of every br×bc tile of the GEMM view, as (TR, TC) (row-major tile grid)."""
    _, c, br, bc, tr, tc = _grid(w, block)
    e = _segment_energy(w, br)  # (C, TR)
    if c % bc:
        e = F.pad(e, (0, 0, 0, -c % bc))
    return e.view(tc, bc, tr).sum(1).t()


def block_mask(w: Tensor, ratio: float, block: tuple[int, int] = (128, 128)) -> Tensor:
    """Support of Π_S, S = {at most k nonzero br×bc tiles of the GEMM view}."""
    return _expand(_block_keep(w, ratio, block), w, block)


def project_block(w: Tensor, ratio: float, block: tuple[int, int] = (128, 128)) -> Tensor:
    """Π_S(w), S = {at most k nonzero br×bc tiles of the GEMM view}; exact.

    Edge tiles of a view whose size is not a multiple of the block are smaller, so
    ``ratio`` is then a fraction of tiles rather than exactly of weights.
    """
    return _apply_tiles(w, _block_keep(w, ratio, block), block)


def _keep_per_tile(scores: Tensor, sizes: list[int], ratio: float, dim: int) -> Tensor:
    """Keep the round((1 − ratio)·size_t) largest along ``dim`` of each tile t = scores[t].

    Padding entries are −1 so they rank last; ``sizes`` gives each tile's real length.
    """
    k = torch.tensor([kept_count(ratio, s) for s in sizes], device=scores.device)
    return ranks(scores, dim) < k.view(-1, *([1] * (scores.dim() - 1)))


def _tile_rows_keep(w: Tensor, ratio: float, block: tuple[int, int]) -> Tensor:
    r, c, br, bc, tr, tc = _grid(w, block)
    w2 = score_matrix(w)
    e = w2 * w2
    if c % bc:
        e = F.pad(e, (0, 0, 0, -c % bc))
    e = F.pad(e.view(tc, bc, r).sum(1), (0, tr * br - r), value=-1.0)  # (TC, TR·br)
    e = e.view(tc, tr, br).transpose(0, 1)  # (TR, TC, br): row segments of each tile
    keep = _keep_per_tile(e, [min(br, r - i * br) for i in range(tr)], ratio, dim=2)
    return keep.transpose(0, 1).reshape(tc, tr * br)[:, :r]  # (TC, R)


def tile_rows_mask(w: Tensor, ratio: float, block: tuple[int, int] = (128, 128)) -> Tensor:
    """Support of Π_S, S = {in every br×bc tile, at most k_t nonzero rows (wordline segments)}.

    k_t = round((1 − ratio)·rows of tile t); a row segment is G[r, tile's columns].
    """
    return _expand(_tile_rows_keep(w, ratio, block), w, block)


def project_tile_rows(w: Tensor, ratio: float, block: tuple[int, int] = (128, 128)) -> Tensor:
    """Π_S(w) for :func:`tile_rows_mask`'s set: the largest-norm rows of each tile; exact."""
    return _apply_tiles(w, _tile_rows_keep(w, ratio, block), block)


def _tile_cols_keep(w: Tensor, ratio: float, block: tuple[int, int]) -> Tensor:
    _, c, br, bc, tr, tc = _grid(w, block)
    e = F.pad(_segment_energy(w, br), (0, 0, 0, tc * bc - c), value=-1.0)  # (TC·bc, TR)
    e = e.view(tc, bc, tr)  # column segments of tile (i, j) along dim 1
    keep = _keep_per_tile(e, [min(bc, c - j * bc) for j in range(tc)], ratio, dim=1)
    return keep.reshape(tc * bc, tr)[:c]  # (C, TR)


def tile_cols_mask(w: Tensor, ratio: float, block: tuple[int, int] = (128, 128)) -> Tensor:
    """Support of Π_S, S = {in every br×bc tile, at most k_t nonzero columns (bitline segments)}.

    k_t = round((1 − ratio)·columns of tile t); a column segment is G[tile's rows, o].
    """
    return _expand(_tile_cols_keep(w, ratio, block), w, block)


def project_tile_cols(w: Tensor, ratio: float, block: tuple[int, int] = (128, 128)) -> Tensor:
    """Π_S(w) for :func:`tile_cols_mask`'s set: the largest-norm columns of each tile; exact."""
    return _apply_tiles(w, _tile_cols_keep(w, ratio, block), block)


# ---------------------------------------------------------------------------------------
# N:M along the input channels


def nm_mask(w: Tensor, ratio: float, n: int | None = None, m: int = 4) -> Tensor:
    """Support of Π_S, S = {at most n_eff nonzeros in every M consecutive input channels}.

    Groups run along the input-channel dimension at each (out, *kernel) position,
    as sparse tensor cores read a Conv weight in (out, kh, kw, in) order. n_eff =
    min(n, round((1 − ratio)·m)); ``n`` defaults to m, so ``ratio`` alone sets it.
    Ties: the lower channel keeps.
    """
    n_eff = min(m if n is None else n, kept_count(ratio, m))
    if n_eff >= m:
        return torch.ones(w.shape, dtype=torch.bool, device=w.device)
    a = w.detach().abs()
    a = a if a.dtype in (torch.float32, torch.float64) else a.float()
    groups = a.reshape(w.shape[0] * (w.shape[1] // m), m, -1)  # (out·in/m, m, Πk)
    rank = ranks_small(groups, 1) if m <= _PAIRWISE_UP_TO else ranks(groups, 1)
    return (rank < n_eff).view(w.shape)


def project_nm(w: Tensor, ratio: float, n: int | None = None, m: int = 4) -> Tensor:
    """Π_S(w) for :func:`nm_mask`'s set: the n_eff largest |w| of each group of m; exact."""
    return apply_mask(w, nm_mask(w, ratio, n, m))
