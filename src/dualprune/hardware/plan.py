"""Crossbar-aware plans: sparsity tiles that coincide with crossbar tiles (docs/hardware.md).

A crossbar of X_r × X_c cells holds an X_r × b_c tile of a layer's GEMM view, with
b_c = X_c // m weight columns (m = ``spec.columns_per_weight``). A ``block``
sparsity whose block is exactly that tile removes whole crossbars; ``tile_rows``
and ``tile_cols`` with the same tile remove wordlines (fewer DACs, smaller ADCs)
or bitlines (fewer ADC conversions) inside each crossbar
(:mod:`dualprune.constraints.structures` defines the three on the same
(in·Πk) × out GEMM view that :mod:`dualprune.hardware.crossbar` maps).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from dualprune.constraints import Constraint, Quantization, Sparsity
from dualprune.constraints.structures import gemm_shape
from dualprune.errors import PlanError, UnknownNameError, did_you_mean
from dualprune.hardware.spec import CrossbarSpec
from dualprune.plan import Plan, layer_weight, prunable_layers

__all__ = ["CROSSBAR_STRUCTURES", "crossbar_block", "crossbar_plan"]

#: Sparsity structures whose tile can be aligned to a crossbar.
CROSSBAR_STRUCTURES = ("block", "tile_rows", "tile_cols")


def crossbar_block(module: nn.Module, spec: CrossbarSpec, name: str = "layer") -> tuple[int, int]:
    """The GEMM-view tile (br, bc) of ``module`` that one crossbar holds.

    br = min(X_r, R), bc = min(X_c // m, C), with R × C the GEMM view of one group.
    For a grouped conv the view is R × out and group j owns columns [j·C, (j+1)·C):
    bc = C when C ≤ X_c // m (one tile column per group), X_c // m when it divides C.

    Raises:
        PlanError: A grouped conv whose per-group outputs C exceed X_c // m and are
            not a multiple of it (no tile of the whole view follows its groups).
    """
    r, out = gemm_shape(tuple(layer_weight(module).shape))
    groups = int(getattr(module, "groups", 1))
    c, bc = out // groups, spec.logical_cols
    if groups > 1 and c > bc and c % bc:
        raise PlanError(
            f"'{name}' has {groups} groups of {c} outputs; a {spec.rows}×{spec.cols} "
            f"crossbar holds {bc} weight columns, which neither covers nor divides {c}; "
            "exclude the layer or pick a crossbar whose width fits the groups"
        )
    return min(spec.rows, r), min(bc, c)


def _names(
    model: nn.Module, layers: str | Sequence[str], exclude: str | Sequence[str]
) -> list[str]:
    """Layers matched by any pattern of ``layers`` and by none of ``exclude`` (Plan's rules)."""
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise PlanError("crossbar_plan: layers is empty; give a pattern such as '*'")
    chosen: set[str] = set()
    for pattern in patterns:  # Plan.resolve reports patterns that match nothing
        chosen |= set(Plan({pattern: Sparsity(0.0)}, exclude=exclude).resolve(model))
    return [n for n in prunable_layers(model) if n in chosen]


def crossbar_plan(
    model: nn.Module,
    spec: CrossbarSpec,
    ratio: float,
    structure: str = "block",
    quantize: bool = True,
    layers: str | Sequence[str] = "*",
    exclude: str | Sequence[str] = (),
) -> Plan:
    """A plan whose sparsity tiles are the crossbar tiles of ``spec``, per layer.

    Every chosen layer gets ``Sparsity(ratio, structure, block=crossbar_block(...))``,
    intersected with ``Quantization(bits=spec.weight_bits)`` (symmetric uniform
    levels, one scale per tensor) when ``quantize``. With ``structure="block"``,
    hard-pruning a layer of T crossbar tiles leaves k = round((1 − ratio)·T) of
    them nonzero, so it needs exactly k crossbars
    (:func:`~dualprune.hardware.crossbar.map_model`).

    Args:
        model: The model whose layers are planned.
        spec: The crossbar the tiles follow.
        ratio: Fraction of tiles (block) or of rows/columns per tile removed, in [0, 1).
        structure: ``"block"``, ``"tile_rows"`` or ``"tile_cols"``.
        quantize: Intersect with ``spec.weight_bits``-bit uniform quantization.
        layers: Patterns (Plan's globs or ``re:`` regexes) of the layers to plan.
        exclude: Patterns of layers to leave out.

    Returns:
        A :class:`~dualprune.Plan` with one exact-name entry per layer.

    Raises:
        UnknownNameError: A structure outside :data:`CROSSBAR_STRUCTURES`.
        PlanError: A pattern that matches no layer, or a grouped conv whose groups
            do not fit the crossbar width (see :func:`crossbar_block`).
        ConstraintError: A ratio outside [0, 1).

    Example:
        >>> plan = crossbar_plan(model, CrossbarSpec(rows=128, cols=128), 0.75)
    """
    if structure not in CROSSBAR_STRUCTURES:
        known = did_you_mean(str(structure), CROSSBAR_STRUCTURES)
        raise UnknownNameError(f"crossbar plan structure '{structure}' is unknown{known}")
    modules = prunable_layers(model)
    mapping: dict[str, Constraint] = {}
    for name in _names(model, layers, exclude):
        block = crossbar_block(modules[name], spec, name)
        c: Constraint = Sparsity(ratio, structure, block=block)
        if quantize:
            c = c & Quantization(bits=spec.weight_bits)
        mapping[_exact(name)] = c
    return Plan(mapping)


def _exact(name: str) -> str:
    """A pattern matching exactly ``name`` (a regex when it holds glob characters)."""
    return f"re:{re.escape(name)}" if any(ch in name for ch in "*?[") else name
