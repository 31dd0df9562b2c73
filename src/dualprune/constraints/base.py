"""The constraint protocol: a set S and its Euclidean projection Π_S.

See docs/algorithms.md §3. A constraint is pure tensor math: it never sees an
``nn.Module``. Solvers call :meth:`Constraint.project` in their Z-step, masks
come from :meth:`Constraint.mask`, and :meth:`Constraint.check` validates a
weight's shape up front so that a plan fails early, naming the layer.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor

__all__ = ["Constraint", "Intersection"]


class Constraint(abc.ABC):
    """A closed set S of weight tensors with its projection.

    Subclasses implement :meth:`project` (Π_S(w) = argmin_{z ∈ S} ||z − w||²_F,
    exact where the docstring says so) and :meth:`to_dict`.
    """

    @abc.abstractmethod
    def project(self, w: Tensor) -> Tensor:
        """Return Π_S(w), a new tensor of w's shape, dtype and device (w is not modified)."""

    def mask(self, w: Tensor) -> Tensor:
        """Boolean tensor of w's shape: True where Π_S(w) may be nonzero (the support kept)."""
        return self.project(w) != 0

    def check(self, w: Tensor | torch.Size | tuple[int, ...], name: str = "weight") -> None:
        """Raise :class:`~dualprune.errors.ConstraintError` naming ``name`` if S cannot apply.

        Accepts a tensor or just its shape. The default accepts everything.
        """

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain-data description (``{"type": ..., ...}``) for recipes and reports."""

    def __and__(self, other: Constraint) -> Constraint:
        return Intersection(self, other)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constraint) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))


class Intersection(Constraint):
    """S_1 ∩ S_2 for a sparsity set followed by a quantization set.

    Projection (docs/algorithms.md §3, "joint sparse + quantized"): the
    sparsity projection picks the support, then the survivors are quantized;
    zeros stay zero. The concrete behaviour is implemented by the sparsity /
    quantization classes (see ``constraints/__init__.py``).
    """

    def __init__(self, first: Constraint, second: Constraint) -> None:
        self.first = first
        self.second = second

    def project(self, w: Tensor) -> Tensor:
        return self.second.project(self.first.project(w))  # TODO(constraints): exact joint rule

    def to_dict(self) -> dict[str, Any]:
        return {"type": "intersection", "parts": [self.first.to_dict(), self.second.to_dict()]}
