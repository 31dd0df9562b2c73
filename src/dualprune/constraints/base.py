"""The constraint protocol: a set S and its Euclidean projection Π_S.

See docs/algorithms.md §3. A constraint is pure tensor math: it never sees an
``nn.Module``. Solvers call :meth:`Constraint.project` in their Z-step, masks
come from :meth:`Constraint.mask`, and :meth:`Constraint.check` validates a
weight's shape up front so that a plan fails early, naming the layer.

Two kinds of sets exist. *Support* sets (:class:`~dualprune.constraints.Sparsity`)
say which entries may be nonzero; *value* sets
(:class:`~dualprune.constraints.Quantization`) say which values the entries may
take. :class:`Intersection` combines any number of support sets with at most one
value set.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
from torch import Tensor

from dualprune.errors import ConstraintError

__all__ = [
    "Constraint",
    "Intersection",
    "check_multiple_of",
    "kept_count",
    "round_to_multiple",
    "shape_of",
]

Shape = tuple[int, ...]


def kept_count(ratio: float, count: int, multiple_of: int = 1) -> int:
    """k = round((1 − ratio)·count), the number of entries or groups Π_S keeps.

    Halves round up (``kept_count(0.5, 5) == 3``), so ``ratio`` 0 keeps everything
    and the result is always in [0, count] (docs/algorithms.md §3). With
    ``multiple_of`` m > 1 that k is then moved to the nearest count a kernel
    with channel blocks of m likes (:func:`round_to_multiple`); m = 1 changes nothing.
    """
    k = min(count, max(0, math.floor((1.0 - ratio) * count + 0.5)))
    return k if multiple_of == 1 else round_to_multiple(k, count, multiple_of)


def round_to_multiple(k: int, count: int, multiple_of: int) -> int:
    """The count of A_m(C) = {m, 2m, …, ⌊C/m⌋·m} ∪ {C} nearest to k (ties: the larger).

    m = ``multiple_of``, C = ``count``, 0 ≤ k ≤ C. Every result is a positive
    multiple of m, or C itself ("keep all", the only choice when C ≤ m), so a
    ratio of 0 (k = C) still keeps everything and k = 0 becomes m (or C). The map
    is non-decreasing in k, so a smaller ratio never keeps fewer groups.
    m = 1 returns k unchanged.

    Example:
        >>> [round_to_multiple(k, 45, 8) for k in (0, 11, 12, 23, 43, 45)]
        [8, 8, 16, 24, 45, 45]
    """
    m = multiple_of
    if m == 1 or count <= m:
        return k if m == 1 else count
    below = (k // m) * m  # the multiples of m on either side of k
    candidates = [c for c in (below, below + m) if m <= c <= count] + [count]
    return min(candidates, key=lambda c: (abs(c - k), -c))


def check_multiple_of(value: object, where: str) -> int:
    """``value`` as the int m of a ``multiple_of`` option; ConstraintError naming ``where`` if not.

    m must be a positive int (not a bool); 1 means no rounding.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConstraintError(
            f"{where}: multiple_of={value!r} is not allowed; use a positive int such as 8 "
            "(the kept count is rounded to a multiple of it; 1 = no rounding)"
        )
    return int(value)


def shape_of(w_or_shape: Tensor | torch.Size | tuple[int, ...]) -> Shape:
    """The shape of a tensor, or the shape itself, as a tuple of ints."""
    if isinstance(w_or_shape, Tensor):
        return tuple(w_or_shape.shape)
    return tuple(int(d) for d in w_or_shape)


def shape_text(shape: Shape) -> str:
    """``(10, 7)`` → ``"10×7"`` for error messages."""
    return "×".join(str(d) for d in shape) if shape else "scalar"


class Constraint(abc.ABC):
    """A closed set S of weight tensors with its projection.

    Subclasses implement :meth:`project` (Π_S(w) = argmin_{z ∈ S} ||z − w||²_F,
    exact where the docstring says so) and :meth:`to_dict`.

    Class attributes say which kind of set it is: ``restricts_support`` (the set
    fixes which entries may be nonzero) and ``restricts_values`` (the set fixes
    the values entries may take). :class:`Intersection` uses them.
    """

    restricts_support: bool = False
    restricts_values: bool = False

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
        return None

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain-data description (``{"type": ..., ...}``) for recipes and reports."""

    def __and__(self, other: Constraint) -> Constraint:
        if not isinstance(other, Constraint):
            return NotImplemented
        return Intersection(self, other)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constraint) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))


class Intersection(Constraint):
    """S = S_1 ∩ … ∩ S_n: support sets, then at most one value set.

    Let P_1 … P_m be the support parts (sparsity) in the order written and Q the
    value part (quantization), if any. The projection (docs/algorithms.md §3,
    "joint sparse + quantized") is

        Z_0 = W,   M_0 = 1
        M_j = mask_{S_j}(Z_{j−1}),   Z_j = Z_{j−1} ⊙ M_j          (j = 1..m)
        Z   = Q restricted to M = M_1 ∧ … ∧ M_m                   (survivors quantized)

    so zeros stay zero and the quantizer's scale is fitted on the survivors only.
    The order of ``&`` does not matter for the value part: ``Quantization(...) &
    Sparsity(...)`` prunes first too. Heuristic: the support is chosen on the
    unquantized weights, which is exact only when m = 1 and no quantization is
    present. The result always lies in every S_j (sparsity sets are closed under
    zeroing entries), and in Q's level set on the survivors.

    Args:
        *parts: Constraints or intersections (flattened). At most one may restrict
            values.

    Raises:
        ConstraintError: Two value sets (two quantizations) in one intersection.
    """

    restricts_support = True

    def __init__(self, *parts: Constraint) -> None:
        flat: list[Constraint] = []
        for part in parts:
            if isinstance(part, Intersection):
                flat.extend(part.parts)
            elif isinstance(part, Constraint):
                flat.append(part)
            else:
                raise ConstraintError(
                    f"intersection part {part!r} is not a constraint; combine "
                    "Sparsity(...) and Quantization(...) with &"
                )
        values = [p for p in flat if p.restricts_values]
        if len(values) > 1:
            raise ConstraintError(
                f"intersection {' & '.join(map(repr, values))} has {len(values)} quantizations; "
                "a weight takes one level set, keep one of them"
            )
        self.parts: tuple[Constraint, ...] = tuple(flat)
        self.supports: tuple[Constraint, ...] = tuple(p for p in flat if not p.restricts_values)
        self.value: Constraint | None = values[0] if values else None
        self.restricts_values = self.value is not None

    @property
    def first(self) -> Constraint:
        """The first part as written."""
        return self.parts[0]

    @property
    def second(self) -> Constraint:
        """The second part as written."""
        return self.parts[1]

    @property
    def ratio(self) -> float:
        """The pruning ratio of the single sparsity part (ConstraintError if not exactly one)."""
        return self._single_support("ratio").ratio  # type: ignore[attr-defined]

    @property
    def structure(self) -> str:
        """The structure of the single sparsity part (ConstraintError if not exactly one)."""
        return self._single_support("structure").structure  # type: ignore[attr-defined]

    def with_ratio(self, ratio: float) -> Intersection:
        """A copy whose single sparsity part has another ratio (used by global budgets)."""
        only = self._single_support("with_ratio")
        new = only.with_ratio(ratio)  # type: ignore[attr-defined]
        return Intersection(*(new if p is only else p for p in self.parts))

    def _single_support(self, what: str) -> Constraint:
        if len(self.supports) != 1:
            raise ConstraintError(
                f"{self!r}.{what} needs exactly one sparsity part, found {len(self.supports)}; "
                "ask the part itself"
            )
        return self.supports[0]

    def check(self, w: Tensor | torch.Size | tuple[int, ...], name: str = "weight") -> None:
        """Check every part against the weight."""
        for part in self.parts:
            part.check(w, name)

    def mask(self, w: Tensor) -> Tensor:
        """M = M_1 ∧ … ∧ M_m, the support kept (all True when there is no sparsity part)."""
        self.check(w)
        return self._support(w)[1]

    def _support(self, w: Tensor) -> tuple[Tensor, Tensor]:
        z = w
        keep = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        for part in self.supports:
            m = part.mask(z)
            keep &= m
            z = torch.where(m, z, torch.zeros((), dtype=z.dtype, device=z.device))
        return z, keep

    def project(self, w: Tensor) -> Tensor:
        """Π_S(w) by the rule in the class docstring (w is not modified)."""
        self.check(w)
        z, keep = self._support(w)
        if self.value is None:
            return z
        return self.value.project(w, mask=keep)  # type: ignore[call-arg]

    def codes(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Integer codes and scales of :meth:`project` (needs a quantization part).

        Pruned entries get code 0 for integer-valued level sets and −1 for
        level lists addressed by index; see :meth:`Quantization.codes`.
        """
        if self.value is None:
            raise ConstraintError(
                f"{self!r} has no quantization part, so it has no codes; add "
                "& Quantization(...) or call project()"
            )
        self.check(w)
        _, keep = self._support(w)
        return self.value.codes(w, mask=keep)  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "intersection", "parts": [p.to_dict() for p in self.parts]}

    def __repr__(self) -> str:
        return " & ".join(repr(p) for p in self.parts)
