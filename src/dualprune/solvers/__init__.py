"""Solvers: how the weights get into their constraint sets (docs/algorithms.md §1, §2).

Every solver follows one protocol (:class:`Solver`): ``penalty()`` or
``regularize()`` during the W-step, ``step(loss)`` after each batch,
``update()`` after each epoch, ``hard_prune()`` at the end, and
``state_dict()`` to resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from dualprune.constraints import Constraint
from dualprune.errors import UnknownNameError, did_you_mean
from dualprune.plan import Plan
from dualprune.solvers.admm import ADMM
from dualprune.solvers.base import Solver, resolve_constraints
from dualprune.solvers.magnitude import Magnitude
from dualprune.solvers.penalty import PenaltySolver, RhoSchedule
from dualprune.solvers.slr import SLR, alpha

__all__ = [
    "ADMM",
    "SLR",
    "SOLVERS",
    "Magnitude",
    "PenaltySolver",
    "RhoSchedule",
    "Solver",
    "alpha",
    "create",
    "resolve_constraints",
]

SOLVERS: dict[str, type[Solver]] = {"admm": ADMM, "slr": SLR, "magnitude": Magnitude}


def create(
    name: str, model: nn.Module, plan: Plan | Mapping[str, Constraint] | None, **options: Any
) -> Solver:
    """Build a solver by name (``"admm"``, ``"slr"``, ``"magnitude"``).

    ``options`` are the solver's keyword arguments, ``coupled=`` included.

    Raises:
        UnknownNameError: an unknown solver name.
    """
    if name not in SOLVERS:
        raise UnknownNameError(f"unknown solver '{name}'{did_you_mean(name, list(SOLVERS))}")
    return SOLVERS[name](model, plan, **options)
