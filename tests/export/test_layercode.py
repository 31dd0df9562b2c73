"""One layer as a bit stream, as large as the storage figure (docs/export.md)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from dualprune.constraints import Quantization, Sparsity
from dualprune.errors import ConfigError
from dualprune.export.layercode import decode_layer, encode_layer, stream_bits, stream_bytes
from dualprune.export.manifest import Record, decode_manifest, encode_manifest
from dualprune.size.indexcodes import relative_gaps
from dualprune.size.storage import Storage, layer_storage

# ---- one layer ----------------------------------------------------------------------------

QUANTIZERS = [
    None,
    Quantization(bits=3),
    Quantization(bits=4, scale="channel"),
    Quantization(levels="ternary"),
    Quantization(levels="binary"),
    Quantization(bits=4, levels="pow2"),
    Quantization(levels=[-0.7, -0.2, 0.0, 0.3, 1.1]),
    Quantization(levels=[-1.0, -0.5, 0.0, 0.5, 1.0], scale="none"),
    Quantization(bits=2, scale="channel"),
    Quantization(levels=[0.0, 0.75], scale="none"),  # one nonzero level: 0-bit values
    Quantization(levels=[-2.0, 0.5, 1.0]),  # no 0 level
]


def _on_grid(w: Tensor, q: Quantization | None, keep: Tensor) -> tuple[Tensor, Tensor | None]:
    """W projected onto q's grid where ``keep`` (zeros elsewhere), and its scales."""
    if q is None:
        return w * keep, None
    codes, scales = q.codes(w, mask=keep)
    return q.dequantize(codes, scales), scales


def _stream_bits(data: Tensor) -> list[int]:
    """The bits of a stream, LSB first (bits.py's order)."""
    return [(int(byte) >> i) & 1 for byte in data for i in range(8)]


def _ref_index_bits(mask: list[bool], kind: str, param: int) -> list[int]:
    """The index a plain-Python encoder writes (docs/export.md), LSB first per field."""
    gaps, last = [], -1
    for pos, keep in enumerate(mask):
        if keep:
            gaps.append(pos - last)
            last = pos
    field = lambda v, w: [(v >> i) & 1 for i in range(w)]  # noqa: E731
    if kind == "bitmask":
        return [int(keep) for keep in mask]
    if kind == "relative":
        top, bits = 2**param - 1, []
        for g in gaps:
            while g > top:
                bits, g = bits + field(0, param), g - top
            bits += field(g, param)
        return bits
    if kind == "rice":  # every unary word, then every remainder
        unary = [b for g in gaps for b in [1] * ((g - 1) >> param) + [0]]
        return unary + [b for g in gaps for b in field((g - 1) % 2**param, param)]
    return []


def _check_layer(w: Tensor, q: Quantization | None, scales: Tensor | None = None) -> Storage:
    """Encode, check the stream against the count and a reference index, decode, compare."""
    data, entry, storage = encode_layer("w", w, q, scales)
    assert storage == layer_storage(w, q)
    assert entry["index"] == storage.index_kind
    assert stream_bits(entry) == storage.total_bits  # the payload is the count, bit for bit
    assert data.numel() == storage.bytes == stream_bytes(entry)
    bits = _stream_bits(data)
    assert not any(bits[storage.total_bits :])  # the last byte is padded with zero bits
    index = _ref_index_bits((w.reshape(-1) != 0).tolist(), entry["index"], entry["b_idx"])
    assert bits[storage.total_bits - storage.index_bits : storage.total_bits] == index
    manifest, _ = encode_manifest([Record("w", tuple(w.shape), w.dtype, layer=entry)])
    (record,), length = decode_manifest(manifest)  # the entry through its binary form
    assert length == len(manifest) and record.layer == {"dtype": str(w.dtype)[6:], **entry}
    back = decode_layer("w", data, record.layer)
    assert back.dtype == w.dtype and torch.equal(back, w)
    return storage


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, len(QUANTIZERS) - 1),
    st.sampled_from([(7,), (6, 5), (4, 3, 3), (3, 2, 2, 2)]),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31),
    st.booleans(),
)
def test_layer_round_trip_is_exact_and_as_large_as_counted(
    qi: int, shape: tuple[int, ...], ratio: float, seed: int, with_scales: bool
) -> None:
    """Every quantizer × sparsity × code: bits equal the storage figure, decode is exact."""
    q = QUANTIZERS[qi]
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) >= ratio
    w, scales = _on_grid(w, q, keep)
    _check_layer(w, q, scales if with_scales else None)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, len(QUANTIZERS) - 1),
    st.integers(1, 20_000),
    st.lists(st.integers(0, 19_999), max_size=40),
    st.integers(0, 2**31),
)
def test_sparse_layer_round_trip_with_long_gaps(
    qi: int, n: int, positions: list[int], seed: int
) -> None:
    """Few nonzeros in a long weight: relative escapes and long Rice words, exactly counted."""
    q = QUANTIZERS[qi]
    keep = torch.zeros(n, dtype=torch.bool)
    keep[[p % n for p in positions]] = True
    w = torch.randn(2, n, generator=torch.Generator().manual_seed(seed))
    w, _ = _on_grid(w, q, torch.stack([keep, keep.roll(7)]))
    _check_layer(w, q)


def _weight(n: int, positions: list[int]) -> Tensor:
    w = torch.zeros(n)
    w[positions] = torch.arange(1, len(positions) + 1, dtype=torch.float32) * 0.25
    return w


CORNERS = {
    "all zero": _weight(50, []),
    "one at the last entry": _weight(50, [49]),
    "one at entry 0": _weight(50, [0]),
    "entry 0 and a far one": _weight(5000, [0, 4999]),
    "gaps 2^b − 1 and 2^b": _weight(1000, [6, 13, 21, 28, 36, 43, 51, 58, 66, 73, 81, 88]),
    "dense": _weight(40, list(range(40))),
    "one entry": _weight(1, [0]),
    "one zero entry": _weight(1, []),
}


@pytest.mark.parametrize("corner", list(CORNERS))
@pytest.mark.parametrize("qi", range(len(QUANTIZERS)))
def test_corner_layers_round_trip(corner: str, qi: int) -> None:
    q, w = QUANTIZERS[qi], CORNERS[corner]
    w, _ = _on_grid(w, q, w != 0)
    _check_layer(w, q)


def test_layer_uses_each_index_code() -> None:
    gen = torch.Generator().manual_seed(3)
    strided = torch.zeros(30, 100)
    strided.view(-1)[9::10] = torch.randn(300, generator=gen)  # gaps of 10: a 4-bit field
    half = Sparsity(0.5).project(torch.randn(40, 30, generator=gen))
    half[-1, -1] = 1.0  # relative at b_idx = 1 (and Rice at r = 0) tie with the bitmask
    cases = {
        "none": torch.randn(40, 30, generator=gen),
        "bitmask": half,
        "relative": strided,
        "rice": Sparsity(0.97).project(torch.randn(40, 30, generator=gen)),  # random gaps
    }
    for kind, w in cases.items():
        assert _check_layer(w, None).index_kind == kind


def test_relative_escapes_hold_no_value() -> None:
    """A gap longer than 2^b_idx − 1 costs escape fields (index 0) and no value slot."""
    gaps = torch.tensor([5 if i % 60 == 59 else 3 for i in range(300)])  # 2-bit gaps hold ≤ 3
    w = torch.zeros(int(gaps.sum()))
    w[gaps.cumsum(0) - 1] = torch.arange(1, 301).float()
    storage = _check_layer(w, None)
    assert (storage.index_kind, storage.index_bits_per_entry, storage.padding) == ("relative", 2, 5)
    _, entry, _ = encode_layer("w", w, None)
    assert (entry["m"], entry["p"]) == (300, 5)
    assert storage.value_bits == 300 * 32 and storage.index_bits == (300 + 5) * 2


def test_sparse_ternary_stores_the_sign_only() -> None:
    q = Quantization(levels="ternary")
    keep = torch.rand(500, 800, generator=torch.Generator().manual_seed(0)) < 0.002
    w, scales = _on_grid(torch.randn(500, 800), q, keep)
    storage = _check_layer(w, q, scales)
    assert storage.nonzero_bits == 1 and storage.value_bits == storage.nonzero
    gaps = relative_gaps(w.reshape(-1) != 0)
    assert storage.index_kind == "rice" and storage.index_bits < gaps.numel() * 12


def test_half_precision_weight_round_trip() -> None:
    w = Sparsity(0.8).project(torch.randn(16, 12)).half()
    data, entry, storage = encode_layer("w", w, None)
    assert entry["dtype"] == "float16" and data.numel() == storage.bytes
    assert torch.equal(decode_layer("w", data, entry), w)


def test_layer_off_its_grid_is_refused() -> None:
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="not on the grid"):
        encode_layer("fc.weight", w, Quantization(bits=3))
    codes, scales = Quantization(bits=3).codes(w)
    with pytest.raises(ConfigError, match="not on the grid"):  # the masks' α does not fit
        encode_layer("fc.weight", codes * scales, Quantization(bits=3), scales * 1.01)


def test_layer_with_float64_weight_is_refused() -> None:
    with pytest.raises(ConfigError, match="float32, float16 or bfloat16"):
        encode_layer("w", torch.ones(3, dtype=torch.float64), None)
