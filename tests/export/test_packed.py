"""Packed files: as large as the storage figure, bit-identical on load (docs/export.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_helpers import LENET_LAYERS, compressed, same_state
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dualprune import models
from dualprune.constraints import Quantization, Sparsity
from dualprune.errors import CheckpointError, ConfigError
from dualprune.export import (
    load_packed,
    read_manifest,
    save_packed,
)
from dualprune.export.layercode import stream_bits
from dualprune.export.packed import FORMAT, PAYLOAD
from dualprune.masks.masks import Masks
from dualprune.size.storage import model_storage

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
    model, masks, cons = compressed("lenet5", constraint)
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
    same_state(load_packed(path, models.create("lenet5")), model)


def test_packed_load_without_model_gives_the_state_dict(tmp_path: Path) -> None:
    model, masks, cons = compressed("lenet5", Sparsity(0.9) & Quantization(bits=4), image_size=16)
    info = save_packed(model, tmp_path / "m.safetensors", masks=masks, constraints=cons)
    state = load_packed(tmp_path / "m.safetensors")
    assert isinstance(state, dict)
    same_state(state, model)
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
    model, _, cons = compressed("lenet5", Sparsity(0.8) & quantizer, seed=1, image_size=16)
    info = save_packed(model, tmp_path / "m.safetensors", constraints=cons)
    assert info.storage.bytes == model_storage(model, cons).bytes
    same_state(
        load_packed(tmp_path / "m.safetensors", models.create("lenet5", image_size=16)), model
    )


def test_packed_masks_alone_give_the_quantizers(tmp_path: Path) -> None:
    model, masks, cons = compressed("lenet5", Sparsity(0.9) & Quantization(bits=2), image_size=16)
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
    model, masks, cons = compressed("resnet20", constraint)
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
    same_state(fresh, model)
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
    same_state(load_packed(tmp_path / "m.safetensors"), model)
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
    same_state(load_packed(tmp_path / "m.safetensors"), model)


def test_packed_rejects_bad_input(tmp_path: Path) -> None:
    model, _, _ = compressed("lenet5", Sparsity(0.9), image_size=16)
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
    model, masks, cons = compressed("lenet5", Sparsity(0.9) & Quantization(bits=3), image_size=16)
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
