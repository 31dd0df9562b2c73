"""Every registered model gets the same checks: forward, backward, head size, traceability."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from dualprune import models

NAMES = models.names()


def _input(name: str, batch: int = 2, **overrides: int) -> torch.Tensor:
    c, h, w = models.spec(name).input_shape
    c = overrides.get("in_channels", c)
    return torch.randn(batch, c, h, w)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name)
    out = model(_input(name))
    assert out.shape == (2, models.spec(name).num_classes)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_changes_head(name: str) -> None:
    model = models.create(name, num_classes=100).eval()
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert heads[-1].out_features == 100
    with torch.no_grad():
        assert model(_input(name)).shape == (2, 100)


@pytest.mark.parametrize("name", NAMES)
def test_in_channels_option(name: str) -> None:
    channels = 3 if models.spec(name).input_shape[0] == 1 else 1
    model = models.create(name, in_channels=channels).eval()
    with torch.no_grad():
        assert model(_input(name, in_channels=channels)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights(name: str) -> None:
    torch.manual_seed(3)
    first = models.create(name).state_dict()
    torch.manual_seed(3)
    second = models.create(name).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", NAMES)
def test_dependency_graph_prunes_first_conv_group(name: str) -> None:
    """torch-pruning traces the model and can remove a coupled channel group physically."""
    model = models.create(name).eval()
    example = torch.randn(1, *models.spec(name).input_shape)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    prune_fn = (
        tp.prune_conv_out_channels if isinstance(first, nn.Conv2d) else tp.prune_linear_out_channels
    )
    width = first.weight.shape[0]
    group = graph.get_pruning_group(first, prune_fn, idxs=[0, 1])
    assert graph.check_pruning_group(group)
    group.prune()
    assert first.weight.shape[0] == width - 2
    with torch.no_grad():
        assert model(_input(name)).shape == (2, 10)


def test_resnet_downsample_shortcut_couples_stage_channels() -> None:
    """Option B: pruning a stage output also prunes its 1×1 shortcut and the next stage inputs."""
    model = models.create("resnet20").eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    group = graph.get_pruning_group(model.layer2[0].conv2, tp.prune_conv_out_channels, idxs=[0])
    group.prune()
    assert model.layer2[0].downsample[0].out_channels == 31
    assert model.layer2[2].conv2.out_channels == 31
    assert model.layer3[0].conv1.in_channels == 31
    assert model.layer3[0].downsample[0].in_channels == 31
