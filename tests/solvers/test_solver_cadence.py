"""Cadence: a Z/dual step every ``update_every`` epochs or ``update_every_batches`` batches."""

from __future__ import annotations

import pytest
from solver_helpers import Net, make

from dualprune.constraints import Sparsity
from dualprune.solvers import SOLVERS, create

PLAN = {"conv1": Sparsity(0.5), "fc1": Sparsity(0.75)}


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_update_every_epochs(name, every):
    solver = create(name, make(Net), PLAN, update_every=every)
    ran = []
    for epoch in range(1, 10):
        for batch in range(4):
            assert solver.step(1.0 + 0.1 * batch) is None  # steps never update
        rec = solver.update()
        if rec is not None:
            ran.append(epoch)
            assert rec["epoch"] == epoch and rec["batch"] == 4 * epoch
            assert rec["update"] == len(ran) == solver.updates
            assert rec["train_loss"] == pytest.approx(1.15)  # mean of this window's losses
    assert ran == list(range(every, 10, every))
    assert solver.epochs == 9 and solver.batches == 36


@pytest.mark.parametrize("name", list(SOLVERS))
def test_update_every_batches(name):
    solver = create(name, make(Net), PLAN, update_every_batches=5)
    ran, losses = [], []
    for epoch in range(1, 5):
        for _ in range(3):
            losses.append(float(len(losses)))
            rec = solver.step(losses[-1])
            if rec is not None:
                ran.append(solver.batches)
                assert rec["batch"] == solver.batches and rec["epoch"] == epoch - 1
                window = losses[-5:]
                assert rec["train_loss"] == pytest.approx(sum(window) / 5)
        assert solver.update(train_loss=123.0) is None  # epochs only count now
    assert ran == [5, 10]
    assert solver.updates == 2 and solver.epochs == 4 and solver.batches == 12
    assert [r["batch"] for r in solver.history] == [5, 10]


@pytest.mark.parametrize("name", list(SOLVERS))
def test_explicit_train_loss_wins_over_step_losses(name):
    solver = create(name, make(Net), PLAN, update_every=2)
    solver.step(5.0)
    assert solver.update(train_loss=1.0) is None
    solver.step(7.0)
    rec = solver.update(train_loss=2.0)
    assert rec["train_loss"] == 2.0
    solver.step(3.0)
    solver.update()
    assert solver.update()["train_loss"] == 3.0  # the window restarted after the update
