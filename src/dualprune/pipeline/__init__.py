"""Recipes and the stages they run (docs/design.md, "Data flow of one run").

>>> from dualprune.pipeline import load_recipe, run
>>> result = run(load_recipe("quickstart", out="runs/quickstart"))
"""

from dualprune.pipeline.evaluation import evaluate_checkpoint
from dualprune.pipeline.recipe import (
    DEFAULT_RECIPE,
    CoupledOptions,
    PlanSection,
    Recipe,
    SolverOptions,
    builtin_recipes,
    load_recipe,
    validate,
)
from dualprune.pipeline.runreport import report_run
from dualprune.pipeline.stages import RunResult, run

__all__ = [
    "DEFAULT_RECIPE",
    "CoupledOptions",
    "PlanSection",
    "Recipe",
    "RunResult",
    "SolverOptions",
    "builtin_recipes",
    "evaluate_checkpoint",
    "load_recipe",
    "report_run",
    "run",
    "validate",
]
