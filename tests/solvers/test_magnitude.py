"""Magnitude baselines: ratio schedules, pruned entries held at zero, exact final sparsity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from solver_helpers import Net, WideNet, data, make, train

from dualprune.constraints import Quantization, Sparsity, kept_count
from dualprune.plan import weight_key
from dualprune.solvers import Magnitude
from dualprune.solvers.magnitude import ratio_at

PLAN = {"conv1": Sparsity(0.5), "conv2": Sparsity(0.75, "filter"), "fc1": Sparsity(0.9)}
# the solver's key space: each layer's weight by parameter name
KEYS = {weight_key(n): c for n, c in PLAN.items()}
BATCHES = data((2, 8, 8))


def test_schedule_values():
    assert [ratio_at("oneshot", 0.8, t, 4) for t in range(6)] == [0.0] * 6
    assert [ratio_at("iterative", 0.8, t, 4) for t in range(6)] == pytest.approx(
        [0.0, 0.2, 0.4, 0.6, 0.8, 0.8]
    )
    agp = [0.8 * (1 - (1 - t / 4) ** 3) for t in range(5)]  # Zhu & Gupta 2017
    assert agp == pytest.approx([0.0, 0.4625, 0.7, 0.7875, 0.8])
    assert [ratio_at("agp", 0.8, t, 4) for t in range(6)] == pytest.approx([*agp, 0.8])
    assert ratio_at("agp", 0.8, -3, 4) == 0.0  # before the start


@settings(max_examples=80, deadline=None)
@given(target=st.floats(0.0, 0.99), steps=st.integers(1, 50), t=st.integers(-5, 60))
def test_schedules_are_monotone_and_end_at_the_target(target, steps, t):
    it, agp = ratio_at("iterative", target, t, steps), ratio_at("agp", target, t, steps)
    assert 0.0 <= it <= agp <= target + 1e-15  # AGP prunes faster early on
    assert ratio_at("agp", target, t + 1, steps) >= agp
    assert ratio_at("iterative", target, t + 1, steps) >= it
    assert ratio_at("iterative", target, steps, steps) == pytest.approx(target)
    assert ratio_at("agp", target, steps, steps) == pytest.approx(target)


def sparsity_of(w: torch.Tensor) -> float:
    return float((w == 0).sum()) / w.numel()


@pytest.mark.parametrize("schedule", ["iterative", "agp"])
def test_each_update_prunes_to_the_scheduled_ratio(schedule):
    model = make(Net)
    solver = Magnitude(model, PLAN, schedule=schedule, steps=4, start=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    previous = {n: torch.ones_like(w, dtype=torch.bool) for n, w in solver.weights.items()}
    for k in range(1, 7):
        rec = train(model, solver, opt, BATCHES, 1)[-1]
        fraction = ratio_at(schedule, 1.0, k - 1, 4)  # start=1: update 1 waits
        assert rec["fraction_of_target"] == pytest.approx(fraction)
        assert solver.ratio() == pytest.approx(fraction)
        w = model.conv1.weight.detach()
        kept = kept_count(0.5 * fraction, w.numel())
        assert int(solver.keep["conv1.weight"].sum()) == kept
        assert rec["layers"]["conv1.weight"]["sparsity"] == pytest.approx(1 - kept / w.numel())
        filters = kept_count(0.75 * fraction, 8)
        assert int(solver.keep["conv2.weight"].flatten(1).all(1).sum()) == filters
        assert int(solver.keep["conv2.weight"].flatten(1).any(1).sum()) == filters
        kept_fc = kept_count(0.9 * fraction, model.fc1.weight.numel())
        assert int(solver.keep["fc1.weight"].sum()) == kept_fc
        for n, keep in solver.keep.items():
            assert not (keep & ~previous[n]).any()  # pruned entries never come back
            assert torch.equal(solver.weights[n].detach() != 0, keep)
            previous[n] = keep.clone()


def test_pruned_entries_stay_zero_under_momentum_and_weight_decay():
    model = make(Net)
    solver = Magnitude(model, PLAN, schedule="iterative", steps=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    revivals = 0  # steps whose momentum alone would have moved a pruned weight
    for _ in range(5):
        for x, y in BATCHES:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            solver.regularize()
            for n, w in solver.weights.items():
                assert not w.grad[~solver.keep[n]].any()  # gradients masked
                buf = opt.state.get(w, {}).get("momentum_buffer")
                revivals += int(buf is not None and bool(buf[~solver.keep[n]].any()))
            opt.step()
            solver.step(loss)
            for n, w in solver.weights.items():
                assert not w.detach()[~solver.keep[n]].any()
        solver.update()
    assert revivals > 0
    assert all(not bool(k.all()) for k in solver.keep.values())
    masks = solver.hard_prune()
    for n, w in solver.weights.items():
        assert torch.equal(masks[n], w.detach() != 0)  # one key space: parameter names


@pytest.mark.parametrize("schedule", ["oneshot", "iterative", "agp"])
def test_hard_prune_reaches_the_target_exactly(schedule):
    model = make(Net)
    solver = Magnitude(model, PLAN, schedule=schedule, steps=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, solver, opt, BATCHES, 3)
    if schedule == "oneshot":  # dense until the end
        assert all(bool(k.all()) for k in solver.keep.values())
        assert all(r["fraction_of_target"] == 0.0 for r in solver.history)
    masks = solver.hard_prune()
    for n, c in KEYS.items():
        w = solver.weights[n].detach()
        kept = kept_count(c.ratio, w.shape[0] if c.structure == "filter" else w.numel())
        if c.structure == "filter":
            assert int((w.flatten(1) != 0).any(1).sum()) == kept
        else:
            assert int((w != 0).sum()) == kept
        assert torch.equal(c.project(w), w)
        assert masks.sparsity()[n] == pytest.approx(sparsity_of(w))
    assert masks.sparsity()["conv1.weight"] == 0.5
    assert masks.sparsity()["fc1.weight"] == 1 - kept_count(0.9, 512) / 512


def test_quantization_parts_wait_for_hard_prune():
    model = make(WideNet)
    plan = {"f1": Sparsity(0.5) & Quantization(bits=3), "f2": Quantization(bits=2)}
    solver = Magnitude(model, plan, schedule="iterative", steps=2)
    assert solver.targets == {"f1": 0.5, "f2": None}
    before = model.f2.weight.detach().clone()
    solver.update()
    solver.update()
    assert torch.equal(model.f2.weight.detach(), before)  # not pruned, not quantized yet
    f1 = model.f1.weight.detach()
    assert int((f1 != 0).sum()) == kept_count(0.5, f1.numel())
    assert f1.unique().numel() > 8  # survivors still full precision
    solver.hard_prune()
    for n, c in plan.items():
        w = solver.weights[weight_key(n)].detach()
        torch.testing.assert_close(c.project(w), w, rtol=1e-6, atol=1e-7)
    assert model.f2.weight.detach().unique().numel() <= 3
    assert model.f1.weight.detach().unique().numel() <= 8


def test_magnitude_has_no_penalty():
    model = make(Net)
    solver = Magnitude(model, PLAN)
    p = solver.penalty()
    assert float(p) == 0.0 and not p.requires_grad
