"""Gap codes (docs/algorithms.md §4): relative indices with escapes and Golomb–Rice.

Each code is checked against a plain-Python encoder that walks the mask and
writes the index bit by bit, and against a decoder that reads those bits back.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualprune.size.indexcodes import (
    MAX_INDEX_BITS,
    MAX_RICE_PARAMETER,
    best_relative,
    best_rice,
    relative_bits,
    relative_fields,
    relative_gaps,
    relative_padding,
    relative_positions,
    rice_bits,
    rice_fields,
    rice_positions,
    rice_unary_ones,
)

# ---- plain-Python reference codes ---------------------------------------------------------


def positions_of(mask: list[bool]) -> list[int]:
    return [i for i, keep in enumerate(mask) if keep]


def ref_relative(mask: list[bool], width: int) -> list[int]:
    """Fields of the relative index: 0 = escape (advance 2^width − 1, no value), else a gap."""
    top, fields, last = 2**width - 1, [], -1
    for pos in positions_of(mask):
        gap = pos - last
        while gap > top:
            fields.append(0)
            gap -= top
        fields.append(gap)
        last = pos
    return fields


def ref_relative_decode(fields: list[int], width: int) -> list[int]:
    pos, out = -1, []
    for f in fields:
        pos += f if f else 2**width - 1
        if f:
            out.append(pos)
    return out


def ref_rice(mask: list[bool], r: int) -> list[int]:
    """The textbook interleaved Rice code: per gap, q ones, a zero, then r bits (LSB first)."""
    bits, last = [], -1
    for pos in positions_of(mask):
        g = pos - last - 1
        bits += [1] * (g >> r) + [0] + [(g >> i) & 1 for i in range(r)]
        last = pos
    return bits


def ref_rice_decode(bits: list[int], r: int) -> list[int]:
    out, pos, i = [], -1, 0
    while i < len(bits):
        q = 0
        while bits[i]:
            q, i = q + 1, i + 1
        i += 1
        rem = sum(bits[i + j] << j for j in range(r))
        i += r
        pos += (q << r) + rem + 1
        out.append(pos)
    return out


dense_masks = st.lists(st.booleans(), min_size=1, max_size=300)


@st.composite
def sparse_masks(draw: st.DrawFn) -> list[bool]:
    """Long weights with few nonzeros: gaps that need escapes at many widths."""
    n = draw(st.integers(1, 70_000))
    positions = draw(st.sets(st.integers(0, n - 1), max_size=12))
    return [i in positions for i in range(n)]


masks = st.one_of(dense_masks, sparse_masks())


def gaps_of(mask: list[bool]) -> torch.Tensor:
    return relative_gaps(torch.tensor(mask))


# ---- properties ---------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(masks, st.integers(1, MAX_INDEX_BITS))
def test_relative_fields_are_the_reference_stream_and_decode_back(mask, width):
    fields = ref_relative(mask, width)
    assert ref_relative_decode(fields, width) == positions_of(mask)
    gaps = gaps_of(mask)
    assert relative_fields(gaps, width).tolist() == fields
    assert relative_padding(gaps, width) == fields.count(0)
    assert relative_bits(gaps, width) == len(fields) * width
    back = relative_positions(torch.tensor(fields, dtype=torch.int64), width)
    assert back.tolist() == positions_of(mask)


@settings(max_examples=80, deadline=None)
@given(masks, st.integers(0, MAX_RICE_PARAMETER))
def test_rice_fields_hold_the_bits_of_the_interleaved_code_and_decode_back(mask, r):
    bits = ref_rice(mask, r)
    assert ref_rice_decode(bits, r) == positions_of(mask)
    gaps = gaps_of(mask)
    unary, remainders = rice_fields(gaps, r)
    assert rice_bits(gaps, r) == len(bits) == unary.numel() + remainders.numel() * r
    assert (
        rice_unary_ones(gaps, r)
        == int(unary.sum())
        == bits.count(1) - sum(bin(int(x)).count("1") for x in remainders)
    )
    # the grouped layout regroups the same words: unary words in order, remainders in order
    assert unary.tolist() == [b for g in gaps.tolist() for b in [1] * ((g - 1) >> r) + [0]]
    assert all(0 <= int(x) < 2**r for x in remainders)
    assert rice_positions(unary, remainders, r).tolist() == positions_of(mask)


@settings(max_examples=60, deadline=None)
@given(masks)
def test_best_parameters_are_the_brute_force_minimum(mask):
    gaps = gaps_of(mask)
    rel = [len(ref_relative(mask, w)) * w for w in range(1, MAX_INDEX_BITS + 1)]
    bits, width, pad = best_relative(gaps)
    assert bits == min(rel) and width == 1 + rel.index(min(rel))  # ties: the narrower
    assert pad == ref_relative(mask, width).count(0)
    rice = [len(ref_rice(mask, r)) for r in range(MAX_RICE_PARAMETER + 1)]
    bits, r, ones = best_rice(gaps)
    assert bits == min(rice) and r == rice.index(min(rice))  # ties: the smaller r
    assert ones == rice_unary_ones(gaps, r)


# ---- boundaries ---------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3, 7])
def test_relative_gaps_of_exactly_2_to_the_b_minus_1_and_2_to_the_b(width):
    top = 2**width - 1
    # gap top fits one field; gap top + 1 needs one escape; gap 2·top + 1 two
    mask = [False] * (top - 1) + [True] + [False] * top + [True] + [False] * (2 * top) + [True]
    gaps = gaps_of(mask)
    assert gaps.tolist() == [top, top + 1, 2 * top + 1]
    fields = relative_fields(gaps, width).tolist()
    assert fields == [top, 0, 1, 0, 0, 1]
    assert relative_positions(torch.tensor(fields), width).tolist() == positions_of(mask)


def test_codes_of_the_corner_masks():
    for mask in ([False] * 9, [True], [True] + [False] * 8, [False] * 8 + [True], [True] * 9):
        gaps = gaps_of(mask)
        for width in (1, 4):
            fields = relative_fields(gaps, width)
            assert relative_positions(fields, width).tolist() == positions_of(mask)
        for r in (0, 3):
            assert rice_positions(*rice_fields(gaps, r), r).tolist() == positions_of(mask)
    assert best_relative(gaps_of([False] * 9)) == (0, 1, 0)  # no nonzeros: no index
    assert best_rice(gaps_of([False] * 9)) == (0, 0, 0)
    assert best_rice(gaps_of([True] * 9)) == (9, 0, 0)  # every gap 1: one 0 bit each


def test_decoders_refuse_streams_that_do_not_close():
    with pytest.raises(ValueError, match="ends on an escape"):
        relative_positions(torch.tensor([3, 0]), 2)
    with pytest.raises(ValueError, match="1 unary words for 2 remainders"):
        rice_positions(torch.tensor([1, 0]), torch.tensor([0, 0]), 1)
    with pytest.raises(ValueError, match="unary words"):
        rice_positions(torch.tensor([0, 1]), torch.tensor([0]), 1)  # a word left open


def test_rice_is_within_a_few_percent_of_the_entropy_of_random_gaps():
    """Random sparsity at density d: gaps are geometric, H = h(d)/d bits a gap."""
    for density in (0.3, 0.05, 0.002):
        mask = torch.rand(400_000, generator=torch.Generator().manual_seed(1)) < density
        gaps = relative_gaps(mask)
        h = -(density * math.log2(density) + (1 - density) * math.log2(1 - density))
        entropy = gaps.numel() * h / density
        bits, _, _ = best_rice(gaps)
        assert 0.99 * entropy <= bits <= 1.04 * entropy  # 0.99: one sample of gaps
        assert bits < best_relative(gaps)[0]  # and below the best fixed-width gap
