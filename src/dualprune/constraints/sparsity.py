"""Sparsity sets: which entries of a weight may be nonzero (docs/algorithms.md §3).

The projections themselves are pure functions in
:mod:`~dualprune.constraints.structures` and :mod:`~dualprune.constraints.patterns`;
this module holds the tables that name them and :class:`Sparsity`, which validates
options and shapes with messages that name the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from dualprune.constraints import structures as st
from dualprune.constraints.base import Constraint, check_multiple_of, shape_of, shape_text
from dualprune.constraints.patterns import pattern_mask, project_pattern
from dualprune.errors import ConstraintError, UnknownNameError, did_you_mean

__all__ = ["GROUPED", "OPTIONS", "STRUCTURES", "SUPPORTS", "Sparsity"]

#: name → projection function ``(w, ratio, **options) -> Π_S(w)``.
STRUCTURES: dict[str, Callable[..., Tensor]] = {
    "irregular": st.project_irregular,
    "filter": st.project_filter,
    "channel": st.project_channel,
    "column": st.project_column,
    "pattern": project_pattern,
    "nm": st.project_nm,
    "block": st.project_block,
    "tile_rows": st.project_tile_rows,
    "tile_cols": st.project_tile_cols,
}

#: name → support function ``(w, ratio, **options) -> bool mask`` of the same projection.
SUPPORTS: dict[str, Callable[..., Tensor]] = {
    "irregular": st.irregular_mask,
    "filter": st.filter_mask,
    "channel": st.channel_mask,
    "column": st.column_mask,
    "pattern": pattern_mask,
    "nm": st.nm_mask,
    "block": st.block_mask,
    "tile_rows": st.tile_rows_mask,
    "tile_cols": st.tile_cols_mask,
}

_TILE = (128, 128)  # a 128×128 crossbar, docs/algorithms.md §6

#: name → the options it accepts, with their defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "irregular": {},
    "filter": {"multiple_of": 1},
    "channel": {"multiple_of": 1},
    "column": {},
    "pattern": {"p": 4, "kernel": (3, 3), "library": None, "kernels": 0.0},
    "nm": {"n": None, "m": 4},
    "block": {"block": _TILE},
    "tile_rows": {"block": _TILE},
    "tile_cols": {"block": _TILE},
}

_TILED = ("block", "tile_rows", "tile_cols")

#: Structures whose Π_S keeps the k best of one global list of groups (group_scores).
GROUPED = ("irregular", "filter", "channel", "column", "block")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_ratio(x: object) -> bool:
    return (
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x < 1
    )


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

    Options (defaults in :data:`OPTIONS`):
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
        allowed = OPTIONS[structure]
        for key, value in options.items():
            if key not in allowed:
                known = ", ".join(allowed) if allowed else "none"
                hint = did_you_mean(key, list(allowed)).split(";")[0] if allowed else ""
                raise ConstraintError(
                    f"Sparsity({structure}) has no option '{key}'{hint}; allowed options: {known}"
                )
            self.options[key] = value
        if not _is_ratio(ratio):
            raise ConstraintError(
                f"{self._label()}: ratio={ratio!r} is not allowed; the fraction of weights "
                "removed must be a number in [0, 1)"
            )
        self.ratio = float(ratio)
        self._normalise()

    # ---- options ----------------------------------------------------------------------

    def _label(self) -> str:
        opts = "".join(f", {k}={_plain(v)!r}" for k, v in self.options.items() if k != "library")
        if "library" in self.options:
            opts += f", library=<{len(self.options['library'])} patterns>"
        return f"Sparsity({self.structure}{opts})"

    def _bad(self, key: str, value: object, want: str) -> ConstraintError:
        return ConstraintError(f"{self._label()}: {key}={value!r} is not allowed; use {want}")

    def _normalise(self) -> None:
        o = self.options
        if "multiple_of" in o:
            o["multiple_of"] = check_multiple_of(o["multiple_of"], self._label())
            if o["multiple_of"] == 1:
                del o["multiple_of"]  # the default: same set, same to_dict()
        if "block" in o:
            b = o["block"]
            b = (b, b) if _is_int(b) else b
            if (
                not isinstance(b, Sequence)
                or len(b) != 2
                or not all(_is_int(x) and x >= 1 for x in b)
            ):
                raise self._bad("block", o["block"], "(rows, cols), two positive ints")
            o["block"] = (int(b[0]), int(b[1]))
        if self.structure == "nm":
            m = o.get("m", 4)
            if not _is_int(m) or m < 1:
                raise self._bad("m", m, "a positive int group size such as 4")
            n = o.get("n")
            if n is not None and (not _is_int(n) or not 1 <= n <= m):
                raise self._bad("n", n, f"an int in [1, m={m}]")
        if self.structure == "pattern":
            self._normalise_pattern()

    def _normalise_pattern(self) -> None:
        o = self.options
        kernel = o.get("kernel", (3, 3))
        kernel = (kernel,) if _is_int(kernel) else kernel
        if (
            not isinstance(kernel, Sequence)
            or not kernel
            or not all(_is_int(x) and x >= 1 for x in kernel)
        ):
            raise self._bad("kernel", o["kernel"], "a kernel shape such as (3, 3)")
        if "kernel" in o:
            o["kernel"] = tuple(kernel)
        kk = math.prod(kernel)
        p = o.get("p")
        if p is not None and (not _is_int(p) or not 1 <= p <= kk):
            raise self._bad(
                "p", p, f"an int in [1, {kk}] (entries of a {shape_text(kernel)} kernel)"
            )
        kernels = o.get("kernels", 0.0)
        if not _is_ratio(kernels):
            raise self._bad("kernels", kernels, "a fraction of kernels removed in [0, 1)")
        library = o.get("library")
        if library is None:
            if any(d % 2 == 0 for d in kernel):
                raise self._bad(
                    "kernel", kernel, "odd sizes for the default (centre) library, or pass library="
                )
            return
        want = "a non-empty list of patterns, each a list of distinct flat kernel positions"
        if isinstance(library, (str, bytes)) or not isinstance(library, Sequence) or not library:
            raise self._bad("library", library, want)
        patterns = []
        for pat in library:
            if (
                isinstance(pat, (str, bytes))
                or not isinstance(pat, Sequence)
                or not all(_is_int(i) and 0 <= i < kk for i in pat)
                or len(set(pat)) != len(pat)
                or not pat
            ):
                raise self._bad("library", pat, f"{want} in [0, {kk})")
            patterns.append(tuple(sorted(int(i) for i in pat)))
        sizes = {len(pat) for pat in patterns}
        size = sizes.pop()
        if sizes or (p is not None and p != size):
            raise self._bad("library", library, f"patterns of one size p (p={p or size})")
        o["library"] = patterns

    def _resolved(self) -> dict[str, Any]:
        """Options with defaults filled in (what the projection functions take)."""
        out = {**OPTIONS[self.structure], **self.options}
        if self.structure == "pattern" and out["library"] is not None:
            out["p"] = len(out["library"][0])
        return out

    # ---- the set ----------------------------------------------------------------------

    def check(self, w: Tensor | torch.Size | tuple[int, ...], name: str = "weight") -> None:
        """Raise ConstraintError naming ``name`` if this structure cannot apply to w's shape."""
        shape = shape_of(w)
        where = f"{self._label()} cannot apply to '{name}' ({shape_text(shape)})"
        if len(shape) < 2:
            raise ConstraintError(
                f"{where}: it needs a Linear or Conv weight (out, in, *kernel); exclude the layer"
            )
        o = self._resolved()
        if self.structure in _TILED:
            r, c = st.gemm_shape(shape)
            br, bc = o["block"]
            if br > r or bc > c:
                raise ConstraintError(
                    f"{where}: block {br}×{bc} is larger than its {r}×{c} GEMM view "
                    f"(in·kernel × out); exclude the layer or use a block of at most {r}×{c}"
                )
        if self.structure == "channel" and shape[1] == 1:
            raise ConstraintError(
                f"{where}: it has a single input channel (a depthwise conv), so channel "
                "pruning would keep or remove the whole layer; exclude the layer or use 'filter'"
            )
        if self.structure == "nm" and shape[1] % o["m"]:
            m = o["m"]
            raise ConstraintError(
                f"{where}: {shape[1]} inputs is not a multiple of m={m}; exclude the layer "
                f"or pick m dividing {shape[1]}"
            )
        if self.structure == "pattern" and tuple(shape[2:]) != tuple(o["kernel"]):
            kernel = shape_text(tuple(o["kernel"]))
            has = f"{shape_text(shape[2:])} kernels" if len(shape) > 2 else "no kernels (Linear)"
            raise ConstraintError(
                f"{where}: it has {has} but the pattern library is for {kernel} kernels; "
                f"exclude the layer or pass kernel= (and library=) matching it"
            )

    def project(self, w: Tensor) -> Tensor:
        """Π_S(w): a new tensor of w's shape, dtype and device; w is not modified."""
        self.check(w)
        return STRUCTURES[self.structure](w, self.ratio, **self._resolved())

    def mask(self, w: Tensor) -> Tensor:
        """The support Π_S(w) keeps: exactly the counts of the class docstring (ties included)."""
        self.check(w)
        return SUPPORTS[self.structure](w, self.ratio, **self._resolved())

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
        rows = st.score_matrix(w)  # (out, R) in the scoring dtype
        if self.structure == "irregular":
            return rows.abs().reshape(-1)
        if self.structure == "filter":
            out = (rows * rows).sum(1)
        elif self.structure == "channel":
            out = st.column_energy(w).view(w.shape[1], -1).sum(1)
        elif self.structure == "column":
            out = st.column_energy(w)
        elif self.structure == "block":
            out = st.tile_energy(w, self._resolved()["block"]).reshape(-1)
        else:
            raise ConstraintError(
                f"{self._label()} has no global group scores (it ranks inside each "
                f"kernel/group/tile); group_scores works for {', '.join(GROUPED)}"
            )
        return out.sqrt()

    def group_sizes(self, w: Tensor | torch.Size | tuple[int, ...]) -> Tensor:
        """Weights in each group of :meth:`group_scores`, same order (int64)."""
        shape = shape_of(w)
        self.check(shape)
        r, c = st.gemm_shape(shape)
        counts = {
            "irregular": torch.ones(r * c, dtype=torch.int64),
            "filter": torch.full((c,), r, dtype=torch.int64),
            "channel": torch.full((shape[1],), c * math.prod(shape[2:]), dtype=torch.int64),
            "column": torch.full((r,), c, dtype=torch.int64),
        }
        if self.structure in counts:
            return counts[self.structure]
        if self.structure == "block":
            br, bc = self._resolved()["block"]
            rows = torch.tensor([min(br, r - i) for i in range(0, r, br)])
            cols = torch.tensor([min(bc, c - j) for j in range(0, c, bc)])
            return torch.outer(rows, cols).reshape(-1)
        raise ConstraintError(
            f"{self._label()} has no global groups; group_sizes works for {', '.join(GROUPED)}"
        )

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
