"""ADMM (docs/algorithms.md §1): ECCV'18 weight pruning, ADMM-NN, StructADMM.

Scaled form, per layer i:

    W-step   train on f(W) + Σ ρ_i/2 ||W_i − Z_i + U_i||²_F       (Z, U constants)
    Z-step   Z_i ← Π_{S_i}(W_i + U_i)
    U-step   U_i ← U_i + W_i − Z_i
    ρ        ρ_i ← schedule(k); U_i ← U_i · ρ_old/ρ_new

With ``coupled=`` the tensors tied by coupled channels join in: each has its
own Z and U, the W-step penalty covers them, and the Z-step projects all
tensors at once, Z ← Π(W + U) with Π the combined projection of
:mod:`dualprune.solvers.coupled` (Π_{S_i} per layer, Π_{S_G} jointly over the
tied tensors, their masks ANDed where a tensor has both).

Z⁰ = Π_S(W⁰), U⁰ = 0. U is a plain tensor, never a view of W nor part of any
autograd graph (the released PyTorch code builds it from the live parameter,
which leaks gradients through U). When ρ changes, the scaled dual is rescaled
so that the unscaled multiplier ρU stays put (Boyd et al. 2011, §3.4.1);
codes that grow ρ without the rescale change the multiplier too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dualprune.constraints import Constraint
from dualprune.constraints.coupled import Coupled
from dualprune.plan import Plan
from dualprune.solvers.base import relative_residual
from dualprune.solvers.penalty import PenaltySolver, RhoSchedule, RhoValue
from dualprune.solvers.settings import Cadence, checked

__all__ = ["ADMM"]


class ADMM(PenaltySolver):
    """ADMM-regularized training towards each layer's constraint set.

    Args:
        model: The network.
        plan: A :class:`~dualprune.Plan` or ``{layer name: Constraint}`` (None or
            empty with ``coupled``).
        coupled: A :class:`~dualprune.Coupled` set of coupled channels, or None.
        rho: ρ, one float or ``{layer pattern: float}`` (ECCV'18 LeNet-5: 1e-4;
            NEU PyTorch: 1e-3 growing ×1.3 per update; ADMM-NN: ~7e-3 per layer;
            the coupled set is named ``"coupled"``).
        schedule: how ρ changes per update (:class:`RhoSchedule`: growth γ, ρ ← γ·ρ,
            warm-up, cap; in a recipe ``rho_growth``, ``rho_warmup``, ...).
        cadence: Z/U step every N epochs or N batches (:class:`Cadence`; in a recipe
            ``update_every``, ``update_every_batches``).

    Example:
        >>> solver = ADMM(model, Plan({"*": Sparsity(0.9)}), rho=1e-3)
        >>> # per batch: loss.backward(); solver.regularize(); opt.step(); solver.step(loss)
        >>> # per epoch: solver.update()
        >>> masks = solver.hard_prune()
    """

    name = "admm"

    @checked
    def __init__(
        self,
        model: nn.Module,
        plan: Plan | Mapping[str, Constraint] | None = None,
        *,
        coupled: Coupled | None = None,
        rho: RhoValue = 1e-3,
        schedule: RhoSchedule = RhoSchedule(),
        cadence: Cadence = Cadence(),
    ) -> None:
        super().__init__(model, plan, coupled=coupled, rho=rho, schedule=schedule, cadence=cadence)
        self.U = {n: torch.zeros_like(z) for n, z in self.Z.items()}
        self._refresh_anchor(self.rho)

    def _refresh_anchor(self, rho: Mapping[str, float]) -> None:
        for n in self.Z:
            torch.sub(self.Z[n], self.U[n], out=self.anchor[n])

    def penalty(self) -> Tensor:
        """Σ_t ρ_t/2 ||W_t − Z_t + U_t||²_F over every key (differentiable in W only)."""
        rho = self.rho
        total = torch.zeros(())
        for n, w in self.weights.items():
            total = total + rho[n] / 2 * (w - self.anchor[n]).pow(2).sum()
        return total

    def _update(self, train_loss: float | None) -> dict[str, Any]:
        rho_old = self.rho
        W = {n: w.detach() for n, w in self.weights.items()}
        Z_new = self.joint.project({n: W[n] + self.U[n] for n in W}, rho_old)
        layers = {}
        for n, w in W.items():
            z_old, z = self.Z[n], Z_new[n]
            self.U[n].add_(w - z)
            layers[n] = {
                "residual": relative_residual(w - z, w),
                "rho": rho_old[n],
                "dual_residual": float((z - z_old).norm()) * rho_old[n],
            }
            self.Z[n] = z
        rho_new = self.rho_at(self.updates + 1)
        for n in W:
            if rho_new[n] != rho_old[n]:
                self.U[n].mul_(rho_old[n] / rho_new[n])
        self._refresh_anchor(rho_new)
        record: dict[str, Any] = {"rho": _mean(rho_new), "layers": layers}
        if self.coupled is not None:
            record["coupled"] = {"residual": self.joint.residual(W, self.Z)}
        return record

    def _tensors(self) -> dict[str, dict[str, Tensor]]:
        return {**super()._tensors(), "U": self.U}


def _mean(values: Mapping[str, float]) -> float:
    return sum(values.values()) / max(len(values), 1)
