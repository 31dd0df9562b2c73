"""Masks: what a solver decided, fixed, enforced while retraining, and saved.

- :mod:`~dualprune.masks.masks`: :class:`Masks`, the supports M_i and fixed scales α_i.
- :mod:`~dualprune.masks.enforce`: the hooks that keep a retraining model on them.
- :mod:`~dualprune.masks.file`: the safetensors file layout.
"""

from dualprune.masks.masks import FORMAT, Masks

__all__ = ["FORMAT", "Masks"]
