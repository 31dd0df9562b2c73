"""dualprune: pruning and quantization as constrained optimization (ADMM, SLR).

The public API in one place::

    import dualprune as dp
    plan = dp.Plan({"conv*": dp.Sparsity(0.8, "filter"),
                    "fc1": dp.Sparsity(0.99) & dp.Quantization(bits=3)})

See README.md for a tour and docs/ for the math.
"""

from dualprune import errors
from dualprune.constraints import (
    Constraint,
    Intersection,
    Quantization,
    Sparsity,
    channel_groups,
    from_dict,
)
from dualprune.plan import Plan

__version__ = "0.1.0"

__all__ = [
    "Constraint",
    "Intersection",
    "Plan",
    "Quantization",
    "Sparsity",
    "__version__",
    "channel_groups",
    "errors",
    "from_dict",
]
