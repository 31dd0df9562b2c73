"""Constraint sets S and their projections Π_S (docs/algorithms.md §3, docs/constraints.md).

>>> from dualprune.constraints import Sparsity, Quantization
>>> c = Sparsity(0.9, "filter") & Quantization(bits=4)
>>> c.to_dict()["type"]
'intersection'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dualprune.constraints.base import Constraint, Intersection, kept_count, round_to_multiple
from dualprune.constraints.coupled import Coupled, is_chain
from dualprune.constraints.groups import (
    ROLES,
    ChannelGroup,
    TiedSlice,
    coupled_masks,
    keep_channels,
    project_coupled,
)
from dualprune.constraints.patterns import default_library, select_patterns
from dualprune.constraints.quantization import LEVELS, SCALES, Quantization
from dualprune.constraints.sparsity import STRUCTURES, Sparsity, Structure
from dualprune.constraints.structures import gemm_shape, gemm_view
from dualprune.errors import ConstraintError, UnknownNameError, did_you_mean

__all__ = [
    "LEVELS",
    "ROLES",
    "SCALES",
    "STRUCTURES",
    "TYPES",
    "ChannelGroup",
    "Constraint",
    "Coupled",
    "Intersection",
    "Quantization",
    "Sparsity",
    "Structure",
    "TiedSlice",
    "coupled_masks",
    "default_library",
    "from_dict",
    "gemm_shape",
    "gemm_view",
    "is_chain",
    "keep_channels",
    "kept_count",
    "project_coupled",
    "round_to_multiple",
    "select_patterns",
]

#: Values of the ``type`` key that :func:`from_dict` reads.
TYPES = ("sparsity", "quantization", "intersection")


def from_dict(d: Mapping[str, Any]) -> Constraint:
    """Rebuild a constraint from its :meth:`~Constraint.to_dict` form (the inverse).

    Args:
        d: ``{"type": "sparsity", "ratio": 0.9, "structure": "filter", ...}``,
            ``{"type": "quantization", "bits": 4, ...}`` or
            ``{"type": "intersection", "parts": [...]}``.

    Raises:
        UnknownNameError: An unknown ``type`` or ``structure`` (the message lists
            the known ones).
        ConstraintError: A missing key or a bad value.
    """
    if not isinstance(d, Mapping):
        raise ConstraintError(
            f"constraint spec {d!r} is not a mapping; write e.g. "
            "{type: sparsity, ratio: 0.9, structure: filter}"
        )
    rest = dict(d)
    kind = rest.pop("type", None)
    if kind == "sparsity":
        if "ratio" not in rest:
            raise ConstraintError(
                f"sparsity spec {dict(d)!r} has no 'ratio'; add the fraction of weights "
                "to remove, e.g. ratio: 0.9"
            )
        ratio = rest.pop("ratio")
        structure = rest.pop("structure", "irregular")
        return Sparsity(ratio, structure, **rest)
    if kind == "quantization":
        unknown = sorted(set(rest) - {"bits", "levels", "scale"})
        if unknown:
            raise ConstraintError(
                f"quantization spec has no option '{unknown[0]}'"
                f"{did_you_mean(unknown[0], ['bits', 'levels', 'scale']).split(';')[0]}; "
                "allowed options: bits, levels, scale"
            )
        return Quantization(**rest)
    if kind == "intersection":
        parts = rest.get("parts")
        if not isinstance(parts, list) or len(parts) < 2:
            raise ConstraintError(
                f"intersection spec needs 'parts', a list of at least two constraint "
                f"specs; got {parts!r}"
            )
        return Intersection(*(from_dict(p) for p in parts))
    raise UnknownNameError(f"constraint type {kind!r} is unknown{did_you_mean(str(kind), TYPES)}")
