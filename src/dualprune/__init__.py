"""dualprune: pruning and quantization as constrained optimization (ADMM, SLR).

The public API in one place::

    import dualprune as dp
    model = dp.models.create("resnet20")
    plan = dp.Plan({"conv*": dp.Sparsity(0.8, "filter"),
                    "fc1": dp.Sparsity(0.99) & dp.Quantization(bits=3)})
    solver = dp.SLR(model, plan, rho=0.1)     # or dp.ADMM(...), dp.Magnitude(...)
    ...                                       # your loop: solver.regularize(), .step(), .update()
    masks = solver.hard_prune()               # W ← Π_S(W); masks.attach(model) to retrain
    small = dp.compact(model, example_input, masks)  # physically smaller (structured)
    coupled = dp.coupled_from_model(model, example_input, 0.5)  # residual channels as one set
    solver = dp.ADMM(model, plan, coupled=coupled)            # ... solved with the plan

The three concepts live in ``constraints/`` (sets and projections), ``plan.py``
(which layer gets which set) and ``solvers/`` (how the weights get there);
docs/architecture.md maps the rest. See README.md for a tour and docs/ for the math.
"""

from dualprune import (
    compaction,
    constraints,
    errors,
    graph,
    masks,
    models,
    size,
    solvers,
    speed,
)
from dualprune.compaction import CompactionResult, CompactionWarning, compact, compaction_result
from dualprune.constraints import (
    Constraint,
    Coupled,
    Intersection,
    Quantization,
    Sparsity,
    from_dict,
)
from dualprune.graph import channel_groups, coupled_from_model
from dualprune.masks import Masks
from dualprune.plan import Plan
from dualprune.solvers import ADMM, SLR, Magnitude, Solver
from dualprune.speed import WidthSearch, search_widths, sparsify_for_inference

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
    "compaction",
    "compaction_result",
    "constraints",
    "coupled_from_model",
    "errors",
    "from_dict",
    "graph",
    "masks",
    "models",
    "search_widths",
    "size",
    "solvers",
    "sparsify_for_inference",
    "speed",
]
