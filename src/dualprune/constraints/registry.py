"""The structure table: one :class:`Structure` record per sparsity structure.

:data:`STRUCTURES` maps a name to everything
:class:`~dualprune.constraints.Sparsity` needs to know about that structure: the
projection Π_S and its support (pure functions of
:mod:`~dualprune.constraints.structures` and :mod:`~dualprune.constraints.patterns`),
the options with their defaults, how those options and a weight's shape are
validated, and, for the structures whose Π_S keeps the k best of one global list
of groups, the group norms ||g|| and sizes |g| that global budgets rank
(:mod:`~dualprune.constraints.budget`). :class:`Sparsity` only looks records up.

Adding a structure: write ``project_<name>(w, ratio, **options)`` and
``<name>_mask(w, ratio, **options)``, stating S and Π_S in their docstrings, then
add one line to :data:`STRUCTURES`; ``tests/constraints`` runs every line of the
table through the same property checks (docs/constraints.md, "Adding a structure").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from dualprune.constraints import structures as st
from dualprune.constraints.base import check_multiple_of, shape_text
from dualprune.constraints.patterns import pattern_mask, project_pattern
from dualprune.errors import ConstraintError

__all__ = ["GROUPED", "STRUCTURES", "Structure", "is_int", "is_ratio"]

Shape = tuple[int, ...]
#: ``(options, label)``: validate the options a user gave and rewrite them in place
#: to their canonical form; ``label()`` starts every error message.
Normalise = Callable[[dict[str, Any], Callable[[], str]], None]
#: ``(shape, options, where)``: raise ConstraintError starting with ``where`` when the
#: structure cannot apply to ``shape``; ``options`` have every default filled in.
Check = Callable[[Shape, Mapping[str, Any], str], None]


@dataclass(frozen=True)
class Structure:
    """Everything one sparsity structure is; a line of :data:`STRUCTURES`.

    Attributes:
        project: ``(w, ratio, **options) -> Π_S(w)``, a new tensor of w's shape,
            dtype and device.
        mask: ``(w, ratio, **options) -> bool tensor``, the support ``project`` keeps,
            so that ``project(w) == where(mask(w), w, 0)``.
        options: Option name → default; the only options :class:`Sparsity` accepts.
            Read-only. ``to_dict()`` stores the options given, not the defaults.
        normalise: Optional :data:`Normalise` hook run once on the options given.
        check: Optional :data:`Check` hook for shape rules beyond "a Linear or Conv
            weight (out, in, *kernel)", which every structure needs.
        group_scores: ``(w, **options) -> (G,)``, ||g|| of every group Π_S ranks in
            one global list, flattened in the order ties are broken. None for
            structures that rank inside each kernel, group or tile.
        group_sizes: ``(shape, **options) -> (G,) int64``, |g| in the same order;
            given together with ``group_scores``.

    Raises:
        TypeError: Only one of ``group_scores`` and ``group_sizes`` given.

    Example:
        >>> import torch
        >>> w = torch.tensor([[3.0, -1.0, 2.0, 0.5]])
        >>> STRUCTURES["irregular"].project(w, 0.5)
        tensor([[3., 0., 2., 0.]])
    """

    project: Callable[..., Tensor]
    mask: Callable[..., Tensor]
    options: Mapping[str, Any] = field(default_factory=dict)
    normalise: Normalise | None = None
    check: Check | None = None
    group_scores: Callable[..., Tensor] | None = None
    group_sizes: Callable[..., Tensor] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if (self.group_scores is None) != (self.group_sizes is None):
            raise TypeError(
                f"Structure({self.project.__name__}): group_scores and group_sizes go "
                "together; give both (a global list of groups) or neither (local ranking)"
            )


# ---- option rules ------------------------------------------------------------------------

_TILE = (128, 128)  # a 128×128 crossbar, docs/algorithms.md §6
_M = 4  # N:M group size (2:4 on sparse tensor cores)
_P, _KERNEL = 4, (3, 3)  # PatDNN's 4-entry patterns in 3×3 kernels


def is_int(x: object) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_ratio(x: object) -> bool:
    """A finite real number (not a bool) in [0, 1)."""
    return (
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x < 1
    )


def _bad(label: str, key: str, value: object, want: str) -> ConstraintError:
    return ConstraintError(f"{label}: {key}={value!r} is not allowed; use {want}")


def _normalise_multiple_of(o: dict[str, Any], label: Callable[[], str]) -> None:
    if "multiple_of" in o:
        o["multiple_of"] = check_multiple_of(o["multiple_of"], label())
        if o["multiple_of"] == 1:
            del o["multiple_of"]  # the default: same set, same to_dict()


def _normalise_block(o: dict[str, Any], label: Callable[[], str]) -> None:
    if "block" in o:
        b = o["block"]
        b = (b, b) if is_int(b) else b
        if not isinstance(b, Sequence) or len(b) != 2 or not all(is_int(x) and x >= 1 for x in b):
            raise _bad(label(), "block", o["block"], "(rows, cols), two positive ints")
        o["block"] = (int(b[0]), int(b[1]))


def _normalise_nm(o: dict[str, Any], label: Callable[[], str]) -> None:
    m = o.get("m", _M)
    if not is_int(m) or m < 1:
        raise _bad(label(), "m", m, "a positive int group size such as 4")
    n = o.get("n")
    if n is not None and (not is_int(n) or not 1 <= n <= m):
        raise _bad(label(), "n", n, f"an int in [1, m={m}]")


def _normalise_pattern(o: dict[str, Any], label: Callable[[], str]) -> None:
    kernel = o.get("kernel", _KERNEL)
    kernel = (kernel,) if is_int(kernel) else kernel
    if (
        not isinstance(kernel, Sequence)
        or not kernel
        or not all(is_int(x) and x >= 1 for x in kernel)
    ):
        raise _bad(label(), "kernel", o["kernel"], "a kernel shape such as (3, 3)")
    if "kernel" in o:
        o["kernel"] = tuple(kernel)
    kk = math.prod(kernel)
    p = o.get("p")
    if p is not None and (not is_int(p) or not 1 <= p <= kk):
        want = f"an int in [1, {kk}] (entries of a {shape_text(tuple(kernel))} kernel)"
        raise _bad(label(), "p", p, want)
    kernels = o.get("kernels", 0.0)
    if not is_ratio(kernels):
        raise _bad(label(), "kernels", kernels, "a fraction of kernels removed in [0, 1)")
    library = o.get("library")
    if library is None:
        if any(d % 2 == 0 for d in kernel):
            want = "odd sizes for the default (centre) library, or pass library="
            raise _bad(label(), "kernel", kernel, want)
        if p is None and kk < _P:
            want = f"at least {_P} entries (the default p={_P}), or pass p= in [1, {kk}]"
            raise _bad(label(), "kernel", kernel, want)
        return
    want = "a non-empty list of patterns, each a list of distinct flat kernel positions"
    if isinstance(library, (str, bytes)) or not isinstance(library, Sequence) or not library:
        raise _bad(label(), "library", library, want)
    patterns = []
    for pat in library:
        if (
            isinstance(pat, (str, bytes))
            or not isinstance(pat, Sequence)
            or not all(is_int(i) and 0 <= i < kk for i in pat)
            or len(set(pat)) != len(pat)
            or not pat
        ):
            raise _bad(label(), "library", pat, f"{want} in [0, {kk})")
        patterns.append(tuple(sorted(int(i) for i in pat)))
    sizes = {len(pat) for pat in patterns}
    size = sizes.pop()
    if sizes or (p is not None and p != size):
        raise _bad(label(), "library", library, f"patterns of one size p (p={p or size})")
    o["library"] = patterns


# ---- shape rules -------------------------------------------------------------------------


def _check_tiles(shape: Shape, o: Mapping[str, Any], where: str) -> None:
    r, c = st.gemm_shape(shape)
    br, bc = o["block"]
    if br > r or bc > c:
        raise ConstraintError(
            f"{where}: block {br}×{bc} is larger than its {r}×{c} GEMM view "
            f"(in·kernel × out); exclude the layer or use a block of at most {r}×{c}"
        )


def _check_channel(shape: Shape, o: Mapping[str, Any], where: str) -> None:
    if shape[1] == 1:
        raise ConstraintError(
            f"{where}: it has a single input channel (a depthwise conv), so channel "
            "pruning would keep or remove the whole layer; exclude the layer or use 'filter'"
        )


def _check_nm(shape: Shape, o: Mapping[str, Any], where: str) -> None:
    m = o["m"]
    if shape[1] % m:
        raise ConstraintError(
            f"{where}: {shape[1]} inputs is not a multiple of m={m}; exclude the layer "
            f"or pick m dividing {shape[1]}"
        )


def _check_pattern(shape: Shape, o: Mapping[str, Any], where: str) -> None:
    if shape[2:] != tuple(o["kernel"]):
        kernel = shape_text(tuple(o["kernel"]))
        has = f"{shape_text(shape[2:])} kernels" if len(shape) > 2 else "no kernels (Linear)"
        raise ConstraintError(
            f"{where}: it has {has} but the pattern library is for {kernel} kernels; "
            f"exclude the layer or pass kernel= (and library=) matching it"
        )


# ---- global groups: ||g|| and |g| in tie order ---------------------------------------------


def _irregular_scores(w: Tensor, **_: Any) -> Tensor:
    return st.score_matrix(w).abs().reshape(-1)  # |w|, flat


def _irregular_sizes(shape: Shape, **_: Any) -> Tensor:
    return torch.ones(math.prod(shape), dtype=torch.int64)


def _filter_scores(w: Tensor, **_: Any) -> Tensor:
    rows = st.score_matrix(w)  # (out, R)
    return (rows * rows).sum(1).sqrt()  # ||W[o]||


def _filter_sizes(shape: Shape, **_: Any) -> Tensor:
    r, c = st.gemm_shape(shape)
    return torch.full((c,), r, dtype=torch.int64)


def _channel_scores(w: Tensor, **_: Any) -> Tensor:
    return st.column_energy(w).view(w.shape[1], -1).sum(1).sqrt()  # ||W[:, c]||


def _channel_sizes(shape: Shape, **_: Any) -> Tensor:
    return torch.full((shape[1],), shape[0] * math.prod(shape[2:]), dtype=torch.int64)


def _column_scores(w: Tensor, **_: Any) -> Tensor:
    return st.column_energy(w).sqrt()  # ||W[:, c, y, x]||, flat over (c, y, x)


def _column_sizes(shape: Shape, **_: Any) -> Tensor:
    r, c = st.gemm_shape(shape)
    return torch.full((r,), c, dtype=torch.int64)


def _block_scores(w: Tensor, block: tuple[int, int], **_: Any) -> Tensor:
    return st.tile_energy(w, block).reshape(-1).sqrt()  # row-major over the tile grid


def _block_sizes(shape: Shape, block: tuple[int, int], **_: Any) -> Tensor:
    (r, c), (br, bc) = st.gemm_shape(shape), block
    rows = torch.tensor([min(br, r - i) for i in range(0, r, br)])
    cols = torch.tensor([min(bc, c - j) for j in range(0, c, bc)])
    return torch.outer(rows, cols).reshape(-1)  # edge tiles are smaller


# ---- the table ---------------------------------------------------------------------------

#: name → :class:`Structure`; messages list the structures in this order.
STRUCTURES: dict[str, Structure] = {
    "irregular": Structure(
        st.project_irregular,
        st.irregular_mask,
        group_scores=_irregular_scores,
        group_sizes=_irregular_sizes,
    ),
    "filter": Structure(
        st.project_filter,
        st.filter_mask,
        options={"multiple_of": 1},
        normalise=_normalise_multiple_of,
        group_scores=_filter_scores,
        group_sizes=_filter_sizes,
    ),
    "channel": Structure(
        st.project_channel,
        st.channel_mask,
        options={"multiple_of": 1},
        normalise=_normalise_multiple_of,
        check=_check_channel,
        group_scores=_channel_scores,
        group_sizes=_channel_sizes,
    ),
    "column": Structure(
        st.project_column,
        st.column_mask,
        group_scores=_column_scores,
        group_sizes=_column_sizes,
    ),
    "pattern": Structure(
        project_pattern,
        pattern_mask,
        options={"p": _P, "kernel": _KERNEL, "library": None, "kernels": 0.0},
        normalise=_normalise_pattern,
        check=_check_pattern,
    ),
    "nm": Structure(
        st.project_nm,
        st.nm_mask,
        options={"n": None, "m": _M},
        normalise=_normalise_nm,
        check=_check_nm,
    ),
    "block": Structure(
        st.project_block,
        st.block_mask,
        options={"block": _TILE},
        normalise=_normalise_block,
        check=_check_tiles,
        group_scores=_block_scores,
        group_sizes=_block_sizes,
    ),
    "tile_rows": Structure(
        st.project_tile_rows,
        st.tile_rows_mask,
        options={"block": _TILE},
        normalise=_normalise_block,
        check=_check_tiles,
    ),
    "tile_cols": Structure(
        st.project_tile_cols,
        st.tile_cols_mask,
        options={"block": _TILE},
        normalise=_normalise_block,
        check=_check_tiles,
    ),
}

#: Structures whose Π_S keeps the k best of one global list of groups (group_scores).
GROUPED: tuple[str, ...] = tuple(k for k, s in STRUCTURES.items() if s.group_scores is not None)
