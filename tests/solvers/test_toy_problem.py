"""Convex toy problem: sparse least squares, min ||Ax − b||²/m s.t. ||x||_0 ≤ k.

x is the weight of a bias-free Linear(8, 1), so the optimum over all C(8, 3) = 56
supports can be brute-forced. ADMM and SLR are driven by a plain full-batch
gradient loop through the solver hooks (docs/algorithms.md §1, §2); after
``hard_prune`` the point must be feasible and as good as the brute-force optimum.

The instances are fixed. On the "hard" ones, pruning the dense least-squares
solution by magnitude picks the wrong support (checked below), so the solvers
have to move the support to pass. The learning rate restarts each update at
1/(L + ρ) (L = the Lipschitz constant of ∇f), as the NEU ADMM code restarts it.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from dualprune.constraints import Sparsity
from dualprune.plan import weight_key
from dualprune.solvers import ADMM, SLR, PenaltySolver, RhoSchedule

N, M_ROWS, K = 8, 24, 3
FC = weight_key("fc")  # the solver's key of layer "fc": "fc.weight"
RATIO = 1 - K / N  # keeps round((1 − 0.625)·8) = 3 entries


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(N, 1, bias=False)

    def forward(self, A: Tensor) -> Tensor:
        return self.fc(A).squeeze(1)  # (m,)


def problem(seed: int, noise: float) -> tuple[Tensor, Tensor]:
    """A (24×8 Gaussian) and b = A x_true + noise, x_true 3-sparse (float64)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(M_ROWS, N, generator=g, dtype=torch.float64)
    x = torch.zeros(N, dtype=torch.float64)
    idx = torch.randperm(N, generator=g)[:K]
    signs = torch.randn(K, generator=g, dtype=torch.float64).sign()
    x[idx] = signs * (0.5 + torch.rand(K, generator=g, dtype=torch.float64))
    b = A @ x + noise * torch.randn(M_ROWS, generator=g, dtype=torch.float64)
    return A, b


def f(A: Tensor, b: Tensor, x: Tensor) -> float:
    return float(((A @ x - b) ** 2).mean())


def restricted_lsq(A: Tensor, b: Tensor, support: list[int]) -> Tensor:
    x = torch.zeros(N, dtype=torch.float64)
    x[support] = torch.linalg.lstsq(A[:, support], b.unsqueeze(1)).solution.squeeze(1)
    return x


def brute_force(A: Tensor, b: Tensor) -> tuple[float, Tensor]:
    best = min(
        (restricted_lsq(A, b, list(s)) for s in itertools.combinations(range(N), K)),
        key=lambda x: f(A, b, x),
    )
    return f(A, b, best), best


def dense_lsq(A: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)


def solve(
    A: Tensor,
    b: Tensor,
    cls: type[PenaltySolver],
    mode: str,
    rounds: int = 30,
    inner: int = 15,
    **opt,
) -> tuple[Tensor, PenaltySolver]:
    """Warm start at the dense LS solution, then rounds × (inner GD steps + update)."""
    model = Toy().double()
    with torch.no_grad():
        model.fc.weight.copy_(dense_lsq(A, b).unsqueeze(0))
    solver = cls(model, {"fc": Sparsity(RATIO)}, **opt)
    L = 2 * float(torch.linalg.eigvalsh(A.T @ A / M_ROWS).max())
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(rounds):
        for group in sgd.param_groups:
            group["lr"] = 1.0 / (L + solver.rho[FC])
        for _ in range(inner):
            loss = ((model(A) - b) ** 2).mean()
            total = loss + solver.penalty() if mode == "penalty" else loss
            sgd.zero_grad()
            total.backward()
            if mode == "regularize":
                solver.regularize()
            sgd.step()
            solver.step(loss)
        solver.update()
    masks = solver.hard_prune()
    x = model.fc.weight.detach()[0].clone()
    assert torch.equal(masks["fc.weight"][0], x != 0)
    return x, solver


SOLVERS = {
    "admm": (ADMM, {"rho": 1.0}),
    "slr": (SLR, {"rho": 0.5, "schedule": RhoSchedule(growth=1.2), "s0": 0.5, "M": 20.0, "r": 0.1}),
}
# (seed, noise, hard): on the hard instances magnitude pruning of dense LS is suboptimal
INSTANCES = [(0, 0.5, False), (3, 1.0, True), (38, 1.0, True)]


@pytest.mark.parametrize("seed,noise,hard", INSTANCES)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_reaches_the_brute_force_optimum(name, seed, noise, hard):
    A, b = problem(seed, noise)
    f_star, x_star = brute_force(A, b)
    x_mag = restricted_lsq(A, b, dense_lsq(A, b).abs().topk(K).indices.tolist())
    assert (f(A, b, x_mag) > f_star * 1.02) == hard  # the instance is what it claims
    cls, opt = SOLVERS[name]
    x, solver = solve(A, b, cls, "regularize", **opt)
    assert int((x != 0).sum()) <= K  # feasible
    assert torch.equal(Sparsity(RATIO).project(x.unsqueeze(0))[0], x)
    assert f(A, b, x) <= f_star * (1 + 1e-5)
    assert torch.equal(x != 0, x_star != 0)
    torch.testing.assert_close(x, x_star, atol=1e-3, rtol=0)
    assert solver.updates == 30
    assert solver.residuals()[FC] == 0.0  # W ∈ S after the hard prune


@pytest.mark.parametrize("name", list(SOLVERS))
def test_penalty_and_regularize_give_the_same_gradients(name):
    """Mid-run (U or Λ nonzero), ∇(f + penalty()) == ∇f + regularize()'s addition."""
    A, b = problem(3, 1.0)
    cls, opt = SOLVERS[name]
    _, solver = solve(A, b, cls, "regularize", rounds=4, inner=5, **opt)  # solver state mid-run
    model = solver.model
    with torch.no_grad():  # move W off Z so that every term is nonzero
        model.fc.weight.add_(torch.linspace(-0.3, 0.3, N, dtype=torch.float64))
    extra = solver.U if name == "admm" else solver.Lam  # type: ignore[attr-defined]
    assert float(extra[FC].abs().sum()) > 0

    def grad(mode: str) -> Tensor:
        model.zero_grad(set_to_none=True)
        loss = ((model(A) - b) ** 2).mean()
        (loss + solver.penalty() if mode == "penalty" else loss).backward()
        if mode == "regularize":
            solver.regularize()
        return model.fc.weight.grad.clone()  # type: ignore[union-attr]

    g_pen, g_reg = grad("penalty"), grad("regularize")
    torch.testing.assert_close(g_pen, g_reg, rtol=1e-12, atol=1e-12)
    # and regularize() alone (grad None before) is exactly ρ (W − anchor)
    model.zero_grad(set_to_none=True)
    solver.regularize()
    w = model.fc.weight.detach()
    expected = solver.rho[FC] * (w - solver.anchor[FC])
    torch.testing.assert_close(model.fc.weight.grad, expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_penalty_mode_runs_the_same_trajectory(name):
    """The whole loop with penalty() in the loss ends where the regularize() loop ends."""
    A, b = problem(3, 1.0)
    cls, opt = SOLVERS[name]
    x_reg, s_reg = solve(A, b, cls, "regularize", rounds=12, inner=10, **opt)
    x_pen, s_pen = solve(A, b, cls, "penalty", rounds=12, inner=10, **opt)
    torch.testing.assert_close(x_pen, x_reg, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(s_pen.Z[FC], s_reg.Z[FC], rtol=1e-9, atol=1e-10)
    if name == "slr":
        assert [r["conditions"] for r in s_pen.history] == [r["conditions"] for r in s_reg.history]
