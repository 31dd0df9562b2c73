"""Physical compaction: smaller models that compute exactly what the masked model computes.

Every test compares the compacted model with the masked model in eval mode (max abs
difference ≤ 1e-4) on the example input and on a fresh input of the same shape.
BatchNorm statistics and affine parameters are randomized, so zero filters carry
nonzero constants (what a trained model has), not the zeros of a fresh init.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dualprune as dp
from dualprune import models
from dualprune.compaction.remove import (
    CompactionResult,
    CompactionWarning,
    compact,
    compaction_result,
)
from dualprune.constraints.groups import coupled_masks
from dualprune.errors import CheckpointError, ConfigError, UnknownNameError
from dualprune.graph import channel_groups
from dualprune.plan import prunable_layers
from dualprune.size.metrics import dense_macs

SHAPES = {
    "lenet300": (2, 1, 28, 28),
    "lenet5": (2, 1, 28, 28),
    "resnet20": (2, 3, 8, 8),
    "resnet18_cifar": (2, 3, 8, 8),
    "mobilenetv2_cifar": (2, 3, 8, 8),
    "vgg16_cifar": (2, 3, 32, 32),  # five 2×2 pools need 32×32
}
_ZOO: dict[str, nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run fastest on one thread; more threads only contend on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (β and μ of both signs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def _zoo(name: str) -> nn.Module:
    """One randomized instance per zoo model for the whole file (compact never changes it)."""
    if name not in _ZOO:
        torch.manual_seed(0)
        _ZOO[name] = _randomize(models.create(name))
    return _ZOO[name]


def _masked(model: nn.Module, masks: dp.Masks | None) -> nn.Module:
    ref = copy.deepcopy(model).eval()
    if masks is not None:
        masks.apply(ref)
    return ref


def _assert_same(small: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    """max |small − ref| ≤ 1e-4·max(1, max |ref|): float32 rounding grows with the outputs
    (a 110-layer ResNet with random BatchNorm outputs ~700, where the masked model itself
    differs from its float64 copy by 4e-4)."""
    with torch.no_grad():
        for inp in (x, torch.randn(x.shape, generator=torch.Generator().manual_seed(7))):
            want = ref(inp)
            diff = (small(inp) - want).abs().max().item()
            assert diff <= 1e-4 * max(1.0, want.abs().max().item()), f"differs by {diff:.3g}"


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _compact(model, x, masks=None, **kw):
    """compact() with its CompactionWarning caught; returns (small, plan, warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = compact(model, x, masks, **kw)
    plan = CompactionResult.from_dict(small.dualprune_compaction)
    return small, plan, [w for w in caught if issubclass(w.category, CompactionWarning)]


def _structured(model: nn.Module, x: torch.Tensor, kind: str) -> dp.Masks:
    """filter: every layer but the classifier; channel: every layer with several inputs;
    coupled: every coupled group at half its channels (BatchNorm entries included)."""
    layers = prunable_layers(model)
    if kind == "coupled":
        groups = channel_groups(model, x)
        return dp.Masks(coupled_masks(dict(model.named_parameters()), groups, 0.5))
    if kind == "filter":
        names = list(layers)[:-1]
    else:
        names = [n for n, m in layers.items() if m.weight.shape[1] > 1]
    return dp.Masks.from_constraints(model, {n: dp.Sparsity(0.5, kind) for n in names})


# ---- the zoo, under each structured mask ---------------------------------------------------


@pytest.mark.parametrize("kind", ["filter", "channel", "coupled"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_zoo_model_compacts_exactly_and_shrinks(name, kind):
    model = _zoo(name)
    x = torch.randn(SHAPES[name])
    masks = _structured(model, x, kind)
    small, plan, caught = _compact(model, x, masks)
    _assert_same(small, _masked(model, masks), x)
    assert _params(small) < _params(model)
    assert plan.params_after == _params(small) and plan.params_before == _params(model)
    assert plan.macs_after < plan.macs_before
    assert plan.macs_after == sum(dense_macs(small, x).values())
    modules = dict(small.named_modules())
    for row in plan.layers:
        assert row.shape_after == tuple(modules[row.name].weight.shape)
    state = small.state_dict()
    assert all(tuple(state[k].shape) == v for k, v in plan.shapes.items())
    assert bool(caught) == bool(plan.kept_zeros)
    assert all(r.fold != "new bias" for r in plan.layers)  # zoo architectures stay as they are
    if kind == "coupled":  # every tied slice is masked: all of it can go
        assert plan.kept_zeros == ()
        assert sum(r.pruned_removed for r in plan.layers) == sum(r.pruned for r in plan.layers)


def test_a_110_layer_resnet_compacts():
    torch.manual_seed(0)
    model = _randomize(models.create("resnet110"))
    x = torch.randn(2, 3, 8, 8)
    masks = _structured(model, x, "channel")
    small, _, _ = _compact(model, x, masks)
    _assert_same(small, _masked(model, masks), x)
    assert _params(small) < _params(model)


# ---- what stays, and why -------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["irregular", "column", "block", "nm"])
def test_unstructured_zeros_are_reported_and_outputs_still_equal(structure):
    model = _zoo("lenet5")
    x = torch.randn(SHAPES["lenet5"])
    options = {"block": (4, 4)} if structure == "block" else {}
    masks = dp.Masks.from_constraints(
        model, {n: dp.Sparsity(0.5, structure, **options) for n in ("conv2", "fc1")}
    )
    with pytest.warns(CompactionWarning, match=r"zeros stay in place in \d layer.*conv2"):
        small = compact(model, x, masks)
    _assert_same(small, _masked(model, masks), x)
    plan = compaction_result(model, x, masks)
    assert "conv2" in plan.kept_zeros and "fc1" in plan.kept_zeros
    conv2 = next(r for r in plan.layers if r.name == "conv2")
    assert conv2.pruned == int((~masks["conv2.weight"]).sum())
    assert conv2.pruned_kept > 0 and any("irregular" in r for r in conv2.reasons)


def test_irregular_masks_leave_the_architecture_as_it_is():
    model = _zoo("resnet20")
    x = torch.randn(SHAPES["resnet20"])
    masks = dp.Masks.from_constraints(model, {n: dp.Sparsity(0.5) for n in prunable_layers(model)})
    small, plan, caught = _compact(model, x, masks)
    assert _params(small) == _params(model) and plan.shapes == {}
    assert set(plan.kept_zeros) == set(prunable_layers(model))
    assert caught and "resnet" in str(caught[0].message).lower()


def test_classifier_filters_reach_the_output_and_stay():
    model = _zoo("lenet300")
    x = torch.randn(SHAPES["lenet300"])
    masks = dp.Masks.from_constraints(model, {"fc3": dp.Sparsity(0.5, "filter")})
    small, plan, caught = _compact(model, x, masks)
    assert plan.kept_zeros == ("fc3",) and "fc3" in str(caught[0].message)
    fc3 = next(r for r in plan.layers if r.name == "fc3")
    assert fc3.reasons == ("5 output channels: not in a removable group (a model output, "
                           "or an ignored layer)",)  # fmt: skip
    assert small.fc3.weight.shape == (10, 100)


class ConvBN(nn.Module):
    """conv(3→6, 3×3) → BN → ReLU → conv2 (3×3, padding p) [→ BN] → mean → fc."""

    def __init__(self, padding: int, bn2: bool, bias2: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=padding, bias=bias2)
        self.bn2 = nn.BatchNorm2d(4) if bn2 else nn.Identity()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(y.mean((2, 3)))


def _conv_bn(padding: int, bn2: bool, bias2: bool = False) -> nn.Module:
    """ConvBN with filters 0 and 1 of conv1 zero: BN maps them to +0.7 and −0.3 (→ ReLU 0)."""
    torch.manual_seed(0)
    model = _randomize(ConvBN(padding, bn2, bias2))
    with torch.no_grad():
        model.conv1.weight[:2] = 0
        model.bn1.running_mean[:2] = 0
        model.bn1.running_var[:2] = 1 - model.bn1.eps
        model.bn1.weight[:2] = 1
        model.bn1.bias[:2] = torch.tensor([0.7, -0.3])
    return model


@pytest.mark.parametrize(
    ("bn2", "bias2", "fold"),
    [(True, False, "running_mean of 'bn2'"), (False, False, "new bias"), (False, True, "bias")],
)
def test_a_constant_channel_is_folded_into_an_unpadded_reader(bn2, bias2, fold):
    model = _conv_bn(padding=0, bn2=bn2, bias2=bias2)
    x = torch.randn(2, 3, 9, 9)
    small, plan, caught = _compact(model, x)  # no masks: the zero filters are found
    _assert_same(small, model, x)
    assert small.conv1.weight.shape == (4, 3, 3, 3) and small.conv2.weight.shape == (4, 4, 3, 3)
    assert next(r for r in plan.layers if r.name == "conv2").fold == fold
    assert plan.kept_zeros == () and not caught
    assert ("conv2.bias" in plan.shapes) == (fold == "new bias")


def test_a_nonzero_constant_into_a_zero_padded_conv_stays_and_says_why():
    model = _conv_bn(padding=1, bn2=True)
    x = torch.randn(2, 3, 9, 9)
    small, plan, caught = _compact(model, x)
    _assert_same(small, model, x)
    assert small.conv1.weight.shape == (5, 3, 3, 3)  # filter 1 (ReLU → 0) goes, filter 0 stays
    assert plan.removed["conv1.weight"] == {0: (1,)}
    conv1 = next(r for r in plan.layers if r.name == "conv1")
    assert conv1.pruned_kept == 27
    assert conv1.reasons == (
        "1 output channel: its constant output enters zero-padded 'conv2' (inexact at borders)",
    )
    assert "conv1 (27 of 54 pruned entries)" in str(caught[0].message)


def test_a_linear_reader_absorbs_constants_and_removes_every_zero_filter():
    model = _zoo("lenet300")  # fc1 and fc2 have biases: zero rows output relu(b)
    x = torch.randn(SHAPES["lenet300"])
    masks = dp.Masks.from_constraints(
        model, {"fc1": dp.Sparsity(0.5, "filter"), "fc2": dp.Sparsity(0.5, "filter")}
    )
    small, plan, caught = _compact(model, x, masks)
    _assert_same(small, _masked(model, masks), x)
    assert small.fc1.weight.shape == (150, 784) and small.fc2.weight.shape == (50, 150)
    assert {r.name: r.fold for r in plan.layers} == {"fc1": "", "fc2": "bias", "fc3": "bias"}
    assert plan.kept_zeros == () and not caught


def test_joint_sparse_and_quantized_masks_compact_to_the_quantized_model():
    model = _zoo("lenet5")  # no padding anywhere: every zero filter's constant folds
    x = torch.randn(SHAPES["lenet5"])
    joint = dp.Sparsity(0.5, "filter") & dp.Quantization(bits=4)
    masks = dp.Masks.from_constraints(model, {n: joint for n in ("conv1", "conv2", "fc1")})
    small, plan, caught = _compact(model, x, masks)
    _assert_same(small, _masked(model, masks), x)
    assert plan.kept_zeros == () and not caught
    assert small.fc1.weight.shape == (250, 400)  # 25 of 50 channels × 4×4 positions in
    levels = small.conv2.weight / masks.scales["conv2.weight"]
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # still on α·ℓ


def test_shrunk_masks_fit_the_compacted_model_and_keep_it_in_s():
    model = _zoo("resnet20")
    x = torch.randn(SHAPES["resnet20"])
    joint = dp.Sparsity(0.5, "channel") & dp.Quantization(bits=4, scale="channel")
    layers = [n for n in prunable_layers(model) if n != "conv1"]
    masks = dp.Masks.from_constraints(model, {n: joint for n in layers})
    small, plan, _ = _compact(model, x, masks)
    shrunk = plan.shrink_masks(masks)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    shrunk.apply(small)  # already in S: nothing moves
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    assert shrunk.scales["layer1.0.conv1.weight"].shape[0] < 16
    assert shrunk["layer1.0.conv2.weight"].shape == small.layer1[0].conv2.weight.shape
    with pytest.raises(ConfigError, match="pass the masks the model was compacted with"):
        plan.shrink_masks(dp.Masks({"layer1.0.conv2.weight": torch.ones(16, 2, 3, 3).bool()}))


class Negated(nn.Module):
    """conv1 (1×1, positive weights) → relu(−y) → conv2: on positive inputs the channels are 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1, bias=False)
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(-self.conv1(x))).mean((2, 3))


def test_a_channel_that_is_zero_on_the_example_but_not_always_stays():
    torch.manual_seed(0)
    model = Negated().eval()
    with torch.no_grad():
        model.conv1.weight.abs_()
    x = torch.rand(2, 3, 5, 5) + 0.1  # positive: relu(−conv1(x)) is exactly 0 here
    assert not torch.relu(-model.conv1(x)).any()
    small, _, _ = _compact(model, x)
    assert small.conv1.weight.shape == (4, 3, 1, 1)  # the dependence on x is proved, not sampled
    _assert_same(small, model, -x)


# ---- graph shapes outside the zoo ----------------------------------------------------------


class Concat(nn.Module):
    """Two branches (4 and 6 channels) concatenated into a 1×1 conv, then flatten → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.mix = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(torch.flatten(self.mix(y), 1))


@pytest.mark.parametrize("kind", ["filter", "channel", "coupled"])
def test_concat_and_flatten_into_linear(kind):
    torch.manual_seed(0)
    model = _randomize(Concat())
    x = torch.randn(2, 3, 4, 4)
    if kind == "coupled":
        masks = dp.Masks(
            coupled_masks(dict(model.named_parameters()), channel_groups(model, x), 0.5)
        )
    else:
        layers = ["a", "b", "mix"] if kind == "filter" else ["mix", "fc"]
        masks = dp.Masks.from_constraints(model, {n: dp.Sparsity(0.5, kind) for n in layers})
    small, _, _ = _compact(model, x, masks)
    _assert_same(small, _masked(model, masks), x)
    assert _params(small) < _params(model)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    drop=st.lists(st.booleans(), min_size=10, max_size=10),
    padding=st.sampled_from([0, 1]),
)
def test_any_zero_filters_and_channels_compact_exactly(seed, drop, padding):
    """Property: whatever whole filters of conv1 and input channels of conv2 are zero."""
    torch.manual_seed(seed)
    model = _randomize(ConvBN(padding, bn2=seed % 2 == 0), seed)
    with torch.no_grad():
        model.conv1.weight[torch.tensor(drop[:6])] = 0
        model.conv2.weight[:, torch.tensor(drop[6:] + drop[:2])] = 0
    x = torch.randn(2, 3, 7, 7)
    small, plan, _ = _compact(model, x)
    _assert_same(small, model, x)
    assert plan.params_after <= plan.params_before + 4  # at most a new bias of conv2


# ---- the caller's objects, and the plan as data --------------------------------------------


def test_the_callers_model_and_masks_are_untouched_even_when_attached():
    torch.manual_seed(0)
    model = _randomize(models.create("resnet20")).train()
    x = torch.randn(SHAPES["resnet20"])
    masks = _structured(model, x, "channel")
    masks.attach(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kept = {n: masks[n].clone() for n in masks.names}
    small, _, _ = _compact(model, x, masks)
    assert model.training and small.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(kept[n], masks[n]) for n in masks.names)
    with torch.no_grad():
        want = model.eval()(x)
        assert (small.eval()(x) - want).abs().max() <= 1e-4
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    opt.step()  # the caller's masks still hold its model in S
    assert not model.layer1[0].conv2.weight[~masks["layer1.0.conv2.weight"]].any()
    masks.detach()


def test_plan_round_trips_as_json_and_prints_a_table():
    model = _zoo("lenet5")
    x = torch.randn(SHAPES["lenet5"])
    masks = _structured(model, x, "filter")
    plan = compaction_result(model, x, masks)
    again = CompactionResult.from_dict(json.loads(json.dumps(plan.as_dict())))
    assert again == plan
    text = str(plan)
    assert text.splitlines()[0].split()[:4] == ["layer", "type", "shape", "before"]
    assert "conv1" in text and "parameters 431,080 -> " in text
    with pytest.raises(CheckpointError, match="not a compaction plan"):
        CompactionResult.from_dict({"model": "x"})


def test_ignore_keeps_a_layers_channels():
    model = _zoo("lenet5")
    x = torch.randn(SHAPES["lenet5"])
    masks = _structured(model, x, "filter")
    small, plan, caught = _compact(model, x, masks, ignore=["conv1"])
    assert small.conv1.weight.shape == model.conv1.weight.shape
    assert small.conv2.weight.shape[0] < model.conv2.weight.shape[0]
    assert "conv1" in plan.kept_zeros and caught


# ---- errors a user can cause ---------------------------------------------------------------


def test_masks_naming_an_unknown_parameter():
    model = _zoo("lenet5")
    bad = {"conv3.weight": torch.ones(50, 20, 5, 5, dtype=torch.bool)}
    with pytest.raises(ConfigError, match=r"mask 'conv3.weight' names no parameter.*conv2"):
        compact(model, torch.randn(SHAPES["lenet5"]), bad)


def test_masks_of_the_wrong_shape_or_type():
    model = _zoo("lenet5")
    x = torch.randn(SHAPES["lenet5"])
    with pytest.raises(ConfigError, match=r"mask of 'conv2.weight' has shape 20×50×5×5"):
        compact(model, x, {"conv2.weight": torch.ones(20, 50, 5, 5, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="masks must be a Masks or a mapping"):
        compact(model, x, [torch.ones(3)])


def test_example_input_of_the_wrong_shape_or_dtype():
    model = _zoo("resnet20")
    with pytest.raises(ConfigError, match=r"example_input of shape \(2, 1, 28, 28\) does not run"):
        compact(model, torch.randn(2, 1, 28, 28))
    with pytest.raises(ConfigError, match="example_input is a torch.int64 tensor"):
        compact(model, torch.zeros(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ConfigError, match="example_input is list"):
        compact(model, [torch.randn(2, 3, 8, 8)])


def test_ignore_pattern_matching_nothing():
    model = _zoo("lenet5")
    with pytest.raises(UnknownNameError, match="ignore pattern 'conv9' matches no module"):
        compact(model, torch.randn(SHAPES["lenet5"]), ignore=["conv9"])


def test_leftover_reasons_when_every_output_channel_went():
    """All rows removed leaves an empty rest: no reason, and no crash."""
    from dualprune.compaction.result import leftover_reasons

    pruned = torch.zeros(4, 3, dtype=torch.bool)
    pruned[:, 1] = True
    assert leftover_reasons("fc.weight", pruned, {0: [0, 1, 2, 3]}, {}) == []
    scattered = torch.zeros(4, 3, dtype=torch.bool)
    scattered[2, 0] = True
    assert leftover_reasons("fc.weight", scattered, {}, {}) == [
        "1 entry: not whole output or input channels (irregular, column, block or N:M zeros)"
    ]
