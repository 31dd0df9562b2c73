"""Gap codes for the positions of a sparse weight's nonzeros (docs/algorithms.md §4).

Let W have n entries read row-major (flat, across rows, no row pointers), with
nonzeros at positions q_1 < … < q_k and q_0 = −1. The gaps g_j = q_j − q_{j−1} ≥ 1
give the positions back by a cumulative sum, and zeros after the last nonzero cost
nothing (the decoder knows n). Two codes write the gaps:

**Relative indices with escapes** (after Han et al. 2016, §3). Each gap is one or
more b_idx-bit fields, M = 2^b_idx − 1. A field f ∈ 1 … M is a gap of f ending on
a nonzero; the field 0 is an escape: "advance M positions, no value follows". A
gap g is written as e_j = ⌊(g_j − 1)/M⌋ escapes followed by the field g_j − e_j·M,
so the index has (k + p) fields, p = Σ_j e_j, and costs

    (k + p) · b_idx   bits.

Unlike Deep Compression's padding entries, an escape holds no value slot.

**Golomb–Rice** (Golomb 1966, Rice 1979) with parameter r ≥ 0: g_j − 1 = q_j·2^r + ρ_j
with q_j = (g_j − 1) >> r and 0 ≤ ρ_j < 2^r; q_j is written in unary (q_j ones then a
zero) and ρ_j in r bits, so the index costs

    Σ_j (q_j + 1 + r) = U + k·(1 + r)   bits,   U = Σ_j q_j.

The k unary words come first, back to back, then the k remainders of r bits each:
the bits of the textbook interleaved code, grouped so that both halves are
written and read without a loop (the unary part ends at its k-th zero). For
geometric gaps (random sparsity) the best r is within a few percent of the
entropy of the gaps. Both codes keep their parameter in the file's manifest; the
functions below give the exact bits, the fields that are written, and the
positions decoded back.

References:
    Han, Mao, Dally, "Deep Compression", ICLR 2016 (relative indices).
    Golomb, "Run-length encodings", IEEE Trans. Inf. Theory, 1966.
    Rice, "Some practical universal noiseless coding techniques", JPL 79-22, 1979.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "MAX_INDEX_BITS",
    "MAX_RICE_PARAMETER",
    "best_relative",
    "best_rice",
    "relative_bits",
    "relative_fields",
    "relative_gaps",
    "relative_padding",
    "relative_positions",
    "rice_bits",
    "rice_fields",
    "rice_positions",
    "rice_unary_ones",
]

#: The widths b_idx = 1 … MAX_INDEX_BITS and parameters r = 0 … MAX_RICE_PARAMETER searched.
MAX_INDEX_BITS = 16
MAX_RICE_PARAMETER = 16


def relative_gaps(nonzero: Tensor) -> Tensor:
    """Gaps g_j = q_j − q_{j−1} (q_0 = −1) between the nonzeros of a flattened mask (int64)."""
    positions = torch.nonzero(nonzero.reshape(-1)).reshape(-1)  # (k,)
    prev = torch.cat([positions.new_full((1,), -1), positions[:-1]])
    return positions - prev


# ---- relative indices with escapes -------------------------------------------------------


def _escapes(gaps: Tensor, index_bits: int) -> Tensor:
    """e_j = ⌊(g_j − 1)/M⌋ escapes before each nonzero, M = 2^index_bits − 1."""
    return torch.div(gaps - 1, 2**index_bits - 1, rounding_mode="floor")


def relative_padding(gaps: Tensor, index_bits: int) -> int:
    """p = Σ_j ⌊(g_j − 1)/M⌋ escape fields (each advances M = 2^index_bits − 1 positions)."""
    return int(_escapes(gaps, index_bits).sum()) if gaps.numel() else 0


def relative_bits(gaps: Tensor, index_bits: int) -> int:
    """(k + p) · b_idx, the bits of the relative index at width b_idx = ``index_bits``."""
    return (gaps.numel() + relative_padding(gaps, index_bits)) * index_bits


def relative_fields(gaps: Tensor, index_bits: int) -> Tensor:
    """The (k + p,) fields written: e_j zeros (escapes), then g_j − e_j·M, for each gap."""
    top = 2**index_bits - 1
    esc = _escapes(gaps, index_bits)
    last = torch.cumsum(esc + 1, 0) - 1  # field of each nonzero, after its escapes
    fields = torch.zeros(int(esc.sum()) + gaps.numel(), dtype=torch.int64)
    fields[last] = gaps - esc * top
    return fields


def relative_positions(fields: Tensor, index_bits: int) -> Tensor:
    """Positions q_j of the nonzeros from the fields of :func:`relative_fields` (int64).

    Raises:
        ValueError: The fields end on an escape (no nonzero follows it).
    """
    if fields.numel() and int(fields[-1]) == 0:
        raise ValueError("the relative index ends on an escape")
    escape = fields == 0
    step = torch.where(escape, torch.full_like(fields, 2**index_bits - 1), fields)
    return (torch.cumsum(step, 0) - 1)[~escape]


def best_relative(gaps: Tensor) -> tuple[int, int, int]:
    """(bits, b_idx, p) of the cheapest relative index, b_idx in 1 … MAX_INDEX_BITS.

    Ties go to the narrower width. The widths are tried on the distinct gaps
    with their counts, so a search costs one sort of the gaps.
    """
    values, counts = torch.unique(gaps, return_counts=True)
    best = (0, 1, 0)
    for width in range(1, MAX_INDEX_BITS + 1):
        pad = int((_escapes(values, width) * counts).sum()) if values.numel() else 0
        bits = (gaps.numel() + pad) * width
        if width == 1 or bits < best[0]:
            best = (bits, width, pad)
    return best


# ---- Golomb–Rice --------------------------------------------------------------------------


def rice_unary_ones(gaps: Tensor, r: int) -> int:
    """U = Σ_j q_j, q_j = (g_j − 1) >> r: the ones of the unary quotients."""
    return int(((gaps - 1) >> r).sum()) if gaps.numel() else 0


def rice_bits(gaps: Tensor, r: int) -> int:
    """Σ_j (q_j + 1 + r) = U + k·(1 + r), the bits of the Rice index with parameter r."""
    return rice_unary_ones(gaps, r) + gaps.numel() * (1 + r)


def rice_fields(gaps: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """The unary part (U + k,) of 0/1 bits, q_j ones then a zero per gap, and the k remainders."""
    q = (gaps - 1) >> r
    ends = torch.cumsum(q + 1, 0) - 1  # the zero that closes each unary word
    unary = torch.ones(int(ends[-1]) + 1 if gaps.numel() else 0, dtype=torch.int64)
    unary[ends] = 0
    return unary, (gaps - 1) & ((1 << r) - 1)


def rice_positions(unary: Tensor, remainders: Tensor, r: int) -> Tensor:
    """Positions q_j of the nonzeros from the two parts of :func:`rice_fields` (int64).

    Raises:
        ValueError: The unary part does not hold one word per remainder.
    """
    ends = (unary == 0).nonzero().reshape(-1)  # (k,)
    if ends.numel() != remainders.numel() or (unary.numel() and int(unary[-1]) != 0):
        raise ValueError(
            f"the Rice index has {ends.numel()} unary words for {remainders.numel()} remainders"
        )
    q = ends - torch.cat([ends.new_full((1,), -1), ends[:-1]]) - 1
    gaps = (q << r) + remainders + 1
    return torch.cumsum(gaps, 0) - 1


def best_rice(gaps: Tensor) -> tuple[int, int, int]:
    """(bits, r, U) of the cheapest Rice index, r in 0 … MAX_RICE_PARAMETER.

    Ties go to the smaller r; like :func:`best_relative`, on the distinct gaps.
    """
    values, counts = torch.unique(gaps, return_counts=True)
    best = (0, 0, 0)
    for r in range(MAX_RICE_PARAMETER + 1):
        ones = int((((values - 1) >> r) * counts).sum()) if values.numel() else 0
        bits = ones + gaps.numel() * (1 + r)
        if r == 0 or bits < best[0]:
            best = (bits, r, ones)
    return best
