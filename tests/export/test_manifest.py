"""The packed file's binary manifest (docs/export.md)."""

from __future__ import annotations

import pytest
import torch

from dualprune.errors import CheckpointError, ConfigError
from dualprune.export.manifest import Record, decode_manifest, encode_manifest

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
