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

from dualprune.constraints import Constraint, Coupled
from dualprune.errors import UnknownNameError, did_you_mean
from dualprune.plan import Plan
from dualprune.solvers.admm import ADMM
from dualprune.solvers.base import Solver, resolve_constraints
from dualprune.solvers.magnitude import Magnitude
from dualprune.solvers.penalty import PenaltySolver, RhoSchedule
from dualprune.solvers.settings import Cadence, from_flat, options_model
from dualprune.solvers.slr import SLR, alpha

__all__ = [
    "ADMM",
    "SLR",
    "SOLVERS",
    "Cadence",
    "Magnitude",
    "PenaltySolver",
    "RhoSchedule",
    "Solver",
    "alpha",
    "create",
    "options_model",
    "resolve_constraints",
]

#: The solvers a recipe can name. A new solver is a subclass of :class:`Solver` and one
#: line here; its recipe settings come from its constructor (:func:`options_model`).
SOLVERS: dict[str, type[Solver]] = {"admm": ADMM, "slr": SLR, "magnitude": Magnitude}


def create(
    name: str,
    model: nn.Module,
    plan: Plan | Mapping[str, Constraint] | None,
    *,
    coupled: Coupled | None = None,
    **settings: Any,
) -> Solver:
    """Build a solver by name from flat settings, as a recipe's ``solver:`` section has them.

    Args:
        name: A key of :data:`SOLVERS` (``"admm"``, ``"slr"``, ``"magnitude"``).
        model, plan, coupled: As for the solver's constructor.
        **settings: Flat settings: the constructor's own (``rho``, ``M``, ...) and the
            fields of its settings objects under their prefix (``rho_growth``,
            ``update_every``, ...).

    Raises:
        UnknownNameError: an unknown solver name.
        ConfigError: a setting the solver does not have, or a bad value.
    """
    if name not in SOLVERS:
        raise UnknownNameError(f"unknown solver '{name}'{did_you_mean(name, list(SOLVERS))}")
    cls = SOLVERS[name]
    return cls(model, plan, coupled=coupled, **from_flat(cls, settings))
