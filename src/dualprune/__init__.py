"""dualprune: pruning and quantization as constrained optimization (ADMM, SLR).

The public API in one place::

    import dualprune as dp
    plan = dp.Plan({"conv*": dp.Sparsity(0.8, "filter"),
                    "fc1": dp.Sparsity(0.99) & dp.Quantization(bits=3)})
    solver = dp.SLR(model, plan, rho=0.1)     # or dp.ADMM(...), dp.Magnitude(...)
    ...                                       # your loop: solver.regularize(), .step(), .update()
    masks = solver.hard_prune()               # W ← Π_S(W); masks.attach(model) to retrain
    small = dp.compact(model, example_input, masks)  # physically smaller (structured)
    coupled = dp.Coupled.from_model(model, example_input, 0.5)  # residual channels as one set
    solver = dp.ADMM(model, plan, coupled=coupled)            # ... solved with the plan

See README.md for a tour and docs/ for the math.
"""

from dualprune import errors, solvers
from dualprune.compaction.remove import (
    CompactionResult,
    CompactionWarning,
    compact,
    compaction_result,
)
from dualprune.constraints import (
    Constraint,
    Coupled,
    Intersection,
    Quantization,
    Sparsity,
    channel_groups,
    from_dict,
)
from dualprune.masks.masks import Masks
from dualprune.plan import Plan
from dualprune.solvers import ADMM, SLR, Magnitude, Solver
from dualprune.speed.sparsify import sparsify_for_inference
from dualprune.speed.widths import WidthSearch, search_widths

__version__ = "0.1.0"

__all__ = [
    "ADMM",
    "SLR",
    "CompactionResult",
    "CompactionWarning",
    "Constraint",
    "Coupled",
    "Intersection",
    "Magnitude",
    "Masks",
    "Plan",
    "Quantization",
    "Solver",
    "Sparsity",
    "WidthSearch",
    "__version__",
    "channel_groups",
    "compact",
    "compaction_result",
    "errors",
    "from_dict",
    "search_widths",
    "solvers",
    "sparsify_for_inference",
]
