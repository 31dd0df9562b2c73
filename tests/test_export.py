"""Export (docs/export.md): packed files as large as the storage figure, ONNX, torch format."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from dualprune import models
from dualprune.constraints import Quantization, Sparsity
from dualprune.errors import CheckpointError, ConfigError, UnknownNameError
from dualprune.export import (
    export_onnx,
    load_packed,
    load_torch,
    read_manifest,
    save_packed,
    save_torch,
)
from dualprune.export.bits import BitReader, BitWriter, float_codes, float_from_codes
from dualprune.export.layercode import decode_layer, encode_layer, stream_bits, stream_bytes
from dualprune.export.manifest import Record, decode_manifest, encode_manifest
from dualprune.export.onnx import onnx_outputs
from dualprune.export.packed import FORMAT, PAYLOAD
from dualprune.export.torchfmt import changed_layers
from dualprune.indexcodes import relative_gaps
from dualprune.masks import Masks
from dualprune.storage import Storage, layer_storage, model_storage

LENET_LAYERS = ("conv1", "conv2", "fc1", "fc2")


def _same_state(a: nn.Module | dict[str, Tensor], b: nn.Module | dict[str, Tensor]) -> None:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _compressed(name: str, constraint: object, seed: int = 0, **kwargs: object) -> tuple:
    """A zoo model, ``constraint`` on every prunable layer, hard-pruned: (model, masks, cons)."""
    torch.manual_seed(seed)
    model = models.create(name, **kwargs)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    cons = {n: constraint for n in layers}
    masks = Masks.from_constraints(model, cons)
    masks.apply(model)
    return model, masks, cons


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


# ---- manifest ----------------------------------------------------------------------------


ODD_RECORDS = [
    Record("weight", (3, 4), torch.float32),  # module "" (a bare layer)
    Record("bias", (3,), torch.float32),  # default shape: the weight's first dimension
    Record("a.b.in_proj_weight", (3,), torch.float64),  # a leaf outside LEAVES
    Record("a.b.num_batches_tracked", (), torch.int64, value=-5),
    Record("a.b.weight", (2, 0), torch.bfloat16),  # an empty tensor
    Record("a.bx.flag", (4,), torch.bool),  # front coded against "a.b"
    Record("a.bx.steps", (), torch.int64, value=2**62),  # a varint of 9 bytes
    Record("a.bx.t", (), torch.float32),  # a float scalar: an explicit rank 0
    Record("é.ü", (1, 1, 1), torch.uint8),  # UTF-8 names
]


def test_manifest_round_trip_of_odd_records() -> None:
    manifest, ordered = encode_manifest(ODD_RECORDS)
    back, length = decode_manifest(manifest + b"payload bytes")
    assert length == len(manifest) and back == ordered
    assert sorted(r.key for r in back) == sorted(r.key for r in ODD_RECORDS)
    assert [r.key for r in ordered][2:4] == ["a.b.weight", "a.b.num_batches_tracked"]  # LEAVES
    for cut in range(len(manifest)):  # every proper prefix is refused
        with pytest.raises(CheckpointError, match="manifest is corrupt"):
            decode_manifest(manifest[:cut])


def test_manifest_is_a_few_bytes_a_tensor() -> None:
    """A bias after its weight costs one byte; a BatchNorm with its counter, a dozen."""
    layer = {"shape": [20, 1, 5, 5], "q": {"levels": "ternary", "scale": "tensor"},
             "index": "relative", "b_idx": 7, "m": 300, "p": 20}  # fmt: skip
    conv = [Record("conv1.weight", (20, 1, 5, 5), torch.float32, layer=layer),
            Record("conv1.bias", (20,), torch.float32)]  # fmt: skip
    bn = [Record(f"bn1.{leaf}", (20,), torch.float32)
          for leaf in ("weight", "bias", "running_mean", "running_var")]  # fmt: skip
    bn.append(Record("bn1.num_batches_tracked", (), torch.int64, value=100))
    # G, name (2 + 5), leaves, flags, shape (1 + 4), q, code, m (2), p, bias flags
    assert len(encode_manifest(conv)[0]) == 1 + 7 + 1 + 1 + 5 + 1 + 1 + 2 + 1 + 1
    # name (shared, length, "bn1"), leaves, 4 × flags, flags + value (zigzag 200: 2 bytes)
    assert len(encode_manifest(conv + bn)[0]) - len(encode_manifest(conv)[0]) == 5 + 1 + 4 + 3


def test_manifest_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="complex64"):
        encode_manifest([Record("w", (2,), torch.complex64)])
    with pytest.raises(ConfigError, match="'.w' cannot be stored"):
        encode_manifest([Record(".w", (2,), torch.float32)])
    with pytest.raises(ConfigError, match="cannot be held as a value"):
        encode_manifest([Record("w", (2,), torch.int64, value=3)])
    manifest, _ = encode_manifest([Record("w", (2,), torch.float32)])
    with pytest.raises(CheckpointError, match="dtype code 15"):
        decode_manifest(manifest[:-3] + bytes([manifest[-3] | 0x0F]) + manifest[-2:])


# ---- packed files -------------------------------------------------------------------------


def _payload_size(path: Path) -> int:
    """The file is plain safetensors with one uint8 tensor: its length."""
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == [PAYLOAD] and f.metadata() == {"format": FORMAT}
        (size,) = f.get_slice(PAYLOAD).get_shape()
    return size


@pytest.mark.parametrize(
    ("constraint", "figure_bytes"),
    [
        (Sparsity(0.95) & Quantization(bits=3), 25_992),
        (Sparsity(0.95), 104_004),
        (Sparsity(0.997) & Quantization(levels="ternary"), 4_089),  # 1.3K of 430.5K weights
    ],
    ids=["3bit", "fp32", "ternary-300x"],
)
def test_packed_lenet5_matches_storage_figure(
    tmp_path: Path, constraint: object, figure_bytes: int
) -> None:
    """Full LeNet-5 (430.5K weights): the file is the report's figure within 5%, even at 4 kB."""
    model, masks, cons = _compressed("lenet5", constraint)
    path = tmp_path / "lenet5.packed.safetensors"
    info = save_packed(model, path, masks=masks, constraints=cons)
    figure = model_storage(model, cons)
    assert info.storage.bytes == figure.bytes == figure_bytes
    assert info.file_bytes == path.stat().st_size
    assert info.packed_bytes == figure.prunable_bytes  # every layer exactly its bytes
    assert info.other_bytes == figure.other_bits // 8  # biases at fp32, no integer buffers
    assert info.overhead_bytes == info.header_bytes  # nothing but the header on top
    assert info.manifest_bytes <= 80 and info.header_bytes <= 210  # ~128 B of safetensors
    assert info.file_bytes <= 1.05 * figure.bytes
    size = _payload_size(path)
    assert size == info.manifest_bytes + info.packed_bytes + info.other_bytes
    manifest = read_manifest(path)
    for name, s in figure.layers.items():
        entry = manifest[f"{name}.weight"]
        assert (entry["index"], entry["b_idx"]) == (s.index_kind, s.index_bits_per_entry)
        assert stream_bits(entry) == s.total_bits and entry["bytes"] == s.bytes
    _same_state(load_packed(path, models.create("lenet5")), model)


def test_packed_load_without_model_gives_the_state_dict(tmp_path: Path) -> None:
    model, masks, cons = _compressed("lenet5", Sparsity(0.9) & Quantization(bits=4), image_size=16)
    info = save_packed(model, tmp_path / "m.safetensors", masks=masks, constraints=cons)
    state = load_packed(tmp_path / "m.safetensors")
    assert isinstance(state, dict)
    _same_state(state, model)
    manifest = read_manifest(tmp_path / "m.safetensors")
    assert sorted(manifest) == sorted(model.state_dict())
    packed = sorted(k for k, e in manifest.items() if "index" in e)
    assert packed == [f"{n}.weight" for n in sorted(LENET_LAYERS)]
    assert manifest["fc1.weight"]["q"] == {"bits": 4, "scale": "tensor"}
    assert manifest["fc1.bias"] == {
        "shape": [500],
        "dtype": "float32",
        "offset": manifest["fc1.weight"]["offset"] + manifest["fc1.weight"]["bytes"],
        "bytes": 2000,
    }
    offset = info.manifest_bytes  # the streams follow the manifest back to back
    for entry in manifest.values():
        assert entry["offset"] == offset
        offset += entry["bytes"]
    assert offset == _payload_size(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    "quantizer",
    [Quantization(bits=3), Quantization(bits=4, scale="channel"), Quantization(levels="ternary")],
    ids=["3bit", "4bit-channel", "ternary"],
)
def test_packed_scales_recovered_without_masks(tmp_path: Path, quantizer: Quantization) -> None:
    """Constraints alone (no masks file): α is recovered from the weights, bit for bit."""
    model, _, cons = _compressed("lenet5", Sparsity(0.8) & quantizer, seed=1, image_size=16)
    info = save_packed(model, tmp_path / "m.safetensors", constraints=cons)
    assert info.storage.bytes == model_storage(model, cons).bytes
    _same_state(
        load_packed(tmp_path / "m.safetensors", models.create("lenet5", image_size=16)), model
    )


def test_packed_masks_alone_give_the_quantizers(tmp_path: Path) -> None:
    model, masks, cons = _compressed("lenet5", Sparsity(0.9) & Quantization(bits=2), image_size=16)
    info = save_packed(model, tmp_path / "m.safetensors", masks=masks)
    assert {s.bits for s in info.storage.layers.values()} == {2}
    assert info.storage.bytes == model_storage(model, cons).bytes


@pytest.mark.parametrize(
    "constraint",
    [Sparsity(0.7), Sparsity(0.7, "filter") & Quantization(levels="ternary", scale="channel")],
    ids=["fp32", "ternary-channel"],
)
def test_packed_resnet_with_batchnorm(tmp_path: Path, constraint: object) -> None:
    """ResNet-20: data exactly the storage figure; the header well within 5% of it."""
    model, masks, cons = _compressed("resnet20", constraint)
    model.train()
    model(torch.randn(4, 3, 8, 8))  # non-trivial running statistics (small images: fast)
    model.eval()
    model.layer3[2].bn2.num_batches_tracked.fill_(123_456)  # a varint of three bytes
    info = save_packed(model, tmp_path / "r.safetensors", masks=masks, constraints=cons)
    assert info.packed_bytes == info.storage.prunable_bytes
    assert info.other_bytes == info.storage.other_bits // 8  # counters are in the manifest
    assert info.overhead_bytes == info.header_bytes <= 1000  # 128 tensors, 22 packed
    assert info.file_bytes <= 1.05 * info.storage.bytes
    manifest = read_manifest(tmp_path / "r.safetensors")
    assert manifest["layer3.2.bn2.num_batches_tracked"] == {
        "shape": [],
        "dtype": "int64",
        "value": 123_456,
    }
    fresh = load_packed(tmp_path / "r.safetensors", models.create("resnet20")).eval()
    _same_state(fresh, model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


class _OddState(nn.Module):
    """State-dict entries beyond weights and biases: scalars, integer and bool buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3, bias=False).to(torch.bfloat16)
        self.emb = nn.Embedding(5, 2)
        self.temperature = nn.Parameter(torch.tensor(0.5))
        self.register_buffer("steps", torch.tensor(-3))
        self.register_buffer("table", torch.arange(5, dtype=torch.int32))
        self.register_buffer("keep", torch.tensor([True, False, True]))
        self.register_buffer("ref", torch.randn(2, 2, dtype=torch.float64))


def test_packed_odd_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _OddState()
    model.bn.num_batches_tracked.fill_(300)
    cons = {"fc": Sparsity(0.75) & Quantization(levels=[-1.0, -0.25, 0.0, 0.5])}
    masks = Masks.from_constraints(model, cons)
    masks.apply(model)
    info = save_packed(model, tmp_path / "m.safetensors", masks=masks, constraints=cons)
    _same_state(load_packed(tmp_path / "m.safetensors"), model)
    manifest = read_manifest(tmp_path / "m.safetensors")
    assert manifest["steps"]["value"] == -3 and manifest["bn.num_batches_tracked"]["value"] == 300
    assert manifest["head.weight"]["dtype"] == "bfloat16"
    assert manifest["fc.weight"]["q"]["levels"] == [-1.0, -0.25, 0.0, 0.5]
    assert info.other_bytes == sum(
        t.numel() * t.element_size() for k, t in model.state_dict().items()
        if k not in ("fc.weight", "head.weight", "steps", "bn.num_batches_tracked")
    )  # fmt: skip


def test_packed_unconstrained_layers_are_stored_dense(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("lenet5", image_size=16)
    info = save_packed(model, tmp_path / "m.safetensors")
    assert {s.index_kind for s in info.storage.layers.values()} == {"none"}
    assert info.storage.bytes == info.storage.dense_bytes
    _same_state(load_packed(tmp_path / "m.safetensors"), model)


def test_packed_rejects_bad_input(tmp_path: Path) -> None:
    model, _, _ = _compressed("lenet5", Sparsity(0.9), image_size=16)
    with pytest.raises(ConfigError, match=r"'fc1\.weight' is no prunable layer.*fc1"):
        save_packed(model, tmp_path / "m.safetensors", constraints={"fc1.weight": Sparsity(0.9)})
    with pytest.raises(ConfigError, match="not on the grid"):
        save_packed(model, tmp_path / "m.safetensors", constraints={"fc1": Quantization(bits=3)})
    with pytest.raises(ConfigError, match="does not exist"):
        save_packed(model, tmp_path / "no" / "m.safetensors")
    model.register_buffer("phase", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ConfigError, match="'phase' has dtype torch.complex64"):
        save_packed(model, tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_packed_load_errors(tmp_path: Path) -> None:
    model, masks, cons = _compressed("lenet5", Sparsity(0.9) & Quantization(bits=3), image_size=16)
    path = tmp_path / "m.safetensors"
    info = save_packed(model, path, masks=masks, constraints=cons)
    with pytest.raises(CheckpointError, match="does not fit LeNet5"):
        load_packed(path, models.create("lenet5"))  # 28×28: fc1 is larger
    with pytest.raises(CheckpointError, match="does not exist"):
        load_packed(tmp_path / "missing.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_packed(cut)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a dualprune packed file"):
        load_packed(other)
    with safe_open(str(path), framework="pt") as f:
        payload = f.get_tensor(PAYLOAD)
    bad = tmp_path / "bad.safetensors"
    for old in ("dualprune.packed/1", "dualprune.packed/2"):
        save_file({PAYLOAD: payload}, str(bad), metadata={"format": old})
        with pytest.raises(CheckpointError, match=f"in format '{old}', which this version no"):
            read_manifest(bad)
    save_file({PAYLOAD: payload}, str(bad), metadata={"format": "other/1"})
    with pytest.raises(CheckpointError, match="not a dualprune packed file .* 'other/1'"):
        read_manifest(bad)
    save_file({PAYLOAD: payload[:-1]}, str(bad), metadata={"format": FORMAT})  # a byte short
    with pytest.raises(CheckpointError, match="payload has .* its manifest describes"):
        load_packed(bad)
    save_file({PAYLOAD: payload[:20]}, str(bad), metadata={"format": FORMAT})
    with pytest.raises(CheckpointError, match="manifest is corrupt"):
        load_packed(bad)
    entry = read_manifest(path)["fc1.weight"]
    broken = payload.clone()
    broken[entry["offset"] : entry["offset"] + entry["bytes"]] = 255  # gaps run past the end
    save_file({PAYLOAD: broken}, str(bad), metadata={"format": FORMAT})
    with pytest.raises(CheckpointError, match=r"packed weight 'fc1\.weight' is corrupt"):
        load_packed(bad)
    assert payload.numel() == info.manifest_bytes + info.packed_bytes + info.other_bytes


# ---- torch format -------------------------------------------------------------------------


def _narrow_conv(conv: nn.Conv2d, out: int | None = None, inp: int | None = None) -> nn.Conv2d:
    """The first ``out`` filters and ``inp`` input channels of ``conv`` (depthwise: both)."""
    out = out or conv.out_channels
    inp = inp or conv.in_channels
    groups = out if conv.groups > 1 else 1
    new = nn.Conv2d(
        inp,
        out,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight[:out, : inp // groups])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[:out])
    return new


def _narrow_bn(bn: nn.BatchNorm2d, n: int) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(n, eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, key).copy_(getattr(bn, key)[:n])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _check_torch_round_trip(tmp_path: Path, model: nn.Module, arch: dict, x: Tensor) -> dict:
    model.eval()
    path = save_torch(model, tmp_path / "small.safetensors", arch)
    back = load_torch(path)
    assert not back.training
    _same_state(back, model)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["arch"])


def test_torch_lenet5_with_fewer_filters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("lenet5", num_classes=7)
    model.conv1 = _narrow_conv(model.conv1, out=12)
    model.conv2 = _narrow_conv(model.conv2, inp=12)
    arch = _check_torch_round_trip(
        tmp_path, model, {"model": "lenet5", "num_classes": 7}, torch.randn(3, 1, 28, 28)
    )
    assert arch == {
        "model": "lenet5",
        "kwargs": {"num_classes": 7},
        "layers": {
            "conv1": {"in": 1, "out": 12, "groups": 1},
            "conv2": {"in": 12, "out": 50, "groups": 1},
        },
    }


def test_torch_resnet20_with_a_narrower_block(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("resnet20")
    model.train()
    model(torch.randn(4, 3, 8, 8))  # running statistics
    block = model.layer2[1]
    block.conv1 = _narrow_conv(block.conv1, out=9)
    block.bn1 = _narrow_bn(block.bn1, 9)
    block.conv2 = _narrow_conv(block.conv2, inp=9)
    arch = _check_torch_round_trip(
        tmp_path, model, {"model": "resnet20"}, torch.randn(2, 3, 32, 32)
    )
    assert sorted(arch["layers"]) == ["layer2.1.bn1", "layer2.1.conv1", "layer2.1.conv2"]


def test_torch_mobilenet_depthwise_groups(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("mobilenetv2_cifar")
    block = model.blocks[1]
    block.conv_pw = _narrow_conv(block.conv_pw, out=50)
    block.bn1 = _narrow_bn(block.bn1, 50)
    block.conv_dw = _narrow_conv(block.conv_dw, out=50, inp=50)
    block.bn2 = _narrow_bn(block.bn2, 50)
    block.conv_pwl = _narrow_conv(block.conv_pwl, inp=50)
    arch = _check_torch_round_trip(
        tmp_path, model, {"model": "mobilenetv2_cifar"}, torch.randn(1, 3, 8, 8)
    )
    assert arch["layers"]["blocks.1.conv_dw"] == {"in": 50, "out": 50, "groups": 50}


def test_torch_unchanged_model_records_no_layers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("lenet300")
    arch = _check_torch_round_trip(
        tmp_path, model, {"model": "lenet300"}, torch.randn(2, 1, 28, 28)
    )
    assert arch["layers"] == {}
    assert changed_layers(models.create("lenet300"), model) == {}


def test_torch_refuses_what_it_cannot_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = models.create("lenet5")
    model.conv1 = nn.Conv2d(1, 20, 5, stride=2)  # another option than a size
    with pytest.raises(ConfigError, match="'conv1'.*not rebuilt"):
        save_torch(model, path, {"model": "lenet5"})
    model = models.create("lenet5")
    model.extra = nn.Identity()
    with pytest.raises(ConfigError, match="module 'extra'"):
        save_torch(model, path, {"model": "lenet5"})
    model = models.create("lenet5")
    model.conv1 = nn.Sequential(nn.Conv2d(1, 20, 5))
    with pytest.raises(ConfigError, match="differ in module 'conv1.0'"):
        save_torch(model, path, {"model": "lenet5"})
    with pytest.raises(ConfigError, match="zoo model name"):
        save_torch(models.create("lenet5"), path, {"num_classes": 10})
    with pytest.raises(UnknownNameError, match="lenet6"):
        save_torch(models.create("lenet5"), path, {"model": "lenet6"})
    assert not path.exists()


def test_torch_load_errors(tmp_path: Path) -> None:
    model = models.create("lenet5")
    path = save_torch(model, tmp_path / "m.safetensors", {"model": "lenet5"})
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    arch = json.loads(meta["arch"])
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "arch": json.dumps({**arch, "model": "nope"})})
    with pytest.raises(CheckpointError, match="cannot rebuild its model.*nope"):
        load_torch(bad)
    layers = {"conv1": {"in": 1, "out": 3, "groups": 1}}
    save_file(tensors, str(bad), metadata={**meta, "arch": json.dumps({**arch, "layers": layers})})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_torch(bad)
    with pytest.raises(CheckpointError, match="not a dualprune torch export"):
        load_torch(_plain_file(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_torch(tmp_path / "missing.safetensors")


def _plain_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    return path


# ---- ONNX ---------------------------------------------------------------------------------


def _need_onnx() -> None:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)


def test_onnx_dynamo_export_matches_and_keeps_batch_free(tmp_path: Path) -> None:
    _need_onnx()
    torch.manual_seed(0)
    model = models.create("lenet5", image_size=16)
    model.train()
    info = export_onnx(model, torch.zeros(1, 1, 16, 16), tmp_path / "m.onnx")
    assert model.training  # mode restored
    assert info.exporter == "dynamo" and info.file_bytes == (tmp_path / "m.onnx").stat().st_size
    assert info.max_abs_error is not None and info.max_abs_error <= 1e-4
    x = torch.randn(5, 1, 16, 16)
    (y,) = onnx_outputs(tmp_path / "m.onnx", (x,))
    with torch.no_grad():
        assert torch.allclose(y, model.eval()(x), atol=1e-5)


def test_onnx_torchscript_export_of_a_narrowed_model(tmp_path: Path) -> None:
    _need_onnx()
    torch.manual_seed(0)
    model = models.create("lenet5")
    model.conv1 = _narrow_conv(model.conv1, out=12)
    model.conv2 = _narrow_conv(model.conv2, inp=12)
    full = export_onnx(
        models.create("lenet5"),
        torch.zeros(1, 1, 28, 28),
        tmp_path / "full.onnx",
        exporter="torchscript",
    )
    small = export_onnx(
        model, torch.zeros(1, 1, 28, 28), tmp_path / "small.onnx", exporter="torchscript"
    )
    assert small.max_abs_error is not None and small.max_abs_error <= 1e-4
    assert small.file_bytes < full.file_bytes  # 8 × 5 × 5 × 50 fewer conv2 weights


class _TwoFaced(nn.Module):
    """Adds 1 while it is being exported: an export that does not match eager PyTorch."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return x + 1
        return x


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_check_catches_a_mismatch(tmp_path: Path, exporter: str) -> None:
    _need_onnx()
    with pytest.raises(ConfigError, match="does not match PyTorch"):
        export_onnx(_TwoFaced(), torch.zeros(2, 3), tmp_path / "m.onnx", exporter=exporter)
    assert not list(tmp_path.iterdir())  # no file left behind
    info = export_onnx(
        _TwoFaced(), torch.zeros(2, 3), tmp_path / "m.onnx", check=False, exporter=exporter
    )
    assert info.max_abs_error is None and (tmp_path / "m.onnx").is_file()


class _Untraceable(nn.Module):
    """Branches on a tensor's value: torch.export cannot trace it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 2 if bool(x.sum() > 0) else x


def test_onnx_exporter_failure_names_the_other_exporter(tmp_path: Path) -> None:
    _need_onnx()
    with pytest.raises(ConfigError, match="exporter='dynamo' failed.*try exporter='torchscript'"):
        export_onnx(_Untraceable(), torch.ones(1, 3), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_onnx_missing_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript fails
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"pip install 'dualprune\[export\]'"):
        export_onnx(nn.Linear(3, 2), torch.zeros(1, 3), tmp_path / "m.onnx")


def test_onnx_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="dynamo"):
        export_onnx(nn.Linear(3, 2), torch.zeros(1, 3), tmp_path / "m.onnx", exporter="dynamic")
    _need_onnx()
    with pytest.raises(ConfigError, match="example_input"):
        export_onnx(nn.Linear(3, 2), [torch.zeros(1, 3)], tmp_path / "m.onnx")  # type: ignore[arg-type]
