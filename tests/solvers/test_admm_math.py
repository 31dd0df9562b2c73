"""ADMM update equations (docs/algorithms.md §1, scaled form) and the ρ schedule.

Z⁰ = Π(W⁰), U⁰ = 0
Z ← Π(W + U),  U ← U + W − Z,  ρ ← schedule(k),  U ← U · ρ_old/ρ_new
penalty Σ ρ_i/2 ||W_i − Z_i + U_i||²  (squared Frobenius), gradient ρ_i (W_i − Z_i + U_i)
"""

from __future__ import annotations

import pytest
import torch
from solver_helpers import Net, make

from dualprune.constraints import Sparsity
from dualprune.plan import weight_key
from dualprune.solvers import ADMM, RhoSchedule

PLAN = {"conv1": Sparsity(0.5), "conv2": Sparsity(0.5, "filter"), "fc1": Sparsity(0.75)}
# the solvers' key space: each layer's weight by parameter name
KEYS = {weight_key(n): c for n, c in PLAN.items()}


def nudge(solver: ADMM, seed: int, scale: float = 0.05) -> dict:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in solver.weights.values():
            w.add_(scale * torch.randn(w.shape, generator=g, dtype=w.dtype))
    return {n: w.detach().clone() for n, w in solver.weights.items()}


def test_initial_state():
    model = make(Net)
    solver = ADMM(model, PLAN)
    assert solver.rho == dict.fromkeys(KEYS, 1e-3)  # the default ρ
    for n, c in KEYS.items():
        w = solver.weights[n].detach()
        assert torch.equal(solver.Z[n], c.project(w))
        assert torch.equal(solver.U[n], torch.zeros_like(w))
        assert torch.equal(solver.anchor[n], solver.Z[n])
        assert solver.Z[n].data_ptr() != w.data_ptr()
        assert solver.anchor[n].data_ptr() != solver.Z[n].data_ptr()


def test_updates_with_fixed_rho():
    model = make(Net, dtype=torch.float64)
    solver = ADMM(model, PLAN, rho={"conv*": 0.01, "*": 0.1})
    for i in range(6):
        W = nudge(solver, i, 0.05 if i % 2 else 0.0)
        Z_old = {n: z.clone() for n, z in solver.Z.items()}
        U_old = {n: u.clone() for n, u in solver.U.items()}
        rec = solver.update()
        assert rec["update"] == solver.updates == i + 1
        for n, c in KEYS.items():
            Z = c.project(W[n] + U_old[n])
            U = U_old[n] + (W[n] - Z)
            assert torch.equal(solver.Z[n], Z)
            assert torch.equal(solver.U[n], U)
            assert torch.equal(solver.anchor[n], Z - U)
            layer = rec["layers"][n]
            rho = 0.01 if n.startswith("conv") else 0.1
            assert layer["rho"] == rho
            assert layer["residual"] == pytest.approx(float((W[n] - Z).norm() / W[n].norm()))
            assert layer["dual_residual"] == pytest.approx(rho * float((Z - Z_old[n]).norm()))
        assert solver.rho == {"conv1.weight": 0.01, "conv2.weight": 0.01, "fc1.weight": 0.1}


def test_rho_growth_rescales_u():
    """ρ ×1.3 per update; U ← (U + W − Z)·ρ_old/ρ_new so that ρU (the multiplier) stays put."""
    model = make(Net, dtype=torch.float64)
    solver = ADMM(model, PLAN, rho={"fc1": 0.2, "*": 1e-3}, schedule=RhoSchedule(growth=1.3))
    for k in range(5):
        rho_old = {n: (0.2 if n == "fc1.weight" else 1e-3) * 1.3**k for n in KEYS}
        assert solver.rho == pytest.approx(rho_old, rel=1e-14)
        W = nudge(solver, 10 + k)
        U_old = {n: u.clone() for n, u in solver.U.items()}
        rec = solver.update()
        rho_new = {n: r * 1.3 for n, r in rho_old.items()}
        assert solver.rho == pytest.approx(rho_new, rel=1e-14)
        assert rec["rho"] == pytest.approx(sum(rho_new.values()) / 3, rel=1e-14)
        for n, c in KEYS.items():
            Z = c.project(W[n] + U_old[n])
            assert torch.equal(solver.Z[n], Z)
            U = (U_old[n] + W[n] - Z) * (rho_old[n] / rho_new[n])
            torch.testing.assert_close(solver.U[n], U, rtol=1e-14, atol=1e-16)
            # the unscaled multiplier ρU after the update is ρ_old (U_old + W − Z)
            torch.testing.assert_close(
                rho_new[n] * solver.U[n], rho_old[n] * (U_old[n] + W[n] - Z), rtol=1e-13, atol=1e-16
            )
            torch.testing.assert_close(solver.anchor[n], Z - U, rtol=1e-14, atol=1e-16)
            assert rec["layers"][n]["rho"] == pytest.approx(rho_old[n], rel=1e-14)


def test_capped_rho_stops_rescaling():
    model = make(Net, dtype=torch.float64)
    solver = ADMM(model, PLAN, rho=1.0, schedule=RhoSchedule(growth=2.0, max=4.0))
    fc1 = weight_key("fc1")
    seen = []
    for k in range(5):
        W = nudge(solver, 20 + k)
        U_old = {n: u.clone() for n, u in solver.U.items()}
        rho_old = solver.rho[fc1]
        solver.update()
        seen.append(solver.rho[fc1])
        Z = solver.Z[fc1]
        factor = rho_old / solver.rho[fc1]
        torch.testing.assert_close(
            solver.U[fc1], (U_old[fc1] + W[fc1] - Z) * factor, rtol=1e-14, atol=1e-16
        )
    assert seen == [2.0, 4.0, 4.0, 4.0, 4.0]


def test_warmup_schedule_values():
    model = make(Net)
    solver = ADMM(
        model, PLAN, rho=1.0, schedule=RhoSchedule(growth=1.5, warmup=4, warmup_from=0.01)
    )
    got = [solver.rho_at(k)["fc1.weight"] for k in range(7)]
    want = [0.01, 0.01**0.75, 0.01**0.5, 0.01**0.25, 1.0, 1.5, 2.25]
    assert got == pytest.approx(want, rel=1e-14)
    for k in range(3):
        assert solver.rho["fc1.weight"] == pytest.approx(want[k], rel=1e-14)
        solver.update()


def test_per_layer_rho_patterns():
    model = make(Net)
    first_wins = ADMM(model, PLAN, rho={"fc1": 5.0, "conv2": 3.0, "*": 0.1})
    assert first_wins.rho == {"conv1.weight": 0.1, "conv2.weight": 3.0, "fc1.weight": 5.0}
    regex = ADMM(model, PLAN, rho={"re:conv[12]": 0.5, "f*": 2.0})
    assert regex.rho == {"conv1.weight": 0.5, "conv2.weight": 0.5, "fc1.weight": 2.0}
    earlier = ADMM(model, PLAN, rho={"*": 0.1, "fc1": 5.0})  # "*" matches first: fc1 gets 0.1
    assert earlier.rho == dict.fromkeys(KEYS, 0.1)


def test_penalty_is_the_squared_norm_and_regularize_its_gradient():
    """Σ ρ_i/2 ||W_i − Z_i + U_i||² (not its square root), per-layer ρ in both hooks."""
    model = make(Net, dtype=torch.float64)
    rho = {"conv1": 0.5, "conv2": 2.0, "fc1": 7.0}
    solver = ADMM(model, PLAN, rho=rho)
    nudge(solver, 30)
    solver.update()
    nudge(solver, 31)
    W = {n: w.detach() for n, w in solver.weights.items()}
    rho_of = {weight_key(n): r for n, r in rho.items()}  # the patterns name layers
    want = sum(rho_of[n] / 2 * float(((W[n] - solver.Z[n] + solver.U[n]) ** 2).sum()) for n in KEYS)
    p = solver.penalty()
    assert float(p.detach()) == pytest.approx(want, rel=1e-13)
    model.zero_grad(set_to_none=True)
    p.backward()
    autograd = {n: w.grad.clone() for n, w in solver.weights.items()}
    model.zero_grad(set_to_none=True)
    solver.regularize()
    for n in KEYS:
        expected = rho_of[n] * (W[n] - solver.Z[n] + solver.U[n])
        torch.testing.assert_close(solver.weights[n].grad, expected, rtol=1e-13, atol=1e-16)
        torch.testing.assert_close(autograd[n], expected, rtol=1e-13, atol=1e-16)
    # layers outside the plan get no gradient from either hook
    assert model.fc2.weight.grad is None
    assert model.conv1.bias.grad is None


def test_regularize_adds_to_an_existing_gradient():
    model = make(Net)
    solver = ADMM(model, PLAN, rho=0.5)
    nudge(solver, 40)
    for w in solver.weights.values():
        w.grad = torch.ones_like(w)
    solver.regularize()
    for n, w in solver.weights.items():
        want = 1 + 0.5 * (w.detach() - solver.anchor[n])
        torch.testing.assert_close(w.grad, want)
