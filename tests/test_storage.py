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
from dualprune.storage import (
    MAX_INDEX_BITS,
    code_bits,
    layer_storage,
    model_storage,
    relative_gaps,
    relative_padding,
    scale_count,
)

# ---- a brute-force relative-index encoder ------------------------------------------------


def encode_relative(mask: list[bool], width: int) -> list[tuple[int, bool]]:
    """The index stream of Deep Compression: (gap, is_padding) per stored entry.

    Walks the flat mask; a gap that does not fit in ``width`` bits (> 2^width − 1)
    is bridged by padding entries of the largest gap, each a stored zero.
    """
    top = 2**width - 1
    stream: list[tuple[int, bool]] = []
    last = -1
    for pos, keep in enumerate(mask):
        if not keep:
            continue
        gap = pos - last
        while gap > top:
            stream.append((top, True))
            gap -= top
        stream.append((gap, False))
        last = pos
    return stream


def decode_relative(stream: list[tuple[int, bool]]) -> list[int]:
    pos, out = -1, []
    for gap, padding in stream:
        pos += gap
        if not padding:
            out.append(pos)
    return out


def brute_costs(mask: list[bool], b: int, zero_ok: bool) -> dict[str, int]:
    """Bits (without scales) of every code that can hold the mask."""
    n, k = len(mask), sum(mask)
    costs = {}
    if k == n or zero_ok:
        costs["none"] = n * b
    if k < n:
        costs["bitmask"] = k * b + n
        rel = []
        for width in range(1, MAX_INDEX_BITS + 1):
            stream = encode_relative(mask, width)
            pads = sum(p for _, p in stream)
            if pads and not zero_ok:
                continue
            rel.append(len(stream) * (b + width))
        if rel:
            costs["relative"] = min(rel)
    return costs


dense_masks = st.lists(st.booleans(), min_size=1, max_size=300)


@st.composite
def sparse_masks(draw: st.DrawFn) -> list[bool]:
    """Long weights with few nonzeros, so that gaps need padding at many widths."""
    n = draw(st.integers(1, 70_000))
    positions = draw(st.sets(st.integers(0, n - 1), max_size=12))
    mask = [False] * n
    for p in positions:
        mask[p] = True
    return mask


masks = st.one_of(dense_masks, sparse_masks())
VALUE_SETS = [
    None,
    Quantization(bits=4),
    Quantization(bits=8, scale="channel"),
    Quantization(levels="ternary"),
    Quantization(levels="binary"),
    Quantization(levels=[0.25, 0.5, 1.0]),  # no 0 level
]


def weight_of(mask: list[bool]) -> torch.Tensor:
    return torch.tensor(mask, dtype=torch.float32).reshape(1, -1)


# ---- properties --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(masks, st.integers(1, MAX_INDEX_BITS))
def test_relative_padding_counts_the_padding_of_a_real_index_stream(mask, width):
    stream = encode_relative(mask, width)
    assert decode_relative(stream) == [i for i, m in enumerate(mask) if m]
    assert all(1 <= gap <= 2**width - 1 for gap, _ in stream)
    gaps = relative_gaps(torch.tensor(mask))
    assert relative_padding(gaps, width) == sum(p for _, p in stream)


@settings(max_examples=60, deadline=None)
@given(masks, st.sampled_from(range(len(VALUE_SETS))))
def test_the_chosen_code_is_the_cheapest_possible_one(mask, which):
    q = VALUE_SETS[which]
    w = weight_of(mask)
    s = layer_storage(w, q)
    b = code_bits(q)
    zero_ok = q is None or bool((q.level_values() == 0).any())
    costs = brute_costs(mask, b, zero_ok)
    assert s.total_bits - s.scale_bits == min(costs.values())
    assert costs[s.index_kind] == s.value_bits + s.index_bits
    assert s.total_bits == s.value_bits + s.index_bits + s.scale_bits
    assert s.dense_bits == 32 * len(mask) and s.bytes == math.ceil(s.total_bits / 8)
    if s.index_kind == "bitmask":
        assert s.index_bits == len(mask) and s.index_bits_per_entry == 1
    if s.index_kind == "relative":
        stream = encode_relative(mask, s.index_bits_per_entry)
        assert s.index_bits == len(stream) * s.index_bits_per_entry
        assert s.value_bits == len(stream) * b and s.padding == sum(p for _, p in stream)
    if all(mask):
        assert s.index_kind == "none" and s.index_bits == 0


@settings(max_examples=40, deadline=None)
@given(masks)
def test_compression_ratios_are_consistent(mask):
    s = layer_storage(weight_of(mask), Quantization(bits=4))
    assert s.ratio == s.dense_bits / s.total_bits
    # never larger than 4-bit dense storage (+ the scale), never smaller than the values alone
    assert sum(mask) * 4 <= s.total_bits - s.scale_bits <= len(mask) * 4


# ---- exact cases -------------------------------------------------------------------------


def test_a_hand_counted_layer():
    w = torch.zeros(4, 10)
    w.view(-1)[[0, 1, 2, 3, 20, 39]] = 1.0  # gaps 1, 1, 1, 1, 17, 19
    s = layer_storage(w, Sparsity(0.85) & Quantization(bits=4))
    # widths 1..6 cost (6+34)·5, (6+11)·6, (6+4)·7, (6+2)·8, 6·9, 6·10; bitmask 6·4+40
    assert (s.index_kind, s.index_bits_per_entry, s.padding) == ("relative", 5, 0)
    assert (s.value_bits, s.index_bits, s.scale_bits) == (24, 30, 32)
    assert (s.total_bits, s.bytes, s.dense_bits) == (86, 11, 1280)
    assert s.break_even == (4 + 5) / 4 and s.break_even_pruning == pytest.approx(5 / 9)


def test_admm_nn_break_even_of_8_bit_weights_with_4_bit_indices_is_1_5():
    w = torch.zeros(1000)
    w[9::10] = 1.0  # every gap is 10: fits 4 bits (≤ 15), 3 bits would pad every entry
    s = layer_storage(w, Quantization(bits=8))
    assert s.relative_index_bits == 4 and s.break_even == 1.5
    assert s.break_even_pruning == pytest.approx(1 / 3)


def test_a_layer_without_zeros_stores_no_index():
    s = layer_storage(torch.ones(3, 5), Quantization(bits=3))
    assert (s.index_kind, s.index_bits, s.value_bits, s.scale_bits) == ("none", 0, 45, 32)
    assert layer_storage(torch.ones(3, 5)).total_bits == 15 * 32
    assert s.break_even is None and s.break_even_pruning is None  # no gaps to size b_idx on


def test_dense_is_kept_below_break_even():
    w = torch.ones(100)
    w[:10] = 0  # 10% sparse 4-bit: bitmask 90·4 + 100 > 100·4, relative ≥ 90·(4 + 1)
    assert layer_storage(w, Quantization(bits=4)).index_kind == "none"
    assert layer_storage(w).index_kind == "bitmask"  # fp32: 90·32 + 100 < 100·32


def test_binary_with_zeros_needs_an_index_and_ternary_zeros_are_skipped():
    w = torch.tensor([1.0, -1.0, 0.0, 1.0] * 8)
    assert layer_storage(w, Quantization(levels="binary")).index_kind != "none"
    t = layer_storage(w, Quantization(levels="ternary"))
    assert t.bits == 2 and t.nonzero == 24


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
