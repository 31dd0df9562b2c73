"""Solvers with coupled channels (``coupled=``): life cycle, masks, compaction, state.

A hand-made two-block residual net (identity and 1×1-conv shortcuts), trained a
few epochs on fixed random data by the documented loop, with the coupled set
alone and together with a per-layer plan (channel sparsity on the chain readers,
a quantized layer whose weight the coupled set also cuts).
"""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
import torch.nn.functional as F
from solver_helpers import data, solver_tensors, train
from torch import Tensor, nn

import dualprune as dp
from dualprune import models
from dualprune.constraints import ChannelGroup, Coupled, Quantization, Sparsity, TiedSlice
from dualprune.errors import CheckpointError, ConfigError, ConstraintError, PlanError
from dualprune.graph import coupled_from_model
from dualprune.solvers import create
from resnets import Block

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
BATCHES = data((3, 8, 8), batches=3)
OPTIONS = {
    "admm": {"rho": 0.05},
    "slr": {"rho": 0.1, "M": 20.0, "s0": 0.05},
    "magnitude": {"schedule": "agp", "steps": 2},
}


class Res2(nn.Module):
    """stem (8) → block(8→8, identity) → block(8→16, 1×1 conv shortcut) → pool → fc (4)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8, 8)
        self.block2 = Block(8, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.block1(F.relu(self.bn(self.stem(x)))))  # (B, 16, H, W)
        return self.fc(x.mean((2, 3)))  # (B, 4)


def make(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Res2()


def setup(case: str, model: nn.Module) -> tuple[dict | None, Coupled]:
    """(plan, coupled) of a case: coupled alone, or with a per-layer plan."""
    if case == "coupled":
        return None, coupled_from_model(model, X, 0.5, ignore=["fc"], multiple_of=2)
    plan = {
        "block1.conv2": Sparsity(0.5, "channel"),
        "block2.conv2": Sparsity(0.5, "channel", multiple_of=4),
        "block1.conv1": Sparsity(0.3) & Quantization(bits=3),  # its inputs are tied too
    }
    return plan, coupled_from_model(model, X, 0.5, chains=False, multiple_of=4)


def solver_for(name: str, case: str, seed: int = 0):
    model = make(seed)
    plan, coupled = setup(case, model)
    return model, create(name, model, plan, coupled=coupled, **OPTIONS[name])


def opt_for(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def alive_channels(params: dict[str, Tensor], g: ChannelGroup) -> set[int]:
    """Channels of g with a nonzero entry in some tied slice."""
    out = set()
    for s in g.slices:
        w = params[s.param].detach()
        rows = (w.transpose(0, s.dim).reshape(w.shape[s.dim], -1) != 0).any(1)
        out |= {c for p, c in zip(s.index, s.channel, strict=True) if rows[p]}
    return out


CASES = list(itertools.product(["admm", "slr", "magnitude"], ["coupled", "coupled+plan"]))


@pytest.mark.parametrize(("name", "case"), CASES)
def test_hard_prune_removes_whole_channels_in_every_tied_tensor(name, case):
    model, solver = solver_for(name, case)
    train(model, solver, opt_for(model), BATCHES, 3)
    masks = solver.hard_prune()
    params = dict(model.named_parameters())
    coupled = solver.coupled
    for g, k in zip(coupled.groups, coupled.kept(), strict=True):
        alive = alive_channels(params, g)
        assert len(alive) == k, g.root
        assert k % coupled.multiple_of == 0 or k == g.channels
        for s in g.slices:  # every slice of a dead channel is masked out, BatchNorm included
            dead = [p for p, c in zip(s.index, s.channel, strict=True) if c not in alive]
            assert not masks[s.param].index_select(s.dim, torch.tensor(dead)).any()
    for layer, c in solver.constraints.items():  # per-layer sets hold too (zeros allowed)
        w = params[f"{layer}.weight"].detach()
        if c.restricts_values:  # 70% of weights pruned, 3-bit: levels ±1..±3 times one α
            assert int((w != 0).sum()) <= round(0.7 * w.numel())
            assert len(torch.unique(w[w != 0].abs())) <= 3
        else:
            assert torch.equal(c.project(w), w)
    after = copy.deepcopy(model)
    masks.apply(after)  # the masks describe the pruned model exactly
    for n, p in after.named_parameters():
        assert torch.equal(p, params[n]), n
    assert set(coupled.params) <= set(masks.names)


@pytest.mark.parametrize("name", ["admm", "slr", "magnitude"])
def test_resumed_run_gives_the_same_masks(name):
    def roundtrip(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=True)

    model, solver = solver_for(name, "coupled+plan")
    opt = opt_for(model)
    train(model, solver, opt, BATCHES, 2)
    saved = roundtrip({"m": model.state_dict(), "s": solver.state_dict(), "o": opt.state_dict()})
    train(model, solver, opt, BATCHES, 2)
    whole = solver.hard_prune()

    model2, solver2 = solver_for(name, "coupled+plan", seed=7)  # other init, overwritten
    opt2 = opt_for(model2)
    model2.load_state_dict(saved["m"])
    solver2.load_state_dict(saved["s"])
    opt2.load_state_dict(saved["o"])
    train(model2, solver2, opt2, BATCHES, 2)
    resumed = solver2.hard_prune()
    assert whole.names == resumed.names
    for n in whole.names:
        assert torch.equal(whole[n], resumed[n]), n
    assert solver2.history == solver.history


@pytest.mark.parametrize("name", ["admm", "slr", "magnitude"])
def test_only_weights_require_grad(name):
    model, solver = solver_for(name, "coupled+plan")
    train(
        model,
        solver,
        opt_for(model),
        BATCHES,
        2,
        mode="penalty" if name != "magnitude" else "regularize",
    )
    for label, t in solver_tensors(solver):
        assert not t.requires_grad, label
    assert solver.penalty().requires_grad == (name != "magnitude")


@pytest.mark.parametrize("name", ["admm", "slr"])
def test_penalty_gradient_equals_regularize(name):
    model, solver = solver_for(name, "coupled+plan")
    train(model, solver, opt_for(model), BATCHES, 1)  # Z, U/Λ away from their start
    weights = solver.weights
    model.zero_grad()
    solver.penalty().backward()
    by_autograd = {k: w.grad.clone() for k, w in weights.items()}
    model.zero_grad()
    solver.regularize()
    for k, w in weights.items():
        torch.testing.assert_close(w.grad, by_autograd[k], rtol=1e-5, atol=1e-7)


def test_admm_z_is_the_coupled_projection_and_lands_in_the_set():
    model, solver = solver_for("admm", "coupled")
    train(model, solver, opt_for(model), BATCHES, 1)
    W = {k: w.detach().clone() for k, w in solver.weights.items()}
    U = {k: u.clone() for k, u in solver.U.items()}
    solver.update()
    coupled = solver.coupled
    V = {k: W[k] + U[k] for k in W}  # keys are the parameter names the coupled set ties
    expected = coupled.project(V)
    Z = dict(solver.Z)
    for p, z in expected.items():
        assert torch.equal(Z[p], z), p
    assert coupled.contains(Z)
    again = coupled.project(Z)
    assert all(torch.equal(again[p], Z[p]) for p in again)  # idempotent
    for k in W:  # U ← U + W − Z
        torch.testing.assert_close(solver.U[k], U[k] + W[k] - solver.Z[k])


def test_records_cover_the_tied_tensors():
    model, solver = solver_for("slr", "coupled+plan")
    records = train(model, solver, opt_for(model), BATCHES, 2)
    layers = records[-1]["layers"]
    assert {"block1.conv2.weight", "stem.weight", "bn.weight", "fc.weight"} <= set(layers)
    assert 0 <= records[-1]["coupled"]["residual"] < 1
    assert set(solver.residuals()) == set(layers)
    assert solver.rho["bn.weight"] == solver.rho_base["coupled"] == 0.1


def test_magnitude_schedules_the_channel_ratio():
    model, solver = solver_for("magnitude", "coupled")
    records = train(model, solver, opt_for(model), BATCHES, 1)
    fraction = records[0]["fraction_of_target"]  # agp, t = 1 of 2: 1 − 0.5³
    assert fraction == pytest.approx(0.875)
    now = solver.coupled.with_ratio([r * fraction for r in solver.coupled.ratios])
    params = dict(model.named_parameters())
    for g, k in zip(now.groups, now.kept(), strict=True):
        assert len(alive_channels(params, g)) == k

    model = make()
    coupled = setup("coupled", model)[1]
    solver = create("magnitude", model, None, coupled=coupled, schedule="oneshot", steps=2)
    train(model, solver, opt_for(model), BATCHES, 2)
    assert all(bool(m.all()) for m in solver.keep.values())  # dense until hard_prune


@pytest.mark.parametrize("name", ["admm", "slr"])
def test_convex_toy_reaches_the_projection(name):
    """min ½ Σ ||W_t − T_t||² s.t. W ∈ S_G: the optimum is Π_{S_G}(T), by brute force."""
    C, ratio = 6, 0.5
    toy = nn.Module()
    toy.a = nn.Linear(3, C, bias=False)
    toy.b = nn.Linear(C, 2, bias=False)
    ids = tuple(range(C))
    g = ChannelGroup(
        "a",
        C,
        (
            TiedSlice("a.weight", 0, ids, ids, "weight"),
            TiedSlice("b.weight", 1, ids, ids, "weight"),
        ),
    )
    gen = torch.Generator().manual_seed(3)
    T = {"a": torch.randn(C, 3, generator=gen), "b": torch.randn(2, C, generator=gen)}
    with torch.no_grad():
        toy.a.weight.copy_(T["a"])
        toy.b.weight.copy_(T["b"])
    opts = {"rho": 0.5, "rho_growth": 1.2, "rho_max": 4.0}
    solver = create(name, toy, None, coupled=Coupled(g, ratio), **opts)
    opt = torch.optim.SGD(toy.parameters(), lr=0.2)
    for _ in range(40):
        for _ in range(10):
            loss = (
                0.5 * ((toy.a.weight - T["a"]) ** 2).sum()
                + 0.5 * ((toy.b.weight - T["b"]) ** 2).sum()
            )
            opt.zero_grad()
            loss.backward()
            solver.regularize()
            opt.step()
            solver.step(loss)
        solver.update()
    solver.hard_prune()
    cost = {j: float(T["a"][j].pow(2).sum() + T["b"][:, j].pow(2).sum()) for j in range(C)}
    best = min(
        sum(cost[j] for j in range(C) if j not in kept)
        for kept in itertools.combinations(range(C), 3)
    )
    a, b = toy.a.weight.detach(), toy.b.weight.detach()
    got = 0.5 * float(((a - T["a"]) ** 2).sum() + ((b - T["b"]) ** 2).sum())
    assert got == pytest.approx(0.5 * best, rel=1e-3)


def test_resnet20_compacts_to_the_masked_model():
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=4)
    for m in model.modules():  # BatchNorm as after training: β and μ of both signs
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    plan = dp.Plan({"re:layer.*conv2": dp.Sparsity(0.5, "channel", multiple_of=8)})
    coupled = coupled_from_model(model, x, 0.5, ignore=["fc"], chains=False, multiple_of=8)
    solver = dp.SLR(model, plan, coupled=coupled, rho=0.1)
    train(model, solver, opt_for(model), data((3, 8, 8), batches=2, size=4), 1)
    masks = solver.hard_prune()
    masks.attach(model)
    train_step = opt_for(model)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    train_step.step()  # masked retraining keeps the removed channels at zero
    masks.detach(model)
    for n, p in model.named_parameters():
        if n in masks:
            assert not p[~masks[n]].any(), n
    model.eval()
    small = dp.compact(model, x, masks)
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-4
    assert small.layer3[0].conv2.out_channels == 32 < model.layer3[0].conv2.out_channels
    assert small.layer1[0].conv1.out_channels == 8  # the chain, through the reader's channels
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_errors_name_the_fix():
    model = make()
    coupled = coupled_from_model(model, X, 0.5)
    with pytest.raises(PlanError, match="needs a plan, coupled=..., or both"):
        dp.ADMM(model)
    with pytest.raises(PlanError, match="constrains no layer"):
        dp.ADMM(model, {})
    with pytest.raises(ConstraintError, match="is not a Coupled set"):
        dp.ADMM(model, coupled=0.5)
    other = models.create("resnet20")
    with pytest.raises(ConstraintError, match="params has no"):
        dp.SLR(other, coupled=coupled)
    with pytest.raises(ConfigError, match="rho: layer 'coupled' matches no pattern"):
        dp.ADMM(model, {"fc": Sparsity(0.5)}, coupled=coupled, rho={"fc": 0.1})
    solver = dp.ADMM(model, {"fc": Sparsity(0.5)}, coupled=coupled, rho={"coupled": 0.2, "*": 0.1})
    assert solver.rho["fc.weight"] == 0.1 and solver.rho["stem.weight"] == 0.2
    plain = dp.ADMM(make(), {"fc": Sparsity(0.5)})
    with pytest.raises(CheckpointError, match="has no coupled set, this solver has Coupled"):
        solver.load_state_dict(plain.state_dict())
    with pytest.raises(CheckpointError, match="another coupled set"):
        other_ratio = dp.ADMM(make(), {"fc": Sparsity(0.5)}, coupled=coupled.with_ratio(0.25))
        solver.load_state_dict(other_ratio.state_dict())
