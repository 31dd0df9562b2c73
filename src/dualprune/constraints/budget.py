"""Global budget: one pruning ratio shared by many layers, allocated by magnitude.

Let layer i have n_i groups g (its sparsity structure's groups: single weights for
``irregular``; W[o], W[:, c], W[:, c, y, x] or GEMM tiles for ``filter``,
``channel``, ``column``, ``block``), N covered weights in all, and score every
group by its mean squared magnitude ||g||²/|g| (normalised per weight, so groups
of different sizes compare). Order all groups of all layers by score, lowest
first (ties: layer order, then the structure's group order), and let c_i(t) be
the number of layer i's groups among the first t. The allocation removes

    r_i(t) = clip(c_i(t), ⌈floor·n_i⌉, ⌊ceiling·n_i⌋)

groups of layer i (its lowest-scored ones), with t chosen so that the weights in
them, W(t), come closest to R = round(ratio·N): one global threshold, except that
a clipped layer stops at its bound while the threshold moves on and the unclipped
layers absorb the difference. W(t) grows by at most one group per step of t, so
the total is exact for ``irregular`` and within one group's weights otherwise.
Each layer then gets ratio_i = r_i / n_i, a fraction of its groups; for
``block`` with edge tiles the per-layer projection may pick other tiles than the
lowest-scored ones, so there the weight total is met approximately.
Pure tensor math; :meth:`dualprune.Plan.global_` applies it to a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

import torch
from torch import Tensor

from dualprune.constraints.base import Constraint, Intersection
from dualprune.constraints.sparsity import GROUPED, Sparsity
from dualprune.errors import ConstraintError

__all__ = ["GROUPED", "allocate", "sparsity_part"]


def sparsity_part(constraint: Constraint) -> Sparsity:
    """The Sparsity a global budget allocates: ``constraint`` itself or its only sparsity part."""
    parts = constraint.supports if isinstance(constraint, Intersection) else (constraint,)
    if len(parts) != 1 or not isinstance(parts[0], Sparsity):
        raise ConstraintError(
            f"a global budget needs one Sparsity (optionally & a Quantization), got "
            f"{constraint!r}; give other constraints per layer"
        )
    if parts[0].structure not in GROUPED:
        raise ConstraintError(
            f"a global budget cannot allocate structure '{parts[0].structure}' (it ranks inside "
            f"each kernel/group/tile); allowed: {', '.join(GROUPED)}; give per-layer ratios"
        )
    return parts[0]


def allocate(
    weights: Mapping[str, Tensor],
    constraint: Constraint,
    floor: float = 0.0,
    ceiling: float = 0.99,
) -> dict[str, float]:
    """Per-layer ratios r_i/n_i that remove ``constraint.ratio`` of all covered weights.

    See the module docstring for the math.

    Args:
        weights: Weight tensors by layer name, in model order (the order breaks ties).
        constraint: A Sparsity with a structure in :data:`GROUPED`, or an intersection
            with exactly one such part; its ratio is the global fraction of weights.
        floor: Smallest per-layer ratio, in [0, ceiling].
        ceiling: Largest per-layer ratio, < 1.

    Returns:
        ``{layer: ratio_i}`` in the order of ``weights``, floor ≤ ratio_i ≤ ceiling.

    Raises:
        ConstraintError: A constraint or structure a budget cannot share, a bad floor
            or ceiling, a weight the structure cannot apply to (named), or a ratio
            that cannot be met within [floor, ceiling].
    """
    sparsity = sparsity_part(constraint)
    for key, value in (("floor", floor), ("ceiling", ceiling)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConstraintError(
                f"global budget {key}={value!r} is not allowed; use a number in [0, 1)"
            )
    if floor > ceiling:
        raise ConstraintError(f"global budget floor={floor} > ceiling={ceiling}; swap them")
    if not weights:
        raise ConstraintError("a global budget needs at least one layer to share it")
    scores, sizes = [], []
    for name, w in weights.items():
        sparsity.check(w, f"{name}.weight")
        size = sparsity.group_sizes(w)
        scores.append(sparsity.group_scores(w).double().pow(2) / size)
        sizes.append(size)
    counts = [len(s) for s in scores]
    lo = [math.ceil(Fraction(floor) * n) for n in counts]  # exact: r/n >= floor as floats too
    hi = [math.floor(Fraction(ceiling) * n) for n in counts]
    for name, n, a, b in zip(weights, counts, lo, hi, strict=True):
        if a > b:
            raise ConstraintError(
                f"global budget: layer '{name}' has {n} groups and no whole number of them is a "
                f"ratio in [floor={floor}, ceiling={ceiling}]; widen [floor, ceiling]"
            )
    total = sum(int(s.sum()) for s in sizes)
    target = round(sparsity.ratio * total)
    rank = torch.argsort(torch.cat(scores), stable=True)  # global removal order
    place = torch.empty_like(rank)
    place[rank] = torch.arange(len(rank))  # where each group sits in that order
    # per layer: those places ascending, and the weights removed once its first r groups go
    positions, cum = [], []
    for size, segment in zip(sizes, place.split(counts), strict=True):
        ordered, order = segment.sort(stable=True)
        positions.append(ordered)
        cum.append(torch.cat([torch.zeros(1, dtype=torch.int64), size[order].cumsum(0)]))

    def removed(t: int) -> list[int]:  # r_i(t)
        taken = [int(torch.searchsorted(p, t)) for p in positions]
        return [min(max(c, a), b) for c, a, b in zip(taken, lo, hi, strict=True)]

    def removed_weights(t: int) -> int:  # W(t), nondecreasing in t
        return sum(int(c[r]) for c, r in zip(cum, removed(t), strict=True))

    least, most = removed_weights(0), removed_weights(len(rank))
    slack = max(int(s.max()) for s in sizes)
    if target >= most + slack:
        raise ConstraintError(
            f"global ratio={sparsity.ratio} cannot be met: with ceiling={ceiling} at most "
            f"{most / total:.2%} of the {total:,} covered weights can go; raise ceiling "
            "or lower the ratio"
        )
    if target <= least - slack:
        raise ConstraintError(
            f"global ratio={sparsity.ratio} cannot be met: with floor={floor} at least "
            f"{least / total:.2%} of the {total:,} covered weights must go; lower floor "
            "or raise the ratio"
        )
    left, right = 0, len(rank)  # smallest t with W(t) >= R
    while left < right:
        mid = (left + right) // 2
        if removed_weights(mid) >= target:
            right = mid
        else:
            left = mid + 1
    best = left
    if left > 0 and target - removed_weights(left - 1) < removed_weights(left) - target:
        best = left - 1
    return {name: r / n for name, r, n in zip(weights, removed(best), counts, strict=True)}
