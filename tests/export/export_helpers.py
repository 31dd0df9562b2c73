"""Helpers shared by the export tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dualprune import models
from dualprune.masks.masks import Masks

LENET_LAYERS = ("conv1", "conv2", "fc1", "fc2")


def same_state(a: nn.Module | dict[str, Tensor], b: nn.Module | dict[str, Tensor]) -> None:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def compressed(name: str, constraint: object, seed: int = 0, **kwargs: object) -> tuple:
    """A zoo model, ``constraint`` on every prunable layer, hard-pruned: (model, masks, cons)."""
    torch.manual_seed(seed)
    model = models.create(name, **kwargs)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    cons = {n: constraint for n in layers}
    masks = Masks.from_constraints(model, cons)
    masks.apply(model)
    return model, masks, cons


def narrow_conv(conv: nn.Conv2d, out: int | None = None, inp: int | None = None) -> nn.Conv2d:
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
