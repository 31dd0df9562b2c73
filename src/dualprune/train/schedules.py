"""Learning-rate schedules as pure functions of the global step.

A schedule maps the optimizer step t (0-based, counted over the whole run)
to a multiplier of the base learning rate. Because it depends on t alone,
its whole state is one integer, so a resumed run picks it up exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from dualprune.errors import UnknownNameError, did_you_mean

__all__ = ["SCHEDULES", "make_schedule"]

Schedule = Callable[[int], float]


def _warmup(total: int, warmup: int, inner: Schedule) -> Schedule:
    if warmup <= 0:
        return inner
    return lambda t: (t + 1) / warmup if t < warmup else inner(t)


def constant(total: int, **_: object) -> Schedule:
    """η_t = η."""
    return lambda t: 1.0


def step(
    total: int, *, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, **_: object
) -> Schedule:
    """η_t = η · γ^(number of milestones passed); milestones are fractions of the run."""
    bounds = sorted(round(m * total) for m in milestones)
    return lambda t: gamma ** sum(t >= b for b in bounds)


def cosine(total: int, *, warmup: int = 0, **_: object) -> Schedule:
    """η_t = η · ½(1 + cos(π · (t − w) / (T − w))) after w linear warm-up steps."""
    span = max(1, total - warmup)
    return _warmup(
        total, warmup, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t - warmup, span) / span))
    )


def onecycle(
    total: int, *, pct_start: float = 0.3, div: float = 25.0, final_div: float = 1e4, **_: object
) -> Schedule:
    """One-cycle (Smith & Topin 2019): cosine rise η/div → η, then cosine fall to η/final_div."""
    up = max(1, round(pct_start * total))
    down = max(1, total - up)

    def f(t: int) -> float:
        if t < up:
            a, b, x = 1.0 / div, 1.0, t / up
        else:
            a, b, x = 1.0, 1.0 / final_div, min(1.0, (t - up) / down)
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * x))

    return f


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "step": step,
    "cosine": cosine,
    "onecycle": onecycle,
}


def make_schedule(name: str, total_steps: int, **options: object) -> Schedule:
    """Build the multiplier function ``t ↦ η_t / η`` of schedule ``name``.

    Args:
        name: one of :data:`SCHEDULES`.
        total_steps: optimizer steps in the whole run.
        **options: the schedule's own options (milestones, gamma, warmup, ...).

    Raises:
        UnknownNameError: ``name`` is not a known schedule.
    """
    if name not in SCHEDULES:
        raise UnknownNameError(f"unknown schedule '{name}'{did_you_mean(name, list(SCHEDULES))}")
    return SCHEDULES[name](total_steps, **options)
