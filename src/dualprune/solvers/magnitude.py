"""Magnitude pruning baselines through the solver protocol.

No penalty: at each update t the weights are projected onto the plan's sets
with the scheduled ratio r_t (largest magnitudes / group norms kept), and the
pruned entries stay at zero until the next update (their gradients are zeroed
by :meth:`Magnitude.regularize`, and :meth:`Magnitude.step` re-zeroes them
after the optimizer step, so momentum cannot revive them).

Schedules of the ratio r_t, t = 1 … ``steps`` updates after ``start``:

- ``oneshot``: train dense, prune once at :meth:`hard_prune` (r_t = 0 before).
- ``iterative``: r_t = r · t/steps, a linear ramp (prune a little, train, repeat).
- ``agp``: r_t = r · (1 − (1 − t/steps)³), automated gradual pruning
  (Zhu & Gupta 2017): fast at first, gently at the end.

Quantization parts of a constraint are applied at :meth:`hard_prune` only.

With ``coupled=`` the same schedule drives the coupled set's channel ratio:
at update t every group removes r_t = r_g · (scheduled fraction) of its
channels, chosen by magnitude on the current weights, in every tied tensor
(BatchNorm γ and β of removed channels included); a tensor with a layer
constraint too keeps the AND of both masks (:mod:`dualprune.solvers.coupled`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge
from torch import nn

from dualprune.constraints import Constraint, Intersection
from dualprune.constraints.coupled import Coupled
from dualprune.errors import ConstraintError
from dualprune.plan import Plan, weight_key
from dualprune.solvers.base import Solver
from dualprune.solvers.settings import Cadence, checked

__all__ = ["DEFAULT_STEPS", "SCHEDULES", "Magnitude", "ratio_at"]

SCHEDULES = ("oneshot", "iterative", "agp")
DEFAULT_STEPS = 10  # pruning updates when neither steps nor expect_updates() says


def ratio_at(schedule: str, target: float, t: int, steps: int) -> float:
    """The scheduled pruning ratio after t of ``steps`` pruning updates (t ≥ 0)."""
    frac = min(max(t, 0), steps) / steps
    if schedule == "oneshot":
        return 0.0
    if schedule == "iterative":
        return target * frac
    return target * (1.0 - (1.0 - frac) ** 3)


def _sparse_ratio(c: Constraint) -> float | None:
    try:
        return float(c.ratio)  # type: ignore[attr-defined]
    except (AttributeError, ConstraintError):  # quantization only, or several sparsity parts
        return None


class Magnitude(Solver):
    """Magnitude pruning (one-shot, iterative, or AGP) with the same hooks as ADMM/SLR.

    Args:
        model: The network.
        plan: A :class:`~dualprune.Plan` or ``{layer name: Constraint}`` (None or
            empty with ``coupled``).
        coupled: A :class:`~dualprune.Coupled` set of coupled channels, or None;
            its channel ratio follows the same schedule.
        schedule: ``"oneshot"``, ``"iterative"`` or ``"agp"``.
        steps: number of pruning updates over which the ratio reaches its target;
            None: all the updates of the stage, as :meth:`expect_updates` is told
            (``dualprune run`` tells it), else :data:`DEFAULT_STEPS`.
        start: updates to wait before the first pruning update.
        cadence: when the pruning updates run (:class:`Cadence`, as in :class:`Solver`).

    Raises:
        ConfigError: an unknown schedule; steps < 1; start < 0.
    """

    name = "magnitude"

    @checked
    def __init__(
        self,
        model: nn.Module,
        plan: Plan | Mapping[str, Constraint] | None = None,
        *,
        coupled: Coupled | None = None,
        schedule: Literal["oneshot", "iterative", "agp"] = "agp",
        steps: Annotated[int, Ge(1)] | None = None,
        start: Annotated[int, Ge(0)] = 0,
        cadence: Cadence = Cadence(),
    ) -> None:
        super().__init__(model, plan, coupled=coupled, cadence=cadence)
        self.schedule, self.start = schedule, start
        self._steps = steps
        self.targets = {n: _sparse_ratio(c) for n, c in self.constraints.items()}
        self.keep: dict[str, torch.Tensor] = {
            n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()
        }

    @property
    def steps(self) -> int:
        """Pruning updates over which the ratio reaches its target (see the class docstring)."""
        return self._steps if self._steps is not None else DEFAULT_STEPS

    def expect_updates(self, updates: int) -> None:
        """Without ``steps``, spread the schedule over the ``updates`` the stage will run."""
        if self._steps is None:
            self._steps = max(1, updates)

    def ratio(self, k: int | None = None) -> float:
        """The schedule's fraction of the target ratio after k updates (default: now)."""
        k = self.updates if k is None else k
        return ratio_at(self.schedule, 1.0, k - self.start, self.steps)

    def _scheduled(self, name: str, fraction: float) -> Constraint | None:
        c, target = self.constraints[name], self.targets[name]
        if target is None or fraction <= 0:
            return None
        sparsity = c.with_ratio(target * fraction)  # type: ignore[attr-defined]
        supports = getattr(sparsity, "supports", None)
        if supports is not None:  # an intersection: only its sparsity parts now
            return Intersection(*supports) if len(supports) > 1 else supports[0]
        return sparsity

    def _update(self, train_loss: float | None) -> dict[str, Any]:
        fraction = self.ratio(self.updates + 1)
        weights = self.weights
        W = {n: w.detach() for n, w in weights.items()}
        new: dict[str, torch.Tensor] = {}
        for n in self.constraints:  # per-layer masks and the coupled ones, all on W now
            c = self._scheduled(n, fraction)
            if c is not None:
                key = weight_key(n)
                new[key] = c.mask(W[key])
        if self.coupled is not None and fraction > 0:
            coupled = self.coupled.with_ratio([r * fraction for r in self.coupled.ratios])
            for n, m in self.joint.tied_masks(W, coupled=coupled).items():
                new[n] = new[n] & m if n in new else m
        layers = {}
        for n, w in weights.items():
            if n in new:
                self.keep[n] = new[n]
                w.mul_(self.keep[n])
            kept = int(self.keep[n].sum())
            layers[n] = {"sparsity": 1.0 - kept / self.keep[n].numel()}
        return {"fraction_of_target": fraction, "layers": layers}

    def regularize(self) -> None:
        """Zero the gradients of pruned entries (call after ``backward()``)."""
        for n, w in self.weights.items():
            if w.grad is not None:
                w.grad.mul_(self.keep[n])

    def step(self, loss: torch.Tensor | float | None = None) -> dict[str, Any] | None:
        """Re-zero pruned entries after the optimizer step, then count the batch."""
        with torch.no_grad():
            for n, w in self.weights.items():
                w.mul_(self.keep[n])
        return super().step(loss)

    def _tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"keep": self.keep}

    def settings(self) -> dict[str, Any]:
        """The solver's settings as plain data (for reports and logs)."""
        return {
            "schedule": self.schedule,
            "steps": self.steps,
            "start": self.start,
            **super().settings(),
        }
