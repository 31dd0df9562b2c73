"""Solver state: a run resumed from ``state_dict`` mid-run ends bitwise where one run ends."""

from __future__ import annotations

import io

import pytest
import torch
from solver_helpers import Net, data, make, train

from dualprune import Plan
from dualprune.constraints import Quantization, Sparsity
from dualprune.solvers import SOLVERS, create

PLAN = Plan(
    {
        "conv1": Sparsity(0.5),
        "conv2": Sparsity(0.5, "filter"),
        "fc1": Sparsity(0.8) & Quantization(bits=3),
    }
)
BATCHES = data((2, 8, 8), batches=4)
CASES = {
    "admm": {"rho": {"conv*": 0.05, "*": 0.2}, "rho_growth": 1.3, "update_every": 2},
    "slr": {"rho": 0.1, "rho_growth": 1.1, "M": 20.0, "s0": 0.05, "update_every": 2},
    "magnitude": {"schedule": "agp", "steps": 3, "update_every": 2},
    "slr-batches": {"rho": 0.1, "update_every_batches": 5},
}
EPOCHS = 7


def optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def roundtrip(obj):
    """torch.save → torch.load(weights_only=True): the state holds tensors and plain data only."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def run(case: str, resume_at: int | None):
    name = case.split("-")[0]
    model = make(Net)
    solver = create(name, model, PLAN, **CASES[case])
    opt = optimizer(model)
    if resume_at is not None:
        train(model, solver, opt, BATCHES, resume_at)
        saved = roundtrip(
            {"model": model.state_dict(), "solver": solver.state_dict(), "opt": opt.state_dict()}
        )
        del model, solver, opt
        model = make(Net, seed=123)  # a different init, overwritten by the checkpoint
        solver = create(name, model, PLAN, **CASES[case])
        opt = optimizer(model)
        model.load_state_dict(saved["model"])
        solver.load_state_dict(saved["solver"])
        opt.load_state_dict(saved["opt"])
    train(model, solver, opt, BATCHES, EPOCHS - (resume_at or 0))
    masks = solver.hard_prune()
    return model, solver, masks


@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_bitwise_identical(case):
    ref_model, ref_solver, ref_masks = run(case, None)
    assert ref_solver.updates >= 3
    model, solver, masks = run(case, resume_at=3)  # mid window: updates every 2 epochs/5 batches
    for (n, a), (_, b) in zip(
        ref_model.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), n
    assert masks.names == ref_masks.names
    for n in masks.names:
        assert torch.equal(masks[n], ref_masks[n]), n
    assert masks.scales.keys() == ref_masks.scales.keys() == {"fc1.weight"}
    assert torch.equal(masks.scales["fc1.weight"], ref_masks.scales["fc1.weight"])
    assert solver.history == ref_solver.history
    a, b = solver.state_dict(), ref_solver.state_dict()
    assert a["counters"] == b["counters"] and a["extra"] == b["extra"]
    for kind, per_layer in a["tensors"].items():
        for n, t in per_layer.items():
            assert torch.equal(t, b["tensors"][kind][n]), (kind, n)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_state_dict_is_a_snapshot_of_plain_data(name):
    model = make(Net)
    solver = create(name, model, PLAN)
    train(model, solver, optimizer(model), BATCHES, 2)
    state = solver.state_dict()
    loaded = roundtrip(state)
    assert loaded["solver"] == name and loaded["layers"] == ["conv1", "conv2", "fc1"]
    assert loaded["counters"]["epochs"] == 2 and loaded["counters"]["batches"] == 8
    assert loaded["counters"]["updates"] == 2 and len(loaded["history"]) == 2
    kinds = {"admm": {"Z", "anchor", "U"}, "slr": {"Z", "anchor", "Lam", "W_prev"}}
    assert set(loaded["tensors"]) == kinds.get(name, {"keep"})
    # later training does not change the snapshot (tensors cloned, history copied)
    before = {k: {n: t.clone() for n, t in d.items()} for k, d in state["tensors"].items()}
    train(model, solver, optimizer(model), BATCHES, 2)
    assert len(state["history"]) == 2
    for kind, d in state["tensors"].items():
        for n, t in d.items():
            assert torch.equal(t, before[kind][n])
            assert not t.requires_grad


@pytest.mark.parametrize("name", list(SOLVERS))
def test_loaded_state_is_independent_of_the_source(name):
    model = make(Net)
    solver = create(name, model, PLAN)
    train(model, solver, optimizer(model), BATCHES, 1)
    state = solver.state_dict()
    other = create(name, make(Net), PLAN)
    other.load_state_dict(state)
    assert other.updates == 1 and other.history == solver.history
    other.history[0]["update"] = 99
    assert solver.history[0]["update"] == 1
    for kind, d in other._tensors().items():
        for n, t in d.items():
            assert torch.equal(t, solver._tensors()[kind][n])
            assert t.data_ptr() != state["tensors"][kind][n].data_ptr()


def test_life_cycle_bookkeeping():
    model = make(Net)
    solver = create("admm", model, PLAN, rho=0.1)
    assert solver.diagnostics == {} and repr(solver) == "ADMM(3 layers, 0 updates)"
    train(model, solver, optimizer(model), BATCHES, 2)
    rec = solver.diagnostics
    assert rec["update"] == 2 and rec["epoch"] == 2 and rec["batch"] == 8
    keys = {"conv1.weight", "conv2.weight", "fc1.weight"}  # records name parameters
    assert "train_loss" in rec and set(rec["layers"]) == keys
    assert repr(solver) == "ADMM(3 layers, 2 updates)"
    res = solver.residuals()
    assert set(res) == keys and all(r > 0 for r in res.values())
    masks = solver.hard_prune()
    assert solver.residuals() == dict.fromkeys(res, 0.0)  # W ∈ S: Π_S(W) = W
    assert masks.names == ("conv1.weight", "conv2.weight", "fc1.weight")
    assert masks.quantizers == {"fc1.weight": Quantization(bits=3)}
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks.apply(model)  # the hard-pruned model is already in the masks' set
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), snapshot[n]), n
    assert solver.settings()["rho"] == dict.fromkeys(["conv1", "conv2", "fc1"], 0.1)  # by layer
