"""Mapping a pruned model onto memristor crossbars (docs/algorithms.md §6, docs/hardware.md).

Let X_r × X_c be the crossbar (``spec.rows`` × ``spec.cols``) and m the physical
columns one weight column takes (``spec.columns_per_weight``). Every Conv1d,
Conv2d and Linear weight is read as its GEMM view G (R = in/groups·Πk rows,
inputs on wordlines; C = out/groups columns, one output per bitline group); a
grouped or depthwise conv is ``groups`` separate GEMMs. The occupancy O ⊆ G is
the mask when one is given for the weight, else G ≠ 0.

Per GEMM:

- **dense** tiles: ceil(R / X_r) · ceil(C / b_c) with b_c = X_c // m logical
  columns per crossbar (= ceil(R/X_r) · ceil(C·m/X_c) when m divides X_c).
- **crossbars** (no packing): O is laid out, cut into X_r × b_c tiles, and a
  tile needs a crossbar when it holds a nonzero. ``layout`` picks the layout:
  ``"compact"`` drops O's all-zero rows and columns first (§6's rule);
  ``"grid"`` keeps every row and column in place (the tiles a crossbar-aware
  plan prunes: whole-tile pruning removes exactly one crossbar a tile, and
  ``tile_rows`` keeps its rows per crossbar); ``"best"`` (default) tries the
  four combinations of dropping or keeping zero rows and zero columns and keeps
  the one with the fewest crossbars (ties: drop both, drop rows, drop columns,
  keep both). ``"best"`` never needs more crossbars than the other two, but it
  may merge rows of different tiles into one crossbar (more active rows there).
- per used tile t: r_t active rows and c_t active columns (those with a nonzero
  inside the tile), p_t = c_t·m (+1 reference column for the offset mapping)
  physical columns read, r_t DACs, ceil(p_t / adc_mux) ADCs of
  A_t = ``spec.adc_bits(r_t)`` bits, and the cells r_t·p_t that conduct.
- **packed** (ideal): ceil(Σ_t r_t·c_t·m / (X_r·X_c)) per layer — every used
  tile trimmed to its active rows and columns and the pieces packed without
  waste; a lower bound that no real placement beats.

MVMs per inference: output positions of a conv (from ``example_input`` through
forward hooks, divided by its batch size), positions of a Linear (1 for a (B, F)
input). Conductance levels of the programmed cells are computed here too, so
that ``cost.py`` can form ΣG (see :func:`cell_levels`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from dualprune.constraints.structures import gemm_view
from dualprune.errors import ConfigError, UnknownNameError, did_you_mean
from dualprune.hardware.mapping import CrossbarReport, LayerMap, TileMap
from dualprune.hardware.spec import CrossbarSpec
from dualprune.masks.masks import Masks
from dualprune.plan import layer_weight, prunable_layers, weight_key

__all__ = [
    "LAYOUTS",
    "CrossbarReport",
    "LayerMap",
    "TileMap",
    "cell_levels",
    "map_model",
    "weight_levels",
]


#: Values of ``map_model(layout=...)``.
LAYOUTS = ("best", "compact", "grid")

_CHOICES = {  # (drop zero rows, drop zero columns) tried, in tie-breaking order
    "best": ((True, True), (True, False), (False, True), (False, False)),
    "compact": ((True, True),),
    "grid": ((False, False),),
}


# ---------------------------------------------------------------------------------------
# weights → programmed levels


def weight_levels(w: Tensor, bits: int) -> Tensor:
    """Integer levels q = clip(round(w/α), −L, L), L = 2^{b−1} − 1, α = max|w| / L (int64).

    The whole programmable range is used for each layer (one α per tensor);
    weights quantized by a plan to ≤ b bits keep their zeros and their order.
    """
    top = 2 ** (bits - 1) - 1
    w = w.detach().to(torch.float64)
    peak = float(w.abs().max()) if w.numel() else 0.0
    if peak == 0.0 or top == 0:
        return torch.zeros(w.shape, dtype=torch.int64, device=w.device)
    return torch.clamp(torch.round(w * (top / peak)), -top, top).to(torch.int64)


def cell_levels(q: Tensor, spec: CrossbarSpec) -> Tensor:
    """Σ of the cell levels that store each integer weight level q (int64, q's shape).

    Differential: |q| in S slices of c bits on the device of q's sign, the other
    device at level 0 (g_min). Offset: u = q + 2^{b−1} in S slices of c bits.
    A cell at level ℓ conducts G = g_min + ℓ·Δg, Δg = (g_max − g_min)/(2^c − 1).
    """
    c, digit = spec.cell_bits, 2**spec.cell_bits - 1
    u = q.abs() if spec.mapping == "differential" else q + 2 ** (spec.weight_bits - 1)
    total = torch.zeros_like(u)
    for s in range(spec.slices):
        total += (u >> (c * s)) & digit
    return total


def _reference_level(spec: CrossbarSpec) -> int:
    """Level of the offset reference cell: 2^{b−1} = digit·2^{c(S−1)} in the top slice."""
    return 2 ** (spec.weight_bits - 1 - spec.cell_bits * (spec.slices - 1))


# ---------------------------------------------------------------------------------------
# tiling


def _grid(occ: Tensor, lev: Tensor, br: int, bc: int) -> dict[str, Tensor]:
    """Per tile of a batch of GEMMs (g, R, C): active rows, columns and level sums, (g, TR, TC)."""
    g, r, c = occ.shape
    tr, tc = -(-r // br), -(-c // bc)
    pad = (0, tc * bc - c, 0, tr * br - r)
    o = torch.nn.functional.pad(occ, pad).view(g, tr, br, tc, bc)
    lv = torch.nn.functional.pad(lev, pad).view(g, tr, br, tc, bc)
    row_act, col_act = o.any(4), o.any(2)  # (g, TR, br, TC), (g, TR, TC, bc)
    level = torch.einsum("gibj,gibjc,gijc->gij", row_act.double(), lv.double(), col_act.double())
    return {
        "rows": row_act.sum(2),
        "cols": col_act.sum(3),
        "level": level.round().to(torch.int64),
    }


def _layouts(occ: Tensor, lev: Tensor, br: int, bc: int, layout: str) -> dict[str, Tensor]:
    """The grid of ``layout`` with the fewest used tiles for one GEMM (R, C) (module docstring)."""
    keep_r, keep_c = occ.any(1), occ.any(0)
    candidates = []
    for drop_r, drop_c in _CHOICES[layout]:
        o, lv = occ, lev
        if drop_r:
            o, lv = o[keep_r], lv[keep_r]
        if drop_c:
            o, lv = o[:, keep_c], lv[:, keep_c]
        if o.numel() == 0:
            o, lv = occ[:0, :0], lev[:0, :0]
        candidates.append(_grid(o[None], lv[None], br, bc))
    return min(candidates, key=lambda grid: int((grid["rows"] > 0).sum()))


def _needs_layouts(occ: Tensor, br: int, bc: int) -> bool:
    """Whether dropping zero rows/columns of (R, C) could change the tiling."""
    r, c = occ.shape
    zero_rows = r > br and not bool(occ.any(1).all())
    zero_cols = c > bc and not bool(occ.any(0).all())
    return zero_rows or zero_cols


def _map_layer(
    name: str, module: nn.Module, spec: CrossbarSpec, keep: Tensor | None, layout: str
) -> LayerMap:
    w = layer_weight(module).detach()
    occ = (w != 0) if keep is None else keep.to(device=w.device, dtype=torch.bool)
    groups = int(getattr(module, "groups", 1))
    out = w.shape[0]
    m, br, bc = spec.columns_per_weight, spec.rows, spec.logical_cols
    q = weight_levels(torch.where(occ, w, torch.zeros((), dtype=w.dtype)), spec.weight_bits)
    lev = cell_levels(q, spec)
    r, c = gemm_view(occ).shape[0], out // groups
    occ3 = gemm_view(occ).reshape(r, groups, c).permute(1, 0, 2).contiguous()  # (g, R, C)
    lev3 = gemm_view(lev).reshape(r, groups, c).permute(1, 0, 2).contiguous()
    grids = _grid(occ3, lev3, br, bc)
    ref = 1 if spec.mapping == "offset" else 0
    ref_level = _reference_level(spec) if ref else 0
    tiles: list[TileMap] = []
    for gi in range(groups):
        grid = {k: v[gi] for k, v in grids.items()}
        if layout != "grid" and _needs_layouts(occ3[gi], br, bc):
            grid = {k: v[0] for k, v in _layouts(occ3[gi], lev3[gi], br, bc, layout).items()}
        for ti, tj in (grid["rows"] > 0).nonzero().tolist():
            rows, cols = int(grid["rows"][ti, tj]), int(grid["cols"][ti, tj])
            phys = cols * m + ref
            tiles.append(
                TileMap(
                    group=gi,
                    row=ti,
                    col=tj,
                    rows=rows,
                    cols=cols,
                    phys_cols=phys,
                    adcs=-(-phys // spec.adc_mux),
                    adc_bits=spec.adc_bits(rows),
                    cells=rows * phys,
                    level_sum=int(grid["level"][ti, tj]) + rows * ref_level,
                )
            )
    area = sum(t.rows * t.cols * m for t in tiles)
    return LayerMap(
        name=name,
        kind=type(module).__name__,
        weight_shape=tuple(w.shape),
        groups=groups,
        rows=r,
        cols=c,
        nonzero=int(occ.sum()),
        mvms=None,
        dense_crossbars=groups * -(-r // br) * -(-c // bc),
        crossbars=len(tiles),
        packed=math.ceil(area / (spec.rows * spec.cols)),
        tiles=tuple(tiles),
    )


# ---------------------------------------------------------------------------------------
# matrix-vector products per inference


def _mvm_counts(
    model: nn.Module, layers: dict[str, nn.Module], example_input: Tensor | tuple[Tensor, ...]
) -> dict[str, int]:
    """MVMs per sample of every layer: output positions seen in one forward pass / batch size."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not inputs or not all(isinstance(x, Tensor) and x.dim() >= 1 for x in inputs):
        raise ConfigError(
            "example_input must be a batched tensor or a tuple of them, "
            "e.g. torch.zeros(1, 1, 28, 28)"
        )
    batch = inputs[0].shape[0]
    seen = dict.fromkeys(layers, 0)

    def hook(name: str) -> Any:
        def count(module: nn.Module, args: Any, output: Tensor) -> None:
            channels = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
            seen[name] += output.numel() // channels

        return count

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {name: n // batch for name, n in seen.items()}


def map_model(
    model: nn.Module,
    spec: CrossbarSpec,
    masks: Masks | None = None,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
    *,
    dense: bool = False,
    layout: str = "best",
) -> CrossbarReport:
    """Map every Conv1d/Conv2d/Linear of ``model`` onto X_r × X_c crossbars (module docstring).

    Args:
        model: The (pruned) model; its weights give the programmed levels.
        spec: Crossbar geometry, cells and converters.
        masks: Supports to use (True = the weight is programmed); layers without a
            mask use their weights' nonzeros.
        example_input: A batched input; one forward pass (eval mode, no grad)
            counts the MVMs of every layer. Without it convs have ``mvms=None``
            (the cost model then refuses) and Linear layers 1.
        dense: Map every weight as occupied (the unpruned baseline of the same model).
        layout: ``"best"``, ``"compact"`` or ``"grid"`` (module docstring).

    Returns:
        A :class:`CrossbarReport`.

    Raises:
        ConfigError: A mask whose shape differs from its weight, an input that is
            not a batched tensor, or a model without Conv/Linear layers.
        UnknownNameError: An unknown ``layout``.
    """
    if not isinstance(spec, CrossbarSpec):
        raise ConfigError(f"spec must be a CrossbarSpec, got {type(spec).__name__}")
    if layout not in LAYOUTS:
        raise UnknownNameError(
            f"crossbar layout '{layout}' is unknown{did_you_mean(str(layout), LAYOUTS)}"
        )
    layers = prunable_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv1d/Conv2d/Linear layer to map")
    mvms = _mvm_counts(model, layers, example_input) if example_input is not None else {}
    out = []
    for name, module in layers.items():
        key = weight_key(name)
        shape = layer_weight(module).shape
        keep = masks[key] if masks is not None and key in masks else None
        if dense:
            keep = torch.ones(shape, dtype=torch.bool)
        if keep is not None and tuple(keep.shape) != tuple(shape):
            raise ConfigError(
                f"mask of '{key}' has shape {tuple(keep.shape)} but the weight is "
                f"{tuple(shape)}; masks must come from this model"
            )
        layer = _map_layer(name, module, spec, keep, layout)
        count = mvms.get(name, 1 if isinstance(module, nn.Linear) else None)
        out.append(replace(layer, mvms=count))
    return CrossbarReport(spec=spec, layers=tuple(out), dense=dense, layout=layout)
