"""dualprune: pruning and quantization as constrained optimization (ADMM, SLR).

See README.md for a tour and docs/ for the math.
"""

from dualprune import errors

__version__ = "0.1.0"

__all__ = ["__version__", "errors"]
