"""The zoo's pretrained weights: checked files, strict loads, real accuracy, recipe errors."""

from __future__ import annotations

import pytest
import torch

from dualprune import data, models
from dualprune.data.loader import Loader
from dualprune.errors import CheckpointError, ConfigError, UnknownNameError
from dualprune.models import pretrained
from dualprune.pipeline import validate
from dualprune.train import evaluate


@pytest.mark.parametrize("name", pretrained.names())
def test_every_entry_is_checked_and_loads_strictly(name):
    item = pretrained.entry(name)
    assert pretrained.path(name).stat().st_size <= 5 * 2**20  # ≤ 5 MB each
    model = pretrained.load(f"zoo:{name}")
    assert type(model) is type(models.create(item.model))
    assert set(model.state_dict()) == set(pretrained.state_dict(name))


def test_a_changed_file_is_refused(monkeypatch):
    item = pretrained.PRETRAINED["resnet20-cifar10"]
    forged = type(item)(**{**item.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(pretrained.PRETRAINED, "resnet20-cifar10", forged)
    with pytest.raises(CheckpointError, match="has sha256 .* expected 0000"):
        pretrained.load("resnet20-cifar10")


def test_unknown_name_lists_the_zoo():
    with pytest.raises(UnknownNameError, match="'zoo:resnet21-cifar10' are unknown.*resnet20"):
        pretrained.entry("zoo:resnet21-cifar10")


def test_recipe_refuses_weights_of_another_model():
    raw = {"model": "resnet56", "dataset": "cifar10", "pretrained": "zoo:resnet20-cifar10"}
    with pytest.raises(ConfigError, match="holds resnet20 weights, but the recipe's model"):
        validate(raw)
    with pytest.raises(ConfigError, match="pretrained: pretrained weights 'zoo:nope'"):
        validate({**raw, "pretrained": "zoo:nope"})
    assert validate({**raw, "model": "resnet20"}).pretrained == "zoo:resnet20-cifar10"


@pytest.mark.slow
def test_resnet20_is_a_trained_model(data_root):
    """On 1,000 test images (100 per class) the weights score near their recorded figure."""
    ds = data.load("cifar10", root=data_root)
    pick = torch.cat([torch.nonzero(ds.test_y == c)[:100, 0] for c in range(10)])
    loader = Loader(
        ds.test_x[pick], ds.test_y[pick], batch_size=500, mean=ds.mean, std=ds.std,
        shuffle=False, augment=False,
    )  # fmt: skip
    acc = evaluate(pretrained.load("resnet20-cifar10"), loader)["acc"]
    assert acc > pretrained.entry("resnet20-cifar10").test_acc / 100 - 0.04
