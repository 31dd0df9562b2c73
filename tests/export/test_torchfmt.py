"""The torch format: safetensors plus architecture JSON, rebuilt without pickles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import narrow_conv, same_state
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from dualprune import models
from dualprune.errors import CheckpointError, ConfigError, UnknownNameError
from dualprune.export import (
    load_torch,
    save_torch,
)
from dualprune.export.torchfmt import changed_layers

# ---- torch format -------------------------------------------------------------------------


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
    same_state(back, model)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["arch"])


def test_torch_lenet5_with_fewer_filters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("lenet5", num_classes=7)
    model.conv1 = narrow_conv(model.conv1, out=12)
    model.conv2 = narrow_conv(model.conv2, inp=12)
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
    block.conv1 = narrow_conv(block.conv1, out=9)
    block.bn1 = _narrow_bn(block.bn1, 9)
    block.conv2 = narrow_conv(block.conv2, inp=9)
    arch = _check_torch_round_trip(
        tmp_path, model, {"model": "resnet20"}, torch.randn(2, 3, 32, 32)
    )
    assert sorted(arch["layers"]) == ["layer2.1.bn1", "layer2.1.conv1", "layer2.1.conv2"]


def test_torch_mobilenet_depthwise_groups(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("mobilenetv2_cifar")
    block = model.blocks[1]
    block.conv_pw = narrow_conv(block.conv_pw, out=50)
    block.bn1 = _narrow_bn(block.bn1, 50)
    block.conv_dw = narrow_conv(block.conv_dw, out=50, inp=50)
    block.bn2 = _narrow_bn(block.bn2, 50)
    block.conv_pwl = narrow_conv(block.conv_pwl, inp=50)
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
