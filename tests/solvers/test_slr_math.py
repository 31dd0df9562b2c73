"""SLR update equations against a reference written from docs/algorithms.md §2.

    L(W, Z, Λ) = f + Σ_i ⟨Λ_i, W_i − Z_i⟩ + ρ_i/2 ||W_i − Z_i||²
    condition 1: L(W^{k+1}, Z^k, Λ^k) < L(W^k, Z^k, Λ^k)  → s, Λ ← Λ + s (W^{k+1} − Z^k)
    Z-step:      Z^{k+1} = Π(W^{k+1} + Λ/ρ)
    condition 2: L(W^{k+1}, Z^{k+1}, Λ) < L(W^{k+1}, Z^k, Λ) → s, Λ ← Λ + s (W^{k+1} − Z^{k+1})
    s^k = α^k s^{k−1} ||g^{k−1}||/||g^k||,  α^k = 1 − 1/(M k^(1 − 1/k^r)),  g = W − Z

The model is float64 so that the reference (plain tensor arithmetic) and the
solver agree to ~1 ulp.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from solver_helpers import Net, make

from dualprune.constraints import Sparsity
from dualprune.plan import weight_key
from dualprune.solvers import SLR, RhoSchedule, alpha

PLAN = {"conv2": Sparsity(0.5, "filter"), "fc1": Sparsity(0.75)}
RHO = {"conv2": 0.3, "fc1": 0.7}
# the solver's key space (parameter names); plan and ρ patterns name layers
KEYS = {weight_key(n): c for n, c in PLAN.items()}
RHO_OF = {weight_key(n): r for n, r in RHO.items()}
M, R, S0, GROWTH = 5.0, 0.3, 0.2, 1.1
TIGHT = {"rtol": 1e-13, "atol": 1e-15}


def ref_alpha(k: int, M: float, r: float) -> float:
    return 1.0 - 1.0 / (M * k ** (1.0 - 1.0 / k**r))


class Reference:
    """SLR by the book, on copies of the solver's starting point."""

    def __init__(self, solver: SLR, f0: float) -> None:
        self.W = {n: w.detach().clone() for n, w in solver.weights.items()}
        self.Z = {n: c.project(self.W[n]) for n, c in KEYS.items()}
        self.Lam = {n: torch.zeros_like(z) for n, z in self.Z.items()}
        self.f, self.s, self.k, self.j = f0, S0, 0, 0  # j: updates so far (ρ schedule)
        self.g_prev = self.norm(self.W, self.Z)

    def rho(self, j: int) -> dict[str, float]:
        return {n: RHO_OF[n] * GROWTH**j for n in KEYS}

    @staticmethod
    def norm(W, Z) -> float:
        return math.sqrt(sum(float(((W[n] - Z[n]) ** 2).sum()) for n in KEYS))

    def terms(self, W, Z) -> float:
        rho = self.rho(self.j)
        return sum(
            float((self.Lam[n] * (W[n] - Z[n])).sum())
            + rho[n] / 2 * float(((W[n] - Z[n]) ** 2).sum())
            for n in KEYS
        )

    def move(self, W, Z) -> bool:
        g = self.norm(W, Z)
        self.k += 1
        self.s = ref_alpha(self.k, M, R) * self.s * self.g_prev / g
        self.g_prev = g
        for n in KEYS:
            self.Lam[n] = self.Lam[n] + self.s * (W[n] - Z[n])
        return True

    def update(self, W_new, train_loss: float) -> dict:
        L_old = self.f + self.terms(self.W, self.Z)
        L_new = train_loss + self.terms(W_new, self.Z)
        c1 = L_new < L_old
        m1 = c1 and self.move(W_new, self.Z)
        rho = self.rho(self.j)
        Z_new = {n: c.project(W_new[n] + self.Lam[n] / rho[n]) for n, c in KEYS.items()}
        c2 = self.terms(W_new, Z_new) < self.terms(W_new, self.Z)
        self.Z = Z_new
        m2 = c2 and self.move(W_new, self.Z)
        self.W = {n: w.clone() for n, w in W_new.items()}
        self.f = train_loss
        self.j += 1
        return {"conditions": [c1, c2], "moved": [m1, m2], "lagrangian": [L_old, L_new]}


def setup(f0: float = 2.0) -> tuple[SLR, Reference]:
    model = make(Net, seed=3, dtype=torch.float64)
    solver = SLR(model, PLAN, rho=RHO, M=M, r=R, s0=S0, schedule=RhoSchedule(growth=GROWTH))
    ref = Reference(solver, f0)
    solver.step(f0)  # f(W⁰) = the first batch's loss
    return solver, ref


def nudge(solver: SLR, seed: int, scale: float) -> dict:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in solver.weights.values():
            w.add_(scale * torch.randn(w.shape, generator=g, dtype=w.dtype))
    return {n: w.detach().clone() for n, w in solver.weights.items()}


def check_against(solver: SLR, ref: Reference, rec: dict, expected: dict) -> None:
    assert rec["conditions"] == expected["conditions"]
    assert rec["multipliers_moved"] == expected["moved"]
    assert rec["k"] == solver.k == ref.k
    assert math.isclose(rec["step_size"], ref.s, rel_tol=1e-13)
    assert math.isclose(solver.s, ref.s, rel_tol=1e-13)
    for got, want in zip(rec["lagrangian"], expected["lagrangian"], strict=True):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)
    rho_next = ref.rho(ref.j)
    for n in KEYS:
        torch.testing.assert_close(solver.Lam[n], ref.Lam[n], **TIGHT)
        torch.testing.assert_close(solver.Z[n], ref.Z[n], **TIGHT)
        torch.testing.assert_close(solver.anchor[n], ref.Z[n] - ref.Lam[n] / rho_next[n], **TIGHT)
        assert torch.equal(solver.W_prev[n], solver.weights[n].detach())
    assert solver.rho == pytest.approx(rho_next, rel=1e-15)


def test_initial_state():
    solver, _ = setup()
    for n, c in KEYS.items():
        w = solver.weights[n].detach()
        assert torch.equal(solver.Z[n], c.project(w))  # Z⁰ = Π(W⁰)
        assert torch.equal(solver.Lam[n], torch.zeros_like(w))  # Λ⁰ = 0
        assert torch.equal(solver.anchor[n], solver.Z[n])
        assert solver.Z[n].data_ptr() != w.data_ptr()
        assert solver.W_prev[n].data_ptr() != w.data_ptr()
    assert solver.s == S0 and solver.k == 0
    assert solver.g_prev == pytest.approx(
        math.sqrt(sum(float(((solver.W_prev[n] - solver.Z[n]) ** 2).sum()) for n in KEYS))
    )


@pytest.mark.parametrize("loss", [2.5, 2.0])
def test_condition_1_fails_and_nothing_moves(loss):
    """Same W and a larger (or equal: the conditions are strict) loss; Π(W + 0) = Z⁰ fails 2."""
    solver, ref = setup(f0=2.0)
    rec = solver.update(train_loss=loss)
    assert rec["conditions"] == [False, False]
    assert rec["multipliers_moved"] == [False, False]
    for n in KEYS:
        assert torch.equal(solver.Lam[n], torch.zeros_like(solver.Lam[n]))
        assert torch.equal(solver.Z[n], ref.Z[n])
    assert solver.s == S0 and solver.k == 0
    assert rec["lagrangian"][1] - rec["lagrangian"][0] == pytest.approx(loss - 2.0)


def test_condition_1_fails_condition_2_holds():
    """A larger loss blocks the first multiplier step; the Z-step then moves Λ once."""
    solver, ref = setup(f0=2.0)
    W = nudge(solver, 0, 0.05)
    rec = solver.update(train_loss=50.0)
    assert rec["conditions"] == [False, True]
    Z = {n: c.project(W[n]) for n, c in KEYS.items()}  # Λ was still 0 at the Z-step
    g = Reference.norm(W, Z)
    s1 = ref_alpha(1, M, R) * S0 * ref.g_prev / g
    assert solver.k == 1
    assert math.isclose(solver.s, s1, rel_tol=1e-13)
    for n in KEYS:
        torch.testing.assert_close(solver.Z[n], Z[n], **TIGHT)
        torch.testing.assert_close(solver.Lam[n], s1 * (W[n] - Z[n]), **TIGHT)


def test_condition_1_holds_and_lambda_steps_exactly():
    solver, ref = setup(f0=2.0)
    W0 = {n: w.detach().clone() for n, w in solver.weights.items()}
    Z0 = {n: z.clone() for n, z in solver.Z.items()}
    W = nudge(solver, 1, 0.05)
    expected = ref.update(W, 1.0)
    rec = solver.update(train_loss=1.0)
    check_against(solver, ref, rec, expected)
    # the same by hand: s¹ = α¹ s⁰ ||W⁰ − Z⁰|| / ||W¹ − Z⁰||, Λ¹ = s¹ (W¹ − Z⁰),
    # Z¹ = Π(W¹ + Λ¹/ρ), then (condition 2) s² and Λ² = Λ¹ + s² (W¹ − Z¹)
    assert rec["conditions"] == [True, True]
    rho = {n: RHO_OF[n] for n in KEYS}
    s1 = ref_alpha(1, M, R) * S0 * Reference.norm(W0, Z0) / Reference.norm(W, Z0)
    lam1 = {n: s1 * (W[n] - Z0[n]) for n in KEYS}
    Z1 = {n: c.project(W[n] + lam1[n] / rho[n]) for n, c in KEYS.items()}
    s2 = ref_alpha(2, M, R) * s1 * Reference.norm(W, Z0) / Reference.norm(W, Z1)
    assert math.isclose(solver.s, s2, rel_tol=1e-13)
    for n in KEYS:
        torch.testing.assert_close(solver.Z[n], Z1[n], **TIGHT)
        torch.testing.assert_close(solver.Lam[n], lam1[n] + s2 * (W[n] - Z1[n]), **TIGHT)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_of_updates_matches_the_reference(seed):
    """Twelve updates with random W-steps and losses, both conditions failing and holding."""
    solver, ref = setup(f0=2.0)
    g = torch.Generator().manual_seed(100 + seed)
    seen = set()
    loss = 2.0
    for i in range(12):
        scale = [0.0, 0.002, 0.05][int(torch.randint(0, 3, (1,), generator=g))]
        W = nudge(solver, 1000 * seed + i, scale)
        loss = loss + float(torch.randn((), generator=g, dtype=torch.float64)) * 0.3
        expected = ref.update(W, loss)
        rec = solver.update(train_loss=loss)
        check_against(solver, ref, rec, expected)
        seen.add(tuple(rec["conditions"]))
    assert {c1 for c1, _ in seen} == {True, False}  # condition 1 both held and failed
    assert solver.k == ref.k > 0


def test_default_train_loss_is_the_mean_of_the_step_losses():
    solver, ref = setup(f0=3.0)  # one step(3.0) so far
    W = nudge(solver, 5, 0.01)
    for v in (1.0, 2.0):
        solver.step(torch.tensor(v, dtype=torch.float64))
    expected = ref.update(W, 2.0)  # mean of 3, 1, 2: the window since the last update
    rec = solver.update()
    assert rec["train_loss"] == 2.0
    check_against(solver, ref, rec, expected)
    # the next window starts empty
    W = nudge(solver, 6, 0.01)
    solver.step(0.5)
    expected = ref.update(W, 0.5)
    check_against(solver, ref, solver.update(), expected)


def test_train_loss_without_step_losses():
    """update(train_loss=...) alone is enough (the documented loop never calls step(loss)).

    With no f(W⁰) known, the first condition compares the penalty terms only.
    """
    model = make(Net, seed=3, dtype=torch.float64)
    solver = SLR(model, PLAN, rho=RHO, M=M, r=R, s0=S0, schedule=RhoSchedule(growth=GROWTH))
    ref = Reference(solver, f0=1.25)
    W = nudge(solver, 7, 0.03)
    expected = ref.update(W, 1.25)
    rec = solver.update(train_loss=1.25)
    check_against(solver, ref, rec, expected)
    W = nudge(solver, 8, 0.03)
    expected = ref.update(W, 1.0)
    check_against(solver, ref, solver.update(train_loss=1.0), expected)


def test_w_prev_is_a_copy_not_a_reference():
    """The released code stores W^k by reference, so condition 1 only compares losses."""
    solver, _ = setup()
    solver.update(train_loss=1.0)
    before = {n: t.clone() for n, t in solver.W_prev.items()}
    nudge(solver, 9, 0.1)
    for n in KEYS:
        assert torch.equal(solver.W_prev[n], before[n])


def test_alpha_values():
    assert alpha(1, 300, 0.1) == 1 - 1 / 300  # k^(1 − 1/k^r) = 1 at k = 1
    for k in (1, 2, 3, 10, 1000):
        for M_, r in ((300, 0.1), (2.0, 0.5), (1.5, 0.9)):
            assert alpha(k, M_, r) == pytest.approx(ref_alpha(k, M_, r), rel=1e-15)
    assert alpha(2, 300, 0.1) == pytest.approx(1 - 1 / (300 * 2 ** (1 - 2**-0.1)), rel=1e-15)
    with pytest.raises(ValueError, match="k >= 1"):
        alpha(0, 300, 0.1)


@settings(max_examples=60, deadline=None)
@given(
    M_=st.floats(1.001, 1e4),
    r=st.floats(0.01, 0.99),
    k=st.integers(1, 10**5),
)
def test_alpha_is_in_0_1_and_increases_towards_1(M_, r, k):
    a, b = alpha(k, M_, r), alpha(k + 1, M_, r)
    assert 0 < a < 1 and 0 < b < 1
    assert a < b or (a == b and k > 100)  # strictly increasing up to float resolution
    assert alpha(1, M_, r) < alpha(2, M_, r)
    far = alpha(10**12, M_, r)
    assert far >= b and 1 - far < (1 - alpha(1, M_, r)) / 100  # → 1 as k → ∞
