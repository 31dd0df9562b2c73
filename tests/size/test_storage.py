"""Honest storage (docs/algorithms.md §4): each code against a brute-force encoder."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dualprune import models
from dualprune.constraints import Quantization, Sparsity
from dualprune.size.storage import (
    INDEX_KINDS,
    MAX_INDEX_BITS,
    MAX_RICE_PARAMETER,
    code_bits,
    layer_storage,
    model_storage,
    nonzero_code_bits,
    scale_count,
)

# ---- brute force over every code and parameter ---------------------------------------------


def brute_costs(mask: list[bool], levels: list[float] | None) -> dict[tuple[str, int], int]:
    """Bits (without scales) of every code × parameter that can hold the mask.

    Walks the mask and counts each code's fields one by one: none stores every
    entry at ⌈log₂ L⌉ bits; the sparse codes store each nonzero among the nonzero
    levels only, plus a bitmask, relative fields (escape = advance 2^w − 1) or the
    Rice words (q ones, a zero, r bits).
    """
    n, k = len(mask), sum(mask)
    if levels is None:
        b_w = b_nz = 32
    else:
        b_w = max(1, math.ceil(math.log2(len(levels))))
        nonzero = sum(v != 0 for v in levels)
        b_nz = math.ceil(math.log2(nonzero)) if nonzero > 1 else 0
    gaps, last = [], -1
    for pos, keep in enumerate(mask):
        if keep:
            gaps.append(pos - last)
            last = pos
    costs = {}
    if k == n or levels is None or 0.0 in levels:
        costs["none", 0] = n * b_w
    if k < n:
        costs["bitmask", 1] = k * b_nz + n
        for w in range(1, MAX_INDEX_BITS + 1):
            fields = 0
            for g in gaps:
                while g > 2**w - 1:
                    fields, g = fields + 1, g - (2**w - 1)
                fields += 1
            costs["relative", w] = k * b_nz + fields * w
        for r in range(MAX_RICE_PARAMETER + 1):
            costs["rice", r] = k * b_nz + sum(((g - 1) >> r) + 1 + r for g in gaps)
    return costs


dense_masks = st.lists(st.booleans(), min_size=1, max_size=300)


@st.composite
def sparse_masks(draw: st.DrawFn) -> list[bool]:
    """Long weights with few nonzeros, so that gaps need escapes at many widths."""
    n = draw(st.integers(1, 70_000))
    positions = draw(st.sets(st.integers(0, n - 1), max_size=12))
    mask = [False] * n
    for p in positions:
        mask[p] = True
    return mask


masks = st.one_of(dense_masks, sparse_masks())
VALUE_SETS = [
    None,
    Quantization(bits=2),
    Quantization(bits=4),
    Quantization(bits=8, scale="channel"),
    Quantization(levels="ternary"),
    Quantization(levels="binary"),
    Quantization(bits=3, levels="pow2"),
    Quantization(levels=[0.25, 0.5, 1.0]),  # no 0 level
    Quantization(levels=[0.0, 1.0], scale="none"),  # one nonzero level: 0-bit values
]


def layer_weight(mask: list[bool]) -> torch.Tensor:
    return torch.tensor(mask, dtype=torch.float32).reshape(1, -1)


# ---- properties --------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(masks, st.sampled_from(range(len(VALUE_SETS))))
def test_the_chosen_code_is_the_cheapest_of_all_codes_and_parameters(mask, which):
    q = VALUE_SETS[which]
    s = layer_storage(layer_weight(mask), q)
    costs = brute_costs(mask, None if q is None else q.level_values().tolist())
    best = min(costs.values())
    assert s.total_bits - s.scale_bits == best
    assert costs[s.index_kind, s.index_bits_per_entry] == s.value_bits + s.index_bits
    first = min(  # ties: the simpler code, then the smaller parameter
        (INDEX_KINDS.index(kind), param) for (kind, param), c in costs.items() if c == best
    )
    assert (INDEX_KINDS.index(s.index_kind), s.index_bits_per_entry) == first
    assert s.total_bits == s.value_bits + s.index_bits + s.scale_bits
    assert s.dense_bits == 32 * len(mask) and s.bytes == math.ceil(s.total_bits / 8)
    rel = {p: c for (kind, p), c in costs.items() if kind == "relative"}
    rice = {p: c for (kind, p), c in costs.items() if kind == "rice"}
    if rel:  # the best parameter of each code is reported, chosen or not
        assert rel[s.relative_index_bits] == min(rel.values())
        assert rice[s.rice_parameter] == min(rice.values())
        assert s.rice_bits + sum(mask) * s.nonzero_bits == min(rice.values())
    if s.index_kind == "none":
        assert s.value_bits == len(mask) * s.bits and s.index_bits == 0
    else:
        assert s.value_bits == sum(mask) * s.nonzero_bits
    if s.index_kind != "relative":
        assert s.padding == 0
    if all(mask):
        assert s.index_kind == "none" and s.index_bits == 0


@settings(max_examples=40, deadline=None)
@given(masks)
def test_compression_ratios_are_consistent(mask):
    s = layer_storage(layer_weight(mask), Quantization(bits=4))
    assert s.ratio == s.dense_bits / s.total_bits
    # never larger than 4-bit dense storage (+ the scale), never smaller than the values alone
    assert sum(mask) * 4 <= s.total_bits - s.scale_bits <= len(mask) * 4


# ---- exact cases -------------------------------------------------------------------------


def test_a_hand_counted_layer():
    w = torch.zeros(4, 10)
    w.view(-1)[[0, 1, 2, 3, 20, 39]] = 1.0  # gaps 1, 1, 1, 1, 17, 19
    s = layer_storage(w, Sparsity(0.85) & Quantization(bits=4))
    # 4-bit uniform: 15 levels, 14 nonzero ones → 4 bits; values 6·4 = 24
    # relative: widths 1..5 cost (6+34)·1, (6+11)·2, (6+4)·3, (6+2)·4, 6·5 → 3 bits, p = 4
    # rice: r = 0..4 cost 34+6, 17+12, 8+18, 4+24, 2+30 → r = 2, 26 bits; bitmask 40
    assert (s.index_kind, s.index_bits_per_entry, s.padding) == ("rice", 2, 0)
    assert (s.relative_index_bits, s.rice_parameter, s.rice_bits) == (3, 2, 26)
    assert (s.value_bits, s.index_bits, s.scale_bits) == (24, 26, 32)
    assert (s.total_bits, s.bytes, s.dense_bits) == (82, 11, 1280)
    assert s.break_even == (4 + 3) / 4 and s.break_even_pruning == pytest.approx(3 / 7)


def test_relative_wins_on_regular_gaps_and_counts_its_escapes():
    w = torch.zeros(3000)
    w[9::10] = 1.0  # gaps of 10: a 4-bit field each, Rice needs at least 5 bits a gap
    w[1000:1100] = 0.0  # one gap of 1109 − 999 = 110: 7 escapes of 15, no value slot
    s = layer_storage(w, Quantization(bits=8))
    assert (s.index_kind, s.index_bits_per_entry, s.nonzero) == ("relative", 4, 290)
    assert s.padding == (110 - 1) // 15 == 7
    assert s.index_bits == (s.nonzero + s.padding) * 4 and s.value_bits == s.nonzero * 8


def test_admm_nn_break_even_of_8_bit_weights_with_4_bit_indices_is_1_5():
    w = torch.zeros(1000)
    w[9::10] = 1.0  # every gap is 10: fits 4 bits (≤ 15), 3 bits would escape every entry
    s = layer_storage(w, Quantization(bits=8))
    assert s.relative_index_bits == 4 and s.nonzero_bits == s.bits == 8 and s.break_even == 1.5
    assert s.break_even_pruning == pytest.approx(1 / 3)


def test_a_layer_without_zeros_stores_no_index():
    s = layer_storage(torch.ones(3, 5), Quantization(bits=3))
    assert (s.index_kind, s.index_bits, s.value_bits, s.scale_bits) == ("none", 0, 45, 32)
    assert layer_storage(torch.ones(3, 5)).total_bits == 15 * 32
    assert s.break_even is None and s.break_even_pruning is None  # no gaps to size b_idx on


def test_dense_is_kept_below_break_even():
    w = torch.ones(100)
    w[:10] = 0  # 10% sparse 4-bit: bitmask 90·4 + 100 > 100·4, relative, rice ≥ 90·4 + 90
    assert layer_storage(w, Quantization(bits=4)).index_kind == "none"
    assert layer_storage(w).index_kind == "bitmask"  # fp32: 90·32 + 100 < 100·32, ties to rice


def test_sparse_ternary_stores_one_bit_a_value_and_skips_its_zeros():
    w = torch.tensor([1.0, -1.0, 0.0, 1.0] * 8)
    assert layer_storage(w, Quantization(levels="binary")).index_kind != "none"
    t = layer_storage(w, Quantization(levels="ternary"))
    assert (t.bits, t.nonzero_bits, t.nonzero) == (2, 1, 24)
    assert t.value_bits == 24 and t.index_kind != "none"  # 24 + index < 32 · 2
    assert t.break_even == (1 + t.relative_index_bits) / 2


def test_code_bits_and_scales():
    assert code_bits(None) == 32
    assert [code_bits(Quantization(bits=b)) for b in (1, 2, 3, 8)] == [1, 2, 3, 8]
    assert code_bits(Quantization(levels="pow2", bits=4)) == 4
    assert code_bits(Quantization(levels=[-1, -0.5, 0, 0.5, 1])) == 3
    assert code_bits(Sparsity(0.5) & Quantization(bits=5)) == 5
    assert code_bits(Sparsity(0.5)) == 32
    w = torch.zeros(8, 3, 3, 3)
    assert scale_count(w, Quantization(bits=4, scale="channel")) == 8
    assert scale_count(w, Quantization(bits=4)) == 1
    assert scale_count(w, Quantization(levels=[0, 1], scale="none")) == 0
    assert scale_count(w, Sparsity(0.5)) == 0


def test_nonzero_code_bits_count_the_nonzero_levels_only():
    assert nonzero_code_bits(None) == nonzero_code_bits(Sparsity(0.5)) == 32
    assert nonzero_code_bits(Quantization(levels="ternary")) == 1  # the sign
    assert nonzero_code_bits(Quantization(levels="binary")) == 1
    # uniform b-bit: 2^b − 1 levels with 0, 2^b − 2 without: b bits for b ≥ 3
    assert [nonzero_code_bits(Quantization(bits=b)) for b in (2, 3, 4, 8)] == [1, 3, 4, 8]
    assert nonzero_code_bits(Quantization(bits=3, levels="pow2")) == 3  # 6 nonzero levels
    assert nonzero_code_bits(Quantization(levels=[-1, -0.5, 0, 0.5, 1])) == 2  # 4 of 5
    assert nonzero_code_bits(Quantization(levels=[0.25, 0.5, 1.0])) == 2  # no 0: ⌈log₂ 3⌉
    assert nonzero_code_bits(Quantization(levels=[0.0, 1.0], scale="none")) == 0


def test_an_empty_layer_costs_only_its_scale():
    s = layer_storage(torch.zeros(5, 5), Quantization(bits=4))
    assert (s.value_bits, s.index_bits, s.scale_bits) == (0, 0, 32)


def test_model_storage_counts_biases_and_batchnorm_at_fp32():
    lenet = model_storage(models.create("lenet5"))
    assert lenet.other_params == 20 + 50 + 500 + 10 and lenet.buffers == 0
    assert lenet.dense_bits == 32 * 431_080 and lenet.ratio == 1.0
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[0].weight.zero_()
    store = model_storage(net, {"0": Quantization(bits=4)})
    assert store.other_params == 8 and store.buffers == 8  # γ, β; running mean, var
    assert store.layers["0"].total_bits == 32  # all pruned: only the scale
    assert store.total_bits == 32 + 32 * 16 and store.bytes == 4 + 64
    assert store.ratio == store.dense_bytes / store.bytes
