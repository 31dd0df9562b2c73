"""SLR: Surrogate Lagrangian Relaxation (docs/algorithms.md §2), the main seed.

With unscaled multipliers Λ_i and a quadratic penalty,

    L(W, Z, Λ) = f(W) + Σ_i [ ⟨Λ_i, W_i − Z_i⟩ + ρ_i/2 ||W_i − Z_i||²_F ]

each update k (after a W-step of training on L) does:

1. Condition 1, L(W^{k+1}, Z^k, Λ^k) < L(W^k, Z^k, Λ^k): if it holds, the
   step size and multipliers move,

       s^k = α^k · s^{k−1} · ||g^{k−1}|| / ||g^k||,   α^k = 1 − 1/(M · k^(1 − 1/k^r))
       Λ  ← Λ + s^k (W^{k+1} − Z^k)                  (g = W − Z over all layers)

   otherwise Λ stays.
2. Z-step Z^{k+1} = Π_S(W^{k+1} + Λ/ρ). Condition 2,
   L(W^{k+1}, Z^{k+1}, Λ) < L(W^{k+1}, Z^k, Λ): if it holds, the same rule
   moves s and Λ ← Λ + s (W^{k+1} − Z^{k+1}). So k can advance twice.

f is the mean training loss of the last W-step window (the losses passed to
:meth:`Solver.step`, or ``train_loss`` given to :meth:`Solver.update`); f(W⁰)
is the first batch's loss (when only ``train_loss`` is given, the first
condition 1 takes f(W⁰) = f(W¹), so it compares the penalty terms alone).
The penalty terms are evaluated exactly, with a stored *copy* of W^k (not a
reference: the released code stores a reference, so its condition 1
degenerates into "the loss went down"). Z⁰ = Π_S(W⁰), Λ⁰ = 0, and nothing but
W ever requires grad.

With ``coupled=`` the coupled set is one more constraint: its tied tensors get
Z, Λ and a stored W^k, their terms enter L (so both surrogate conditions), g
and the multiplier steps, and the Z-step projects everything at once with the
combined projection of :mod:`dualprune.solvers.coupled`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import torch
from annotated_types import Gt, Lt
from torch import Tensor, nn

from dualprune.constraints import Constraint
from dualprune.constraints.coupled import Coupled
from dualprune.errors import ConfigError
from dualprune.plan import Plan
from dualprune.solvers.base import relative_residual
from dualprune.solvers.penalty import PenaltySolver, RhoSchedule, RhoValue
from dualprune.solvers.settings import Cadence, checked

__all__ = ["SLR", "alpha"]


def alpha(k: int, M: float, r: float) -> float:
    """α^k = 1 − 1/(M · k^(1 − 1/k^r)) for k ≥ 1 (the SLR step-size factor)."""
    if k < 1:
        raise ValueError(f"alpha is defined for k >= 1, got {k}")
    return 1.0 - 1.0 / (M * k ** (1.0 - 1.0 / k**r))


class SLR(PenaltySolver):
    """Surrogate Lagrangian Relaxation towards each layer's constraint set.

    Args:
        model: The network.
        plan: A :class:`~dualprune.Plan` or ``{layer name: Constraint}`` (None or
            empty with ``coupled``).
        coupled: A :class:`~dualprune.Coupled` set of coupled channels, or None.
        rho: ρ of the quadratic penalty, one float or ``{layer pattern: float}``
            (released default 0.1, from ResNet-18/CIFAR-10; quantization 1e-3;
            the coupled set is named ``"coupled"``).
        M: M > 1 of the α^k rule (released default 300).
        r: 0 < r < 1 of the α^k rule (released default 0.1).
        s0: initial step size s⁰ > 0 (released default 0.01).
        schedule: how ρ changes per update (:class:`RhoSchedule`; released
            quantization code: ρ ×1.1 per update; in a recipe ``rho_growth``, ...).
        cadence: update every N epochs (released code: 1) or N batches
            (:class:`Cadence`; in a recipe ``update_every``, ``update_every_batches``).

    Raises:
        ConfigError: M ≤ 1, r outside (0, 1), s0 ≤ 0, or an update with no
            training loss known (pass ``step(loss)`` or ``update(train_loss=...)``).
    """

    name = "slr"

    @checked
    def __init__(
        self,
        model: nn.Module,
        plan: Plan | Mapping[str, Constraint] | None = None,
        *,
        coupled: Coupled | None = None,
        rho: RhoValue = 0.1,
        M: Annotated[float, Gt(1)] = 300.0,
        r: Annotated[float, Gt(0), Lt(1)] = 0.1,
        s0: Annotated[float, Gt(0)] = 0.01,
        schedule: RhoSchedule = RhoSchedule(),
        cadence: Cadence = Cadence(),
    ) -> None:
        super().__init__(model, plan, coupled=coupled, rho=rho, schedule=schedule, cadence=cadence)
        self.M, self.r, self.s0 = float(M), float(r), float(s0)
        self.Lam = {n: torch.zeros_like(z) for n, z in self.Z.items()}
        self.W_prev = {n: w.detach().clone() for n, w in self.weights.items()}
        self.f_prev: float | None = None
        self.s = self.s0  # s^{k−1}
        self.k = 0  # multiplier updates so far
        self.g_prev = self._violation(self.W_prev, self.Z)  # ||g^{k−1}||
        self._refresh_anchor(self.rho)

    # ---- the math -----------------------------------------------------------------------

    def _refresh_anchor(self, rho: Mapping[str, float]) -> None:
        for n in self.Z:
            torch.sub(self.Z[n], self.Lam[n], alpha=1.0 / rho[n], out=self.anchor[n])

    def penalty(self) -> Tensor:
        """Σ_i ⟨Λ_i, W_i − Z_i⟩ + ρ_i/2 ||W_i − Z_i||²_F (differentiable in W only)."""
        rho = self.rho
        total = torch.zeros(())
        for n, w in self.weights.items():
            d = w - self.Z[n]
            total = total + (self.Lam[n] * d).sum() + rho[n] / 2 * d.pow(2).sum()
        return total

    def _terms(self, W: Mapping[str, Tensor], Z: Mapping[str, Tensor]) -> float:
        """Σ_t ⟨Λ_t, W_t − Z_t⟩ + ρ_t/2 ||W_t − Z_t||² in float64 (the non-f part of L)."""
        rho = self.rho
        total = 0.0
        for n in self.Z:
            d = (W[n] - Z[n]).double()
            total += float((self.Lam[n].double() * d).sum()) + rho[n] / 2 * float(d.pow(2).sum())
        return total

    @staticmethod
    def _violation(W: Mapping[str, Tensor], Z: Mapping[str, Tensor]) -> float:
        """||g|| = ||W − Z||_F over all layers together."""
        return float(sum(float((W[n] - Z[n]).double().pow(2).sum()) for n in Z) ** 0.5)

    def _move(self, W: Mapping[str, Tensor], Z: Mapping[str, Tensor]) -> bool:
        """s^k by the α^k rule, then Λ ← Λ + s^k (W − Z). False if g = 0 (nothing to move)."""
        g = self._violation(W, Z)
        if g == 0.0 or self.g_prev == 0.0:
            self.g_prev = g if g > 0 else self.g_prev
            return False
        self.k += 1
        self.s = alpha(self.k, self.M, self.r) * self.s * self.g_prev / g
        self.g_prev = g
        for n in self.Lam:
            self.Lam[n].add_(W[n] - Z[n], alpha=self.s)
        return True

    def _update(self, train_loss: float | None) -> dict[str, Any]:
        if train_loss is None:
            raise ConfigError(
                "SLR needs the training loss for its surrogate condition: call "
                "solver.step(loss) after every batch or solver.update(train_loss=...)"
            )
        f_old = self.f_prev if self.f_prev is not None else self.first_loss
        if f_old is None:  # f(W⁰) unknown (no step losses): compare the penalty terms only
            f_old = train_loss
        W = {n: w.detach() for n, w in self.weights.items()}
        # condition 1: did the W-step lower the Lagrangian (Z^k, Λ^k fixed)?
        L_new = train_loss + self._terms(W, self.Z)
        L_old = f_old + self._terms(self.W_prev, self.Z)
        cond1 = L_new < L_old
        moved1 = cond1 and self._move(W, self.Z)
        # Z-step and condition 2 (W^{k+1}, Λ fixed: f cancels)
        rho = self.rho
        Z_new = self.joint.project({n: W[n] + self.Lam[n] / rho[n] for n in W}, rho)
        cond2 = self._terms(W, Z_new) < self._terms(W, self.Z)
        self.Z = Z_new
        moved2 = cond2 and self._move(W, self.Z)
        for n in W:
            self.W_prev[n].copy_(W[n])
        self.f_prev = train_loss
        rho_next = self.rho_at(self.updates + 1)
        self._refresh_anchor(rho_next)
        record: dict[str, Any] = {
            "rho": sum(rho_next.values()) / len(rho_next),
            "step_size": self.s,
            "k": self.k,
            "conditions": [bool(cond1), bool(cond2)],
            "multipliers_moved": [bool(moved1), bool(moved2)],
            "lagrangian": [L_old, L_new],
            "layers": {
                n: {"residual": relative_residual(W[n] - self.Z[n], W[n]), "rho": rho[n]} for n in W
            },
        }
        if self.coupled is not None:
            record["coupled"] = {"residual": self.joint.residual(W, self.Z)}
        return record

    # ---- state --------------------------------------------------------------------------

    def _tensors(self) -> dict[str, dict[str, Tensor]]:
        return {**super()._tensors(), "Lam": self.Lam, "W_prev": self.W_prev}

    def _extra_state(self) -> dict[str, Any]:
        return {"f_prev": self.f_prev, "s": self.s, "k": self.k, "g_prev": self.g_prev}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.f_prev, self.s = state["f_prev"], state["s"]
        self.k, self.g_prev = state["k"], state["g_prev"]

    def settings(self) -> dict[str, Any]:
        """The solver's settings as plain data (for reports and logs)."""
        return {**super().settings(), "M": self.M, "r": self.r, "s0": self.s0}
