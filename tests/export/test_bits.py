"""Bit streams (docs/export.md): LSB-first fields and float codes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualprune.export.bits import BitReader, BitWriter, float_codes, float_from_codes

# ---- bit streams --------------------------------------------------------------------------


def test_bits_lsb_first_layout() -> None:
    w = BitWriter()
    w.write(torch.tensor([5, 1]), 3)
    w.write(torch.tensor([1]), 1)
    assert w.bits == 7
    assert w.getvalue().tolist() == [0b1001101]  # 101, 100, 1 read from the low bit


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 32), st.integers(0, 40), st.integers(0, 2**31)),
        min_size=1,
        max_size=6,
    )
)
def test_bits_round_trip(fields: list[tuple[int, int, int]]) -> None:
    writer, sections = BitWriter(), []
    for width, count, seed in fields:
        g = torch.Generator().manual_seed(seed)
        values = torch.randint(0, 2**width, (count,), generator=g, dtype=torch.int64)
        writer.write(values, width)
        sections.append((values, width))
    data = writer.getvalue()
    assert data.numel() == -(-sum(v.numel() * w for v, w in sections) // 8)
    reader = BitReader(data)
    for values, width in sections:
        assert torch.equal(reader.read(values.numel(), width), values)


def test_bits_aligned_and_unaligned_fields_mix() -> None:
    """Whole-byte fields on a byte boundary are copied; the extremes of each width survive."""
    fields = [(32, [0, 2**31, 2**32 - 1, 7]), (16, [2**15, 1]), (3, [5]), (16, [2**16 - 1]),
              (5, [31]), (8, [255, 0, 128]), (32, [2**31 - 1])]  # fmt: skip
    writer = BitWriter()
    for width, values in fields:
        writer.write(torch.tensor(values), width)
    reader = BitReader(writer.getvalue())
    for width, values in fields:
        assert reader.read(len(values), width).tolist() == values
    assert reader.pos == writer.bits == sum(w * len(v) for w, v in fields)


def test_bits_reject_bad_fields() -> None:
    with pytest.raises(ValueError, match="fit"):
        BitWriter().write(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="fields"):
        BitReader(torch.zeros(1, dtype=torch.uint8)).read(3, 3)


def test_float_codes_keep_every_bit_pattern() -> None:
    x = torch.tensor([0.0, -0.0, 1.5, -2.25e-40, float("inf"), float("nan"), -3.4e38])
    back = float_from_codes(float_codes(x))
    assert torch.equal(back.view(torch.int32), x.view(torch.int32))
    w = BitWriter()
    w.write(float_codes(x), 32)
    assert bytes(w.getvalue().numpy()) == x.numpy().tobytes()  # little-endian fp32
