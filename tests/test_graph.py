"""Coupled channels: residual adds, concatenations, depthwise convs, flatten into Linear.

Every removability test projects, then removes the same channels physically with
torch-pruning on a copy and checks that the small model computes what the masked
one computes (eval mode).
"""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
import torch
import torch_pruning as tp
from torch import nn

from dualprune.constraints.groups import (
    ROLES,
    ChannelGroup,
    coupled_masks,
    group_scores,
    keep_channels,
    project_coupled,
)
from dualprune.errors import ConstraintError, UnknownNameError
from dualprune.graph import channel_groups
from resnets import Block


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run fastest on one thread; more threads only contend on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ResNet2(nn.Module):
    """stem → block(8→8, identity shortcut) → block(8→12, conv shortcut) → pool → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8, 8)
        self.block2 = Block(8, 12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    """Two branches (4 and 6 channels) concatenated into a 1×1 conv, then flatten → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 2).flatten(1))


class Separable(nn.Module):
    """Pointwise → depthwise → pointwise (MobileNet's separable block) → pool → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.pw1 = nn.Conv2d(3, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw2 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.pw1(x))))))
        return self.fc(self.pw2(x).mean((2, 3)))


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so every slice matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model


def _tied(group: ChannelGroup) -> set[tuple[str, int]]:
    return {(s.param, s.dim) for s in group.slices}


def _by_root(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {g.root: g for g in groups}


def _removed_physically(model, x, groups, keeps) -> nn.Module:
    """A copy of ``model`` with the dropped channels of each group cut out by torch-pruning."""
    small = copy.deepcopy(model)
    dg = tp.DependencyGraph().build_dependency(small, example_inputs=x)
    modules = dict(small.named_modules())
    for group, keep in zip(groups, keeps, strict=True):
        root = modules[group.root]
        drop = [c for c in range(group.channels) if not keep[c]]
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, drop).prune()
    return small


def _check_removable(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> None:
    torch.manual_seed(1)
    _randomize(model)
    groups = channel_groups(model, x)
    params = dict(model.named_parameters())
    keeps = [keep_channels(params, g, ratio) for g in groups]
    model.load_state_dict(project_coupled(params, groups, ratio), strict=False)
    model.eval()
    small = _removed_physically(model, x, groups, keeps)
    n_big = sum(p.numel() for p in model.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < n_big
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


# ---- which slices are tied ---------------------------------------------------------------


def test_residual_add_ties_stem_block_outputs_and_consumers():
    groups = _by_root(channel_groups(ResNet2(), torch.randn(1, 3, 8, 8)))
    stem = next(g for g in groups.values() if ("stem.weight", 0) in _tied(g))
    assert stem.channels == 8
    assert _tied(stem) == {
        ("stem.weight", 0),
        ("bn.weight", 0),
        ("bn.bias", 0),
        ("block1.conv1.weight", 1),
        ("block1.conv2.weight", 0),  # added to the identity shortcut
        ("block1.bn2.weight", 0),
        ("block1.bn2.bias", 0),
        ("block2.conv1.weight", 1),
        ("block2.shortcut.0.weight", 1),
    }
    out2 = next(g for g in groups.values() if ("block2.conv2.weight", 0) in _tied(g))
    assert {("block2.shortcut.0.weight", 0), ("fc.weight", 1)} <= _tied(out2)
    assert _tied(groups["block1.conv1"]) == {
        ("block1.conv1.weight", 0),
        ("block1.bn1.weight", 0),
        ("block1.bn1.bias", 0),
        ("block1.conv2.weight", 1),
    }
    assert not any(("fc.weight", 0) in _tied(g) for g in groups.values())  # the output stays
    assert len(groups) == 4


def test_concat_offsets_the_consumer_input_channels():
    groups = _by_root(channel_groups(Concat(), torch.randn(1, 3, 4, 4)))
    b = {s.param: s for s in groups["b"].slices if s.dim == 1}["c.weight"]
    assert groups["b"].channels == 6
    assert b.index == (4, 5, 6, 7, 8, 9) and b.channel == (0, 1, 2, 3, 4, 5)
    a = {s.param: s for s in groups["a"].slices if s.dim == 1}["c.weight"]
    assert a.index == (0, 1, 2, 3) and a.channel == (0, 1, 2, 3)


def test_flatten_into_linear_maps_one_channel_to_many_inputs():
    group = _by_root(channel_groups(Concat(), torch.randn(1, 3, 4, 4)))["c"]
    fc = next(s for s in group.slices if s.param == "fc.weight")
    assert fc.dim == 1 and len(fc.index) == 5 * 4
    assert [fc.channel.count(c) for c in range(5)] == [4] * 5


def test_depthwise_ties_its_input_and_output_channel():
    groups = channel_groups(Separable(), torch.randn(1, 3, 6, 6))
    group = next(g for g in groups if ("dw.weight", 0) in _tied(g))
    assert _tied(group) == {
        ("pw1.weight", 0),
        ("bn1.weight", 0),
        ("bn1.bias", 0),
        ("dw.weight", 0),
        ("bn2.weight", 0),
        ("bn2.bias", 0),
        ("pw2.weight", 1),
    }
    assert {s.role for s in group.slices} == {"weight", "norm"}


def test_groups_are_plain_data_and_the_model_is_untouched():
    model = _randomize(ResNet2()).train()
    before = copy.deepcopy(model.state_dict())
    groups = channel_groups(model, torch.randn(2, 3, 8, 8))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert pickle.loads(pickle.dumps(groups)) == groups
    assert len(set(groups)) == len(groups)  # frozen, hashable
    with pytest.raises(AttributeError):
        groups[0].channels = 3  # type: ignore[misc]
    assert [g.root for g in groups] == ["stem", "block1.conv1", "block2.conv1", "block2.conv2"]


def test_ignore_drops_every_group_holding_the_layer():
    x = torch.randn(1, 3, 8, 8)
    groups = channel_groups(ResNet2(), x, ignore=["block1.conv2"])
    assert not any(("block1.conv2.weight", 0) in _tied(g) for g in groups)
    assert len(groups) == 3
    assert len(channel_groups(ResNet2(), x, ignore=["block?.conv1"])) == 2


# ---- the projection ----------------------------------------------------------------------


def test_projection_is_the_best_choice_of_channels_by_brute_force():
    model = Separable()
    params = dict(model.named_parameters())
    group = next(g for g in channel_groups(model, torch.randn(1, 3, 6, 6)) if g.root == "pw1")
    scores = group_scores(params, group)
    k = 3
    keep = keep_channels(params, group, ratio=(8 - k) / 8)
    best = min(
        itertools.combinations(range(8), k), key=lambda s: scores.sum() - scores[list(s)].sum()
    )
    assert set(torch.nonzero(keep).flatten().tolist()) == set(best)
    # the energy removed is exactly the squared distance moved in the scored tensors
    new = project_coupled(params, group, (8 - k) / 8)
    scored = {s.param for s in group.slices if s.role == "weight"}
    moved = sum((params[p] - new[p]).pow(2).sum().item() for p in scored)
    assert moved == pytest.approx(scores.sum().item() - scores[list(best)].sum().item(), rel=1e-6)


def test_projection_is_pure_idempotent_and_zeroes_every_tied_slice():
    model = _randomize(ResNet2())
    groups = channel_groups(model, torch.randn(1, 3, 8, 8))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    copies = {k: v.clone() for k, v in params.items()}
    once = project_coupled(params, groups, 0.5)
    twice = project_coupled(once, groups, 0.5)
    for k in params:
        assert torch.equal(params[k], copies[k])  # input not mutated
        assert torch.equal(once[k], twice[k])  # a point of S is its own projection
    stem = groups[0]
    keep = keep_channels(params, stem, 0.5)
    assert int(keep.sum()) == 4
    for s in stem.slices:
        for pos, ch in zip(s.index, s.channel, strict=True):
            cut = once[s.param].select(s.dim, pos)
            assert bool((cut == 0).all()) is (not keep[ch]), (s.param, pos)


def test_ties_keep_the_lower_channel_and_at_least_one_channel_stays():
    model = Separable()
    for p in model.parameters():
        nn.init.constant_(p, 1.0)
    params = dict(model.named_parameters())
    group = next(g for g in channel_groups(model, torch.randn(1, 3, 6, 6)) if g.root == "pw1")
    assert keep_channels(params, group, 0.5).tolist() == [True] * 4 + [False] * 4
    assert keep_channels(params, group, 0.99).tolist() == [True] + [False] * 7
    assert keep_channels(params, group, 0.0).all()


def test_roles_choose_which_tied_tensors_enter_the_score():
    model = Separable()
    params = dict(model.named_parameters())
    group = next(g for g in channel_groups(model, torch.randn(1, 3, 6, 6)) if g.root == "pw1")
    before = group_scores(params, group)
    with torch.no_grad():
        model.bn1.weight[7] = 100.0
    assert torch.equal(group_scores(params, group), before)  # BN affine: zeroed, not scored
    assert keep_channels(params, group, 0.99, roles=ROLES).tolist() == [False] * 7 + [True]


def test_masks_do_not_depend_on_group_order():
    model = _randomize(ResNet2())
    groups = channel_groups(model, torch.randn(1, 3, 8, 8))
    params = dict(model.named_parameters())
    a = coupled_masks(params, groups, [0.25, 0.5, 0.5, 0.75])
    b = coupled_masks(params, groups[::-1], [0.75, 0.5, 0.5, 0.25])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["block1.conv2.weight"].dtype == torch.bool


# ---- physically removable ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "shape"),
    [(ResNet2, (2, 3, 8, 8)), (Concat, (2, 3, 4, 4)), (Separable, (2, 3, 6, 6))],
    ids=["residual", "concat", "depthwise"],
)
def test_masked_model_equals_the_physically_pruned_model(model, shape):
    _check_removable(model(), torch.randn(shape))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_cifar"])
def test_zoo_models_are_removable(name):
    models = pytest.importorskip("dualprune.models")
    if name not in models.names():
        pytest.skip(f"{name} is not registered")
    _check_removable(models.create(name), torch.randn(2, 3, 32, 32), ratio=0.4)


# ---- errors a user can cause -------------------------------------------------------------


def test_ignore_pattern_matching_nothing():
    with pytest.raises(UnknownNameError, match=r"ignore pattern 'blok1\.\*' matches no module"):
        channel_groups(ResNet2(), torch.randn(1, 3, 8, 8), ignore=["blok1.*"])


def test_grouped_conv_is_named():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 2, 1))
    with pytest.raises(ConstraintError, match=r"grouped conv '1' \(groups=2\).*ignore="):
        channel_groups(model, torch.randn(1, 3, 6, 6))


def test_unsupported_norm_is_named():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 2, 1))
    with pytest.raises(ConstraintError, match=r"reach '1' \(GroupNorm\)"):
        channel_groups(model, torch.randn(1, 3, 6, 6))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range(ratio):
    model = Separable()
    group = channel_groups(model, torch.randn(1, 3, 6, 6))[0]
    with pytest.raises(ConstraintError, match=rf"'{group.root}': ratio={ratio} .* \[0, 1\)"):
        project_coupled(dict(model.named_parameters()), group, ratio)


def test_params_from_another_model():
    group = channel_groups(Separable(), torch.randn(1, 3, 6, 6))[0]
    with pytest.raises(ConstraintError, match=r"params has no 'pw1.weight'"):
        project_coupled({}, group, 0.5)
    small = {k: v[:2] for k, v in Separable().named_parameters()}
    with pytest.raises(ConstraintError, match=r"has shape \(2, 3, 1, 1\).*rebuild the groups"):
        project_coupled(small, group, 0.5)


def test_unknown_role_and_ratio_count():
    model = Separable()
    groups = channel_groups(model, torch.randn(1, 3, 6, 6))
    params = dict(model.named_parameters())
    with pytest.raises(UnknownNameError, match=r"role 'weights' is unknown.*did you mean 'weight'"):
        coupled_masks(params, groups, 0.5, roles=["weights"])
    with pytest.raises(ConstraintError, match=r"1 ratios for 2 groups"):
        coupled_masks(params, groups, [0.5])
