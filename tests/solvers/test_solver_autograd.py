"""Nothing but W ever requires grad: Z, U, Λ, anchors, W_prev and masks are plain tensors.

The released ADMM/SLR code builds its duals from the live parameter without
``detach()``, so gradients leak through them (docs/algorithms.md §1, §2).
"""

from __future__ import annotations

import pytest
import torch
from solver_helpers import Net, data, make, solver_tensors, train

from dualprune.constraints import Quantization, Sparsity
from dualprune.solvers import SOLVERS, create

PLAN = {"conv2": Sparsity(0.5, "filter"), "fc1": Sparsity(0.8) & Quantization(bits=4)}
BATCHES = data((2, 8, 8))


def leaves(t: torch.Tensor) -> set[int]:
    """ids of the leaf tensors the autograd graph of ``t`` reaches."""
    seen, out, stack = set(), set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            out.add(id(fn.variable))
        stack += [nxt for nxt, _ in fn.next_functions]
    return out


def assert_plain(solver) -> None:
    tensors = solver_tensors(solver)
    assert tensors
    for name, t in tensors:
        assert not t.requires_grad, name
        assert t.grad_fn is None, name


@pytest.mark.parametrize("mode", ["penalty", "regularize"])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_no_solver_tensor_requires_grad(name, mode):
    model = make(Net)
    solver = create(name, model, PLAN)
    assert_plain(solver)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    records = train(model, solver, opt, BATCHES, 3, mode=mode)  # backward() with no retain_graph
    assert len(records) == 3
    assert_plain(solver)
    p = solver.penalty()
    assert_plain(solver)
    if name == "magnitude":
        assert not p.requires_grad
    else:
        assert p.requires_grad
        assert leaves(p) == {id(w) for w in solver.weights.values()}  # graph through W only
    solver.hard_prune()
    assert_plain(solver)


@pytest.mark.parametrize("name", ["admm", "slr"])
def test_penalty_gradient_does_not_grow_over_updates(name):
    """With a leak through U/Λ the gradient would pick up extra terms at every update."""
    model = make(Net, dtype=torch.float64)
    solver = create(name, model, PLAN, rho=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        train(model, solver, opt, [(x.double(), y) for x, y in BATCHES], 1, mode="penalty")
        model.zero_grad(set_to_none=True)
        solver.penalty().backward()
        for n, w in solver.weights.items():
            want = 0.5 * (w.detach() - solver.anchor[n])
            torch.testing.assert_close(w.grad, want, rtol=1e-12, atol=1e-14)
        assert all(p.grad is None for n, p in model.named_parameters() if n == "fc2.weight")
