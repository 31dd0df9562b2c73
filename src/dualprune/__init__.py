"""dualprune: pruning and quantization as constrained optimization (ADMM, SLR).

The public API in one place::

    import dualprune as dp
    plan = dp.Plan({"conv*": dp.Sparsity(0.8, "filter"),
                    "fc1": dp.Sparsity(0.99) & dp.Quantization(bits=3)})
    solver = dp.SLR(model, plan, rho=0.1)     # or dp.ADMM(...), dp.Magnitude(...)
    ...                                       # your loop: solver.regularize(), .step(), .update()
    masks = solver.hard_prune()               # W ← Π_S(W); masks.attach(model) to retrain
    small = dp.compact(model, example_input, masks)  # physically smaller (structured)

See README.md for a tour and docs/ for the math.
"""

from dualprune import errors, solvers
from dualprune.compact import CompactionPlan, CompactionWarning, compact, compaction_plan
from dualprune.constraints import (
    Constraint,
    Intersection,
    Quantization,
    Sparsity,
    channel_groups,
    from_dict,
)
from dualprune.masks import Masks
from dualprune.plan import Plan
from dualprune.solvers import ADMM, SLR, Magnitude, Solver
from dualprune.sparsify import sparsify_for_inference

__version__ = "0.1.0"

__all__ = [
    "ADMM",
    "SLR",
    "CompactionPlan",
    "CompactionWarning",
    "Constraint",
    "Intersection",
    "Magnitude",
    "Masks",
    "Plan",
    "Quantization",
    "Solver",
    "Sparsity",
    "__version__",
    "channel_groups",
    "compact",
    "compaction_plan",
    "errors",
    "from_dict",
    "solvers",
    "sparsify_for_inference",
]
