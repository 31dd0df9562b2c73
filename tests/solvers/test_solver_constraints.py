"""Every kind of constraint through every solver: after ``hard_prune`` each W lies in its set."""

from __future__ import annotations

import pytest
import torch
from solver_helpers import WideNet, data, make, train

from dualprune import Plan
from dualprune.constraints import Constraint, Quantization, Sparsity
from dualprune.plan import weight_key
from dualprune.solvers import SOLVERS, create

PLAN = Plan(
    {
        "c1": Sparsity(0.5),
        "c2": Sparsity(0.5, "filter"),
        "c3": Sparsity(0.5, "column"),
        "c4": Sparsity(0.5, "pattern"),
        "c5": Sparsity(0.5, "channel"),
        "f1": Sparsity(0.5, "nm", n=2, m=4),
        "f2": Sparsity(0.5, "block", block=(4, 4)),
        "f3": Quantization(bits=3),
        "f4": Sparsity(0.5) & Quantization(bits=4),
    }
)
OPTIONS = {"admm": {"rho": 0.05}, "slr": {"rho": 0.05}, "magnitude": {"steps": 2}}
BATCHES = data((4, 4, 4), batches=2)


def quantized(c: Constraint) -> bool:
    return c.restricts_values


def assert_in_set(c: Constraint, w: torch.Tensor, where: str) -> None:
    if quantized(c):  # heuristic scale fits: idempotent up to rounding
        torch.testing.assert_close(c.project(w), w, rtol=1e-6, atol=1e-7, msg=where)
    else:
        assert torch.equal(c.project(w), w), where


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_constraint_through_the_solver(name):
    model = make(WideNet)
    solver = create(name, model, PLAN, **OPTIONS[name])
    constraints = PLAN.resolve(model)
    assert solver.constraints == constraints  # by layer, as the plan resolves them
    keys = {weight_key(n): c for n, c in constraints.items()}  # the solver's key space
    assert solver.joint.by_key == keys
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, solver, opt, BATCHES, 3)
    if name != "magnitude":  # every Z the solver keeps is in its set
        for n, c in keys.items():
            assert_in_set(c, solver.Z[n], f"Z of {n}")  # type: ignore[attr-defined]
    dense = {n: solver.weights[n].detach().clone() for n in keys}
    masks = solver.hard_prune()
    for n, c in keys.items():
        w = solver.weights[n].detach()
        assert_in_set(c, w, n)
        assert torch.equal(masks[n], c.mask(dense[n]))  # masks of Π_S(W_before)
        assert not w[~masks[n]].any()
        if quantized(c):
            q = c if isinstance(c, Quantization) else c.value  # type: ignore[attr-defined]
            assert w.unique().numel() <= q.level_values().numel()
    assert masks.sparsity()["c1.weight"] == 0.5
    assert masks.sparsity()["f1.weight"] == 0.5  # 2 of every 4
    assert masks.sparsity()["f3.weight"] == 0.0
    assert set(masks.quantizers) == {"f3.weight", "f4.weight"}
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks.apply(model)  # a hard-pruned model is a fixed point of its masks
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), snapshot[n], rtol=1e-6, atol=1e-7, msg=n)
