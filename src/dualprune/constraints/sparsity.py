"""Sparsity sets: which entries of a weight may be nonzero (docs/algorithms.md §3).

The projections themselves are pure functions in
:mod:`~dualprune.constraints.structures` and :mod:`~dualprune.constraints.patterns`;
:data:`~dualprune.constraints.registry.STRUCTURES` holds one record per structure
(projection, options, option and shape rules, global groups), and
:class:`Sparsity` looks its structure's record up, with messages that name the layer.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import torch
from torch import Tensor

from dualprune.constraints.base import Constraint, shape_of, shape_text
from dualprune.constraints.registry import GROUPED, STRUCTURES, Structure, is_ratio
from dualprune.errors import ConstraintError, UnknownNameError, did_you_mean

__all__ = ["GROUPED", "STRUCTURES", "Sparsity", "Structure"]


class Sparsity(Constraint):
    """S = weights whose nonzeros follow ``structure``, keeping 1 − ``ratio`` of them.

    ``ratio`` is the fraction of weights removed. For group structures it is the
    fraction of groups removed, the same thing when all groups are equal; where
    they are not (edge tiles of ``block``), the docstring of the structure says so.
    With k = round((1 − ratio)·count) (halves up; for filter and channel then
    rounded to ``multiple_of``, see Options), every projection is exact:

        irregular  S = {||z||_0 ≤ k}                 Π_S keeps the k largest |w|
        filter     ≤ k nonzero W[o]                  the k largest ||W[o]||
        channel    ≤ k nonzero W[:, c]               the k largest ||W[:, c]||
        column     ≤ k nonzero W[:, c, y, x]         the k largest ||W[:, c, y, x]||
        pattern    kernels follow library patterns   best pattern per kernel, best kernels
        nm         ≤ n_eff of every m inputs         the n_eff largest |w| per group
        block      ≤ k nonzero br×bc GEMM tiles      the k largest tile norms
        tile_rows  ≤ k_t rows per tile               the largest row segments per tile
        tile_cols  ≤ k_t columns per tile            the largest column segments per tile

    Ties keep the lower flat index. ``ratio`` 0 leaves the weight unchanged
    (except ``pattern`` and ``nm`` with ``n`` < m, whose own structure still
    applies: there ``ratio`` is a lower bound and the removed fraction is the
    larger of it and the structure's own, 1 − p/kk or 1 − n/m).

    Options (defaults in each record's ``options``, :data:`STRUCTURES`):
        pattern: ``p`` entries per pattern (4), ``kernel`` shape ((3, 3)),
            ``library`` (list of patterns as flat kernel positions; default all
            centre-containing ones), ``kernels`` (fraction of kernels removed by
            connectivity pruning, a lower bound; 0).
        nm: ``m`` group size (4), ``n`` largest kept per group (default m:
            ``ratio`` sets it); groups run along input channels. A ratio above
            1 − 0.5/m keeps nothing.
        block, tile_rows, tile_cols: ``block=(rows, cols)`` tile of the GEMM
            view ((128, 128)).
        filter, channel: ``multiple_of`` m (1). With m > 1 the count k₀ of the
            plain rule is moved to the nearest element of A = {m, 2m, …,
            ⌊C/m⌋·m} ∪ {C} (C filters or channels; ties: the larger), so the
            layer keeps whole channel blocks of the size CPU kernels work on
            (oneDNN: 8 or 16), or all C ("keep all", the only choice when
            C ≤ m). ``ratio`` is still the fraction of C asked for; the realised
            fraction 1 − k/C differs from it: |k − k₀| ≤ m/2 whenever
            m ≤ k₀ ≤ ⌊C/m⌋·m, and at least m are kept even when k₀ < m/2.
            A ratio 0 still keeps everything. Π_S is exact for the resulting k.
            m = 1 is the plain rule (and is dropped from ``options``).

    Args:
        ratio: Fraction of weights removed, in [0, 1).
        structure: A key of :data:`STRUCTURES`.
        **options: Options of that structure.

    Raises:
        ConstraintError: ratio outside [0, 1), an option the structure does not
            take (the message lists the allowed ones) or a bad option value.
        UnknownNameError: An unknown structure.

    Example:
        >>> import torch
        >>> w = torch.tensor([[3.0, -1.0, 2.0, 0.5]])
        >>> Sparsity(0.5).project(w)
        tensor([[3., 0., 2., 0.]])

    References:
        docs/algorithms.md §3; Wen et al., "Learning Structured Sparsity in Deep
        Neural Networks", NeurIPS 2016 (filter/channel/shape); Zhang et al.,
        "StructADMM", 2019; Pool & Yu, "Channel Permutations for N:M Sparsity",
        NeurIPS 2021.
    """

    restricts_support = True

    def __init__(self, ratio: float, structure: str = "irregular", **options: Any) -> None:
        if structure not in STRUCTURES:
            known = did_you_mean(str(structure), list(STRUCTURES))
            raise UnknownNameError(f"sparsity structure '{structure}' is unknown{known}")
        self.structure = structure
        self.options: dict[str, Any] = {}
        allowed = self._record.options
        for key, value in options.items():
            if key not in allowed:
                known = ", ".join(allowed) if allowed else "none"
                hint = did_you_mean(key, list(allowed)).split(";")[0] if allowed else ""
                raise ConstraintError(
                    f"Sparsity({structure}) has no option '{key}'{hint}; allowed options: {known}"
                )
            self.options[key] = value
        if not is_ratio(ratio):
            raise ConstraintError(
                f"{self._label()}: ratio={ratio!r} is not allowed; the fraction of weights "
                "removed must be a number in [0, 1)"
            )
        self.ratio = float(ratio)
        if self._record.normalise is not None:
            self._record.normalise(self.options, self._label)

    @property
    def _record(self) -> Structure:
        return STRUCTURES[self.structure]

    def _label(self) -> str:
        """``Sparsity(nm, n=2, m=4)``: the structure and the options given, for messages."""
        opts = "".join(f", {k}={_plain(v)!r}" for k, v in self.options.items() if k != "library")
        library = self.options.get("library")
        if isinstance(library, Sized):
            opts += f", library=<{len(library)} patterns>"
        elif "library" in self.options:
            opts += f", library={library!r}"
        return f"Sparsity({self.structure}{opts})"

    def _resolved(self) -> dict[str, Any]:
        """Options with defaults filled in (what the record's functions take)."""
        return {**self._record.options, **self.options}

    # ---- the set ----------------------------------------------------------------------

    def check(self, w: Tensor | torch.Size | tuple[int, ...], name: str = "weight") -> None:
        """Raise ConstraintError naming ``name`` if this structure cannot apply to w's shape."""
        shape = shape_of(w)
        where = f"{self._label()} cannot apply to '{name}' ({shape_text(shape)})"
        if len(shape) < 2:
            raise ConstraintError(
                f"{where}: it needs a Linear or Conv weight (out, in, *kernel); exclude the layer"
            )
        if self._record.check is not None:
            self._record.check(shape, self._resolved(), where)

    def project(self, w: Tensor) -> Tensor:
        """Π_S(w): a new tensor of w's shape, dtype and device; w is not modified."""
        self.check(w)
        return self._record.project(w, self.ratio, **self._resolved())

    def mask(self, w: Tensor) -> Tensor:
        """The support Π_S(w) keeps: exactly the counts of the class docstring (ties included)."""
        self.check(w)
        return self._record.mask(w, self.ratio, **self._resolved())

    def with_ratio(self, ratio: float) -> Sparsity:
        """A copy with another ratio (same structure and options)."""
        return Sparsity(ratio, self.structure, **self.options)

    def group_scores(self, w: Tensor) -> Tensor:
        """||g|| of every group Π_S ranks, flattened in the order ties are broken.

        irregular: |w| (flat); filter: per W[o]; channel: per W[:, c]; column: per
        W[:, c, y, x] (flat over c, y, x); block: per tile, row-major over the
        GEMM view's tile grid. Other structures rank groups locally and raise.
        """
        self.check(w)
        scores = self._record.group_scores
        if scores is None:
            raise ConstraintError(
                f"{self._label()} has no global group scores (it ranks inside each "
                f"kernel/group/tile); group_scores works for {', '.join(GROUPED)}"
            )
        return scores(w, **self._resolved())

    def group_sizes(self, w: Tensor | torch.Size | tuple[int, ...]) -> Tensor:
        """Weights in each group of :meth:`group_scores`, same order (int64)."""
        shape = shape_of(w)
        self.check(shape)
        sizes = self._record.group_sizes
        if sizes is None:
            raise ConstraintError(
                f"{self._label()} has no global groups; group_sizes works for {', '.join(GROUPED)}"
            )
        return sizes(shape, **self._resolved())

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "sparsity", "ratio": ..., "structure": ..., **options}`` (plain data)."""
        out: dict[str, Any] = {"type": "sparsity", "ratio": self.ratio, "structure": self.structure}
        out.update({k: _plain(v) for k, v in self.options.items()})
        return out

    def __repr__(self) -> str:
        opts = "".join(f", {k}={_plain(v)!r}" for k, v in self.options.items())
        return f"Sparsity(ratio={self.ratio!r}, structure={self.structure!r}{opts})"


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively, so to_dict() is JSON/YAML data."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
