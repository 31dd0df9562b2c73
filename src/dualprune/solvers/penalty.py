"""What ADMM and SLR share: an auxiliary Z_i ∈ S_i per layer and a quadratic penalty.

Both W-step penalties have the gradient ρ_i (W_i − A_i) for an *anchor* A_i
that only changes at Z/dual steps (docs/algorithms.md §1, §2):

    ADMM:  ρ_i/2 ||W_i − Z_i + U_i||²            A_i = Z_i − U_i
    SLR:   ⟨Λ_i, W_i − Z_i⟩ + ρ_i/2 ||W_i − Z_i||²  A_i = Z_i − Λ_i/ρ_i

so :meth:`PenaltySolver.regularize` adds ρ_i (W_i − A_i) to every ``.grad``
with three fused ``torch._foreach_*`` calls and no autograd graph. Z, U, Λ and
A are plain tensors that never require grad.

ρ follows a schedule counted in updates k (:class:`RhoSchedule`): constant,
geometric growth ρ·γ^k, or a warm-up from a small ρ, each optionally capped.
Per-layer ρ is a mapping of layer-name patterns (globs, or ``re:`` regexes;
first match wins) to values. A coupled set counts as one more layer named
``"coupled"``: its tied tensors without a layer constraint take that ρ (a tensor
with both keeps its layer's ρ).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from annotated_types import Ge, Gt, Le
from torch import Tensor, nn

from dualprune.constraints import Constraint
from dualprune.constraints.coupled import Coupled
from dualprune.errors import ConfigError
from dualprune.plan import Plan, layer_of
from dualprune.solvers.base import Solver
from dualprune.solvers.settings import Cadence, Settings, flat

__all__ = ["COUPLED", "PenaltySolver", "RhoSchedule", "RhoValue", "layer_values"]

#: ρ: one float for every layer, or ``{layer pattern: float}`` (first match wins).
RhoValue = float | Mapping[str, float]

#: The name a coupled set goes by in a per-layer ``rho`` mapping.
COUPLED = "coupled"


@dataclass(frozen=True)
class RhoSchedule(Settings):
    """ρ_i(k) = min(ρ_max, ρ_i · factor(k)) after k updates.

    factor(k) = warmup_from^(1 − k/warmup) during the first ``warmup`` updates
    (a geometric ramp from ρ·warmup_from up to ρ), then growth^(k − warmup).
    In a recipe its fields are ``rho_growth``, ``rho_warmup``, ``rho_warmup_from``
    and ``rho_max``.

    Args:
        growth: γ ≥ 1, the factor per update after warm-up (1 = constant ρ;
            1.3 per update as in the NEU ADMM code).
        warmup: number of updates of the ramp (0 = none).
        warmup_from: the ramp's starting fraction of ρ, in (0, 1].
        max: cap on every layer's ρ (None = no cap).

    Raises:
        ConfigError: a value outside its range (the message names ``rho_<field>``).
    """

    PREFIX: ClassVar[str] = "rho_"

    growth: Annotated[float, Ge(1)] = 1.0
    warmup: Annotated[int, Ge(0)] = 0
    warmup_from: Annotated[float, Gt(0), Le(1)] = 0.01
    max: Annotated[float, Gt(0)] | None = None

    def factor(self, k: int) -> float:
        """The multiplier of the base ρ after k updates."""
        if k < self.warmup:
            return float(self.warmup_from ** (1.0 - k / self.warmup))
        try:
            return float(self.growth ** (k - self.warmup))
        except OverflowError:  # γ^k past the float range (thousands of updates): max caps it
            return math.inf

    def value(self, base: float, k: int) -> float:
        """ρ after k updates for a layer whose base ρ is ``base``."""
        rho = base * self.factor(k)
        return min(rho, self.max) if self.max is not None else rho


def _glob_match(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def layer_values(
    value: float | Mapping[str, float], layers: list[str], key: str
) -> dict[str, float]:
    """One positive float per layer from a float or ``{pattern: float}`` (first match wins).

    Raises:
        ConfigError: a value is not positive, a pattern matches no layer, or a
            layer matches no pattern (add ``"*"`` as the last pattern).
    """

    def positive(v: object, where: str) -> float:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not (v > 0 and math.isfinite(v))
        ):
            raise ConfigError(f"{where}={v!r} is not allowed; use a finite float > 0")
        return float(v)

    if not isinstance(value, Mapping):
        v = positive(value, key)
        return dict.fromkeys(layers, v)
    rules: list[tuple[str, Callable[[str], object], float]] = []
    for pattern, v in value.items():
        text = str(pattern)
        if text.startswith("re:"):
            try:
                rx = re.compile(text[3:])
            except re.error as err:
                raise ConfigError(f"{key} pattern '{text}' is not a valid regex ({err})") from None
            rules.append((text, rx.fullmatch, positive(v, f"{key}['{text}']")))
        else:
            glob = functools.partial(_glob_match, pattern=text)
            rules.append((text, glob, positive(v, f"{key}['{text}']")))
    out: dict[str, float] = {}
    for name in layers:
        for _, match, v in rules:
            if match(name):
                out[name] = v
                break
        else:
            raise ConfigError(
                f"{key}: layer '{name}' matches no pattern ({', '.join(t for t, _, _ in rules)}); "
                "add '*' as the last pattern for a default"
            )
    for text, match, _ in rules:
        if not any(match(n) for n in layers):
            raise ConfigError(
                f"{key} pattern '{text}' matches no constrained layer; "
                f"constrained: {', '.join(layers)}"
            )
    return out


class PenaltySolver(Solver):
    """Shared machinery of ADMM and SLR (see the module docstring).

    Args:
        model, plan, coupled, cadence: as in :class:`Solver`.
        rho: ρ, one float or ``{layer pattern: float}`` (the coupled set's name is
            ``"coupled"``).
        schedule: how ρ changes with the updates (:class:`RhoSchedule`).
    """

    def __init__(
        self,
        model: nn.Module,
        plan: Plan | Mapping[str, Constraint] | None = None,
        *,
        coupled: Coupled | None = None,
        rho: RhoValue,
        schedule: RhoSchedule = RhoSchedule(),
        cadence: Cadence = Cadence(),
    ) -> None:
        if not isinstance(schedule, RhoSchedule):
            raise ConfigError(f"schedule={schedule!r} is not a RhoSchedule")
        super().__init__(model, plan, coupled=coupled, cadence=cadence)
        self.schedule = schedule
        names = list(self.constraints) + ([COUPLED] if self.coupled is not None else [])
        self.rho_base = layer_values(rho, names, "rho")
        # the ρ entry of every key: its layer's, or the coupled set's for tied-only tensors
        self._rho_name = {
            k: layer_of(k) if k in self.joint.by_key else COUPLED for k in self.joint.keys
        }
        with torch.no_grad():
            # Z⁰ = Π_S(W⁰): copies, never views of W
            W = {k: w.detach() for k, w in self.weights.items()}
            self.Z = {k: z.clone() for k, z in self.joint.project(W, self.rho).items()}
        self.anchor = {n: z.clone() for n, z in self.Z.items()}

    @property
    def rho(self) -> dict[str, float]:
        """The current ρ_t of every key (layers, then tied-only tensors)."""
        return self.rho_at(self.updates)

    def rho_at(self, k: int) -> dict[str, float]:
        """ρ_t of every key after k updates."""
        base = {n: self.schedule.value(b, k) for n, b in self.rho_base.items()}
        return {key: base[name] for key, name in self._rho_name.items()}

    def regularize(self) -> None:
        """``W.grad += ρ_t (W_t − A_t)`` for every key: the penalty's exact gradient."""
        names = self.joint.keys
        ws = [self.weights[n] for n in names]
        for w in ws:
            if w.grad is None:
                w.grad = torch.zeros_like(w)
        rho = self.rho
        diffs = torch._foreach_sub([w.detach() for w in ws], [self.anchor[n] for n in names])
        torch._foreach_mul_(diffs, [rho[n] for n in names])
        torch._foreach_add_([w.grad for w in ws], diffs)  # type: ignore[misc, arg-type]

    def _refresh_anchor(self, rho: Mapping[str, float]) -> None:
        """Recompute A_i for the given ρ_i after a Z/dual step."""
        raise NotImplementedError

    def _tensors(self) -> dict[str, dict[str, Tensor]]:
        return {"Z": self.Z, "anchor": self.anchor}

    def settings(self) -> dict[str, Any]:
        """The solver's settings as plain data (for reports and logs)."""
        return {"rho": self.rho_base, **super().settings(), **flat(self.schedule)}
