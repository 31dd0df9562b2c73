"""Weights as conductances: the noise-free mapping of a weight tensor onto devices.

Pure tensor functions (docs/algorithms.md §6, docs/devices.md). Let b be the weight
bits, c the cell bits, S the slices per weight (``CrossbarSpec.slices``),
L = 2^{b−1} − 1, top = 2^c − 1, Δg = (g_max − g_min)/top. A weight is W = α·q with
an integer level q ∈ [−L, L]; a cell at level ℓ ∈ [0, top] holds G = g_min + ℓ·Δg.

    differential  q⁺ = max(q, 0), q⁻ = max(−q, 0) on a device pair, slice s of a
                  magnitude m holding ℓ_s = ⌊m / 2^{cs}⌋ mod 2^c;
                  W = α·Σ_s 2^{cs}·(ℓ̂⁺_s − ℓ̂⁻_s),   ℓ̂ = (G − g_min)/Δg
    offset        u = q + o, o = 2^{b−1}, on one device, sliced the same way; o is one
                  digit 2^{b−1−c(S−1)} of the top slice, held by one reference cell
                  per input row of each crossbar (the dummy reference column);
                  W = α·(Σ_s 2^{cs}·ℓ̂_s − 2^{c(S−1)}·ℓ̂^ref)

Which cells exist at all: :func:`built_weights` (a crossbar tile with no kept weight is
not built). What real devices do to the conductances is in :mod:`dualprune.hardware.devices`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dualprune.constraints import Quantization
from dualprune.errors import ConfigError, ConstraintError
from dualprune.hardware.spec import CrossbarSpec

__all__ = [
    "Conductances",
    "built_weights",
    "cell_shape",
    "column_crossbars",
    "conductances_to_levels",
    "conductances_to_weights",
    "delta_g",
    "grid_levels",
    "level_offset",
    "slice_significance",
    "to_levels",
    "weights_to_conductances",
]

_READ_BITS = 24  # levels are read back on a 2^-24 grid of one level (see conductances_to_weights)


@dataclass(frozen=True)
class Conductances:
    """One weight tensor laid onto devices.

    Attributes:
        G: (S, P, *shape) float64 siemens; P = 2 (differential: [positive, negative])
            or 1 (offset); slice s has significance 2^{cs}.
        ref: Offset mapping: (T, *shape[1:]) reference cells (top-slice significance),
            one per input row of each of the T crossbars that the output columns span
            (⌊cols / S⌋ columns a crossbar); None when differential.
        alpha: α, a float tensor broadcastable to ``shape`` (shape () or (out, 1, …, 1)).
        spec: The crossbar spec the cells follow.
        programmed: Bool of ``shape``: False for pruned weights left unprogrammed at
            g_min (differential masked mapping); None when every cell is programmed.
        dtype: The dtype of the weights read back.
    """

    G: Tensor
    ref: Tensor | None
    alpha: Tensor
    spec: CrossbarSpec
    programmed: Tensor | None
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        """Shape of the weight tensor."""
        return self.G.shape[2:]


def _grid(spec: CrossbarSpec) -> tuple[int, float]:
    """(S, Δg) of a spec; raises ConfigError for specs no signed grid fits."""
    if not isinstance(spec, CrossbarSpec):
        raise ConfigError(f"spec must be a CrossbarSpec, got {type(spec).__name__}")
    if spec.weight_bits < 2:
        raise ConfigError(
            f"device mapping needs weight_bits >= 2 (a signed grid), got {spec.weight_bits}"
        )
    return spec.slices, (spec.g_max - spec.g_min) / (2**spec.cell_bits - 1)


def delta_g(spec: CrossbarSpec) -> float:
    """Δg = (g_max − g_min)/(2^c − 1), siemens per cell level.

    Raises:
        ConfigError: not a CrossbarSpec, or weight_bits < 2 (no signed grid).
    """
    return _grid(spec)[1]


def level_offset(spec: CrossbarSpec) -> int:
    """Offset o = 2^{b−1} of the offset mapping (as ``crossbar.py`` maps it), 0 if differential.

    o is a power of two, so it is one digit of the top slice and its reference is one
    cell a row; levels q ∈ [−L, L] become u ∈ [1, 2^b − 1].
    """
    return 2 ** (spec.weight_bits - 1) if spec.mapping == "offset" else 0


def _ref_digit(spec: CrossbarSpec) -> int:
    """Level of the reference cell: o / 2^{c(S−1)} = 2^{b−1−c(S−1)} ∈ [1, 2^c − 1]."""
    return 2 ** (spec.weight_bits - 1 - spec.cell_bits * (spec.slices - 1))


def cell_shape(spec: CrossbarSpec, shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """Shape (S, P, *shape) of the cells of a weight of ``shape``: P = 2 differential, 1 offset."""
    _grid(spec)
    return (spec.slices, 2 if spec.mapping == "differential" else 1, *shape)


def column_crossbars(
    spec: CrossbarSpec, columns: int, device: torch.device | None = None
) -> Tensor:
    """Crossbar of each output column j (offset mapping): ⌊j / ⌊cols / S⌋⌋ (int64)."""
    return torch.arange(columns, device=device) // max(1, spec.cols // spec.slices)


def _digits(u: Tensor, c: int, slices: int) -> Tensor:
    """(S, *u.shape) slice levels ⌊u / 2^{cs}⌋ mod 2^c of non-negative int64 ``u``."""
    return torch.stack([(u >> (c * s)) & (2**c - 1) for s in range(slices)])


def to_levels(
    weight: Tensor, bits: int, mask: Tensor | None = None, scale: str = "tensor"
) -> tuple[Tensor, Tensor]:
    """(q, α) of Π_S(W) for the symmetric uniform b-bit set (``Quantization(bits=b)``).

    q is an integer tensor in [−L, L], α has W's dtype (shape () or (out, 1, …, 1)
    for ``scale="channel"``); ``q.to(W.dtype) * α`` equals ``Quantization.project``.
    Entries outside ``mask`` get q = 0.
    """
    return Quantization(bits=bits, scale=scale).codes(weight, mask=mask)


def grid_levels(
    weight: Tensor,
    spec: CrossbarSpec,
    alpha: Tensor | float | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(q, α) that :func:`weights_to_conductances` lays out: int64 levels and the scale.

    Args:
        weight: Integer levels q, or float weights: with ``alpha`` they are rounded to
            q = round(W/α) (kept up to what the cells hold, which may exceed the b-bit
            grid), without it quantized by :func:`to_levels` with b = ``spec.weight_bits``.
        spec: Cells, slices and mapping.
        alpha: α (float or tensor broadcastable to W); 1 for integer q without it.
        mask: Bool of W's shape, False = pruned (q = 0 there).

    Returns:
        q (int64, W's shape) and α in the dtype weights are read back in (W's dtype for
        float weights, α's for integer levels).

    Raises:
        ConstraintError: a 0-d weight, a mask of another shape, α < 0 or not finite,
            integer levels the cells cannot hold.
        ConfigError: a spec with weight_bits < 2.
    """
    slices = _grid(spec)[0]
    if weight.dim() == 0:
        raise ConstraintError("a weight on devices needs at least one dimension, got a 0-d tensor")
    if mask is not None and mask.shape != weight.shape:
        raise ConstraintError(
            f"mask of shape {tuple(mask.shape)} does not match the weight {tuple(weight.shape)}"
        )
    keep = None if mask is None else mask.to(device=weight.device, dtype=torch.bool)
    floating = weight.is_floating_point()
    if floating and alpha is None:
        q, a = to_levels(weight.detach(), spec.weight_bits, mask=keep)
    else:
        a = torch.as_tensor(1.0 if alpha is None else alpha, device=weight.device).detach()
        a = a.to(weight.dtype if floating else torch.promote_types(a.dtype, torch.float32))
        if not bool(torch.isfinite(a).all() and (a >= 0).all()):
            raise ConstraintError(f"alpha must be finite and >= 0, got {a.flatten()[:4].tolist()}")
        q = weight.detach()
        if floating:
            a64 = a.double()
            q = torch.round(q.double() / torch.where(a64 > 0, a64, 1.0)) * (a64 > 0)
    q = q.to(torch.int64)
    if keep is not None:
        q = q.masked_fill(~keep, 0)
    o, cap = level_offset(spec), 2 ** (spec.cell_bits * slices) - 1
    low, high = (-cap, cap) if spec.mapping == "differential" else (-o, cap - o)
    if floating:
        q = q.clamp(low, high)
    elif q.numel() and (int(q.min()) < low or int(q.max()) > high):
        raise ConstraintError(
            f"levels {int(q.min())}..{int(q.max())} do not fit {slices} slice(s) of "
            f"{spec.cell_bits}-bit cells ({spec.mapping}): allowed {low}..{high}"
        )
    return q, a


def weights_to_conductances(
    weight: Tensor,
    spec: CrossbarSpec,
    alpha: Tensor | float | None = None,
    mask: Tensor | None = None,
) -> Conductances:
    """Map W = α·q onto cells (module docstring), noise-free: G = g_min + ℓ·Δg.

    ``weight``, ``alpha`` and ``mask`` as in :func:`grid_levels`. A pruned weight
    (``mask`` False) is q = 0; with the differential mapping both its devices are left
    unprogrammed at g_min (masked mapping); with the offset mapping it holds the offset
    like any zero weight (an unprogrammed cell would read as −o).

    Raises:
        ConstraintError, ConfigError: as :func:`grid_levels`.
    """
    q, a = grid_levels(weight, spec, alpha, mask)
    slices, dg = _grid(spec)
    if spec.mapping == "differential":
        u = torch.stack([q.clamp(min=0), (-q).clamp(min=0)])  # (2, *shape)
        ref = None
    else:
        u = (q + level_offset(spec)).unsqueeze(0)  # (1, *shape)
        ntiles = int(column_crossbars(spec, q.shape[0], q.device)[-1]) + 1 if q.shape[0] else 0
        ref = torch.full(
            (ntiles, *q.shape[1:]), spec.g_min + _ref_digit(spec) * dg, dtype=torch.float64
        ).to(q.device)
    G = spec.g_min + _digits(u, spec.cell_bits, slices).double() * dg  # (S, P, *shape)
    programmed = None
    if mask is not None and spec.mapping == "differential":
        programmed = mask.to(device=q.device, dtype=torch.bool)
    return Conductances(G, ref, a, spec, programmed, a.dtype)


def slice_significance(spec: CrossbarSpec, power: int, device: torch.device) -> Tensor:
    """(S,) float64 significances 2^{cs} (power 1) or 4^{cs} (power 2)."""
    return 2.0 ** (power * spec.cell_bits * torch.arange(spec.slices, dtype=torch.float64)).to(
        device
    )


def conductances_to_levels(cond: Conductances) -> Tensor:
    """The level read back for every weight (float64, W's shape), before α.

    Σ_s 2^{cs}·(ℓ̂⁺_s − ℓ̂⁻_s) (differential) or Σ_s 2^{cs}·ℓ̂_s − 2^{c(S−1)}·ℓ̂^ref
    (offset), ℓ̂ = (G − g_min)/Δg, rounded to a 2^-24 grid of one level: an ideal
    fixed-point readout far finer than any modeled noise, which makes a noise-free
    round trip exact.
    """
    spec = cond.spec
    dg = _grid(spec)[1]
    sig = slice_significance(spec, 1, cond.G.device)
    per = torch.einsum("s,sp...->p...", sig, (cond.G - spec.g_min) / dg)  # (P, *shape)
    if spec.mapping == "differential":
        level = per[0] - per[1]
    else:
        assert cond.ref is not None  # offset mapping always has its reference cells
        ref = (cond.ref - spec.g_min) / dg * float(sig[-1])
        level = per[0] - ref.index_select(0, column_crossbars(spec, per.shape[1], per.device))
    return torch.round(level * 2.0**_READ_BITS) / 2.0**_READ_BITS


def conductances_to_weights(cond: Conductances) -> Tensor:
    """Read the weights back: W = α·ℓ with ℓ from :func:`conductances_to_levels`.

    Computed as ``ℓ.to(dtype) * α``, so a noise-free round trip gives exactly
    ``q.to(dtype) * α``, i.e. ``Quantization(bits=b).project(W)`` bit for bit.
    """
    return conductances_to_levels(cond).to(cond.dtype) * cond.alpha


def built_weights(keep: Tensor, spec: CrossbarSpec, groups: int = 1) -> Tensor:
    """True where a weight lies in a crossbar tile that holds a kept weight (is built).

    The GEMM view of one group, R × C (R = in/groups·Πk inputs, C = out/groups
    outputs, as :func:`~dualprune.hardware.crossbar.map_model` reads it), is cut in
    place into X_r × b_c tiles (``spec.rows`` × ``spec.logical_cols``, the ``"grid"``
    layout of crossbar-aware plans); a tile with no kept weight needs no crossbar, so
    none of its cells exist. ``keep``: bool of the weight's shape (mask, or W ≠ 0).

    Returns:
        Bool tensor of ``keep``'s shape.

    Raises:
        ConstraintError: a 0-d ``keep``, or outputs not divisible by ``groups``.
    """
    if keep.dim() == 0 or isinstance(groups, bool) or groups < 1 or keep.shape[0] % groups:
        raise ConstraintError(
            f"built_weights needs a weight of shape (out, ...) with out divisible by groups; "
            f"got shape {tuple(keep.shape)} and groups={groups!r}"
        )
    c = keep.shape[0] // groups
    occ = keep.reshape(groups, c, -1).to(torch.uint8)  # (groups, C, R)
    r, br, bc = occ.shape[2], spec.rows, spec.logical_cols
    tr, tc = -(-r // br), -(-c // bc)
    padded = F.pad(occ, (0, tr * br - r, 0, tc * bc - c))  # (groups, TC·b_c, TR·X_r)
    tiles = padded.view(groups, tc, bc, tr, br)
    used = tiles.amax(dim=(2, 4), keepdim=True).expand(groups, tc, bc, tr, br)
    return used.reshape(groups, tc * bc, tr * br)[:, :c, :r].reshape(keep.shape).bool()
