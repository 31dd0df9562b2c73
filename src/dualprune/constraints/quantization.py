"""Quantization sets: which values the entries of a weight may take (docs/algorithms.md §3).

Let V be the weight (one row per scale: the whole tensor for ``scale="tensor"``,
each output channel V[o] for ``scale="channel"``) and ℓ_1 < … < ℓ_L the unscaled
levels. The set is S = {α·Q : α > 0, every entry of Q in {ℓ_j}} (α = 1 fixed for
``scale="none"``), and the projection solves, per row,

    min_{α, Q} ||V − α·Q||²_F.

For a fixed α the best Q rounds every entry to its nearest level; for a fixed Q
the best α is ⟨V, Q⟩ / ⟨Q, Q⟩. The level sets and how α is found:

    binary    ℓ ∈ {−1, +1}            Q = sign(V) (0 ↦ +1), α = mean|V|          exact
    ternary   ℓ ∈ {−1, 0, +1}         support of size j = the j largest |V|,
                                      α = their mean, j maximising (Σ top-j |V|)²/j  exact
    uniform   ℓ ∈ {−L, …, L},         Q = clip(round(V/α), −L, L);              heuristic
              L = 2^{b−1} − 1         bits=1 is binary, bits=2 is ternary (exact)
    pow2      ℓ ∈ {0, ±2^{−i}},       i = 0 … 2^{b−1} − 2                       heuristic
    list      the given levels        nearest level (ties to the larger)        heuristic

Heuristic fit (uniform, pow2, list; :mod:`~dualprune.constraints.scale_fit`):

1. (uniform) the spec's alternation from α_0 = mean|V≠0| / (L/2): Q = clip(round(V/α)),
   α = ⟨V,Q⟩/⟨Q,Q⟩, ten times, keeping the best α seen;
2. every row sorted once, so that with prefix sums the objective of any α costs
   O(L log n): α_0, ADMM-NN's grid α ∈ [0.9, 1.1]·max|V|/max|ℓ| in steps of 0.001
   and 64 log-spaced scales below it are scored, and the alternation is run from the
   four best (ties of the nearest level go to the larger level here);
3. the better of 1 and 2.

So the objective never increases along an alternation, and the result is no worse
than the spec's alternation nor than ADMM-NN's grid search (for ``scale="channel"``
with very many rows × levels the grid is thinned to keep the fit fast). ``round``
is torch.round (halves to even).

With a ``mask`` (an intersection with a sparsity set) only the survivors are
fitted and quantized; the other entries are 0.

References:
    Ren et al., "ADMM-NN: An Algorithm-Hardware Co-Design Framework of DNNs Using
    Alternating Direction Method of Multipliers", ASPLOS 2019.
    Leng et al., "Extremely Low Bit Neural Network: Squeeze the Last Bit Out with
    ADMM", AAAI 2018.
    Li et al., "Ternary Weight Networks", 2016 (ternary threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dualprune.constraints.base import Constraint, shape_of, shape_text
from dualprune.constraints.scale_fit import binary_scale, fit_scale, ternary_fit
from dualprune.errors import ConstraintError, UnknownNameError, did_you_mean

__all__ = ["LEVELS", "SCALES", "Quantization"]

#: Named level sets.
LEVELS = ("binary", "ternary", "pow2")
#: Scale modes: one α per tensor, one per output channel, or none (α = 1).
SCALES = ("tensor", "channel", "none")

_MAX_BITS = {"uniform": 16, "pow2": 8}


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Quantization(Constraint):
    """A quantization set and its projection (docs/algorithms.md §3).

        S    = {α·Q : α ≥ 0, every entry of Q in the levels ℓ}      (per tensor or channel)
        Π_S(V) = α*·Q*,   (α*, Q*) = argmin ||V − α·Q||²_F,  Q* = nearest level of V/α*

    Exact for binary and ternary levels; for uniform, pow2 and level lists the
    scale α* is fitted heuristically (module docstring), never worse than
    ADMM-NN's grid search over α.

    Args:
        bits: Bits per weight. Alone: symmetric uniform b-bit (1 = binary,
            2 = ternary). With ``levels="pow2"``: 2^{b−1} − 1 powers of two per
            sign, plus 0 (default 4 bits).
        levels: ``"binary"``, ``"ternary"``, ``"pow2"`` or an explicit list of
            numbers (e.g. conductance levels), used as relative levels whose
            scale α is fitted, or as absolute values with ``scale="none"``.
        scale: ``"tensor"`` (one α), ``"channel"`` (one α per output channel) or
            ``"none"`` (α = 1).

    Raises:
        ConstraintError: bits < 1 or too many, no level set given, a level list
            with fewer than two distinct finite numbers, bits that contradict
            ``levels``, or a bad ``scale``.
        UnknownNameError: an unknown level-set name.

    Example:
        >>> import torch
        >>> Quantization(levels="ternary").project(torch.tensor([0.9, -1.1, 0.1, 1.0]))
        tensor([ 1., -1.,  0.,  1.])
    """

    restricts_values = True

    def __init__(
        self,
        bits: int | None = None,
        levels: str | Sequence[float] | None = None,
        scale: str = "tensor",
    ) -> None:
        self.bits = bits
        self.levels = levels
        self.scale = scale
        if scale not in SCALES:
            raise ConstraintError(
                f"{self._label()}: scale={scale!r} is not allowed; use one of {', '.join(SCALES)}"
            )
        if bits is not None and (not _is_int(bits) or bits < 1):
            raise ConstraintError(
                f"{self._label()}: bits={bits!r} is not allowed; use an int >= 1 (1 = binary)"
            )
        self.kind = self._kind()
        self._levels = self._level_tensor()

    def _label(self) -> str:
        args = [f"{k}={v!r}" for k, v in self._args().items()]
        return f"Quantization({', '.join(args)})"

    def _args(self) -> dict[str, Any]:
        levels = self.levels
        if isinstance(levels, Sequence) and not isinstance(levels, str):
            levels = [float(x) if isinstance(x, (int, float)) else x for x in levels]
        out = {"bits": self.bits, "levels": levels}
        return {k: v for k, v in out.items() if v is not None} | {"scale": self.scale}

    def _kind(self) -> str:
        bits, levels = self.bits, self.levels
        if levels is None:
            if bits is None:
                raise ConstraintError(
                    "Quantization() needs a level set; pass bits= (e.g. bits=4) or "
                    "levels= ('binary', 'ternary', 'pow2' or a list of levels)"
                )
            kind = {1: "binary", 2: "ternary"}.get(bits, "uniform")
        elif isinstance(levels, str):
            if levels not in LEVELS:
                raise UnknownNameError(
                    f"quantization levels '{levels}' are unknown{did_you_mean(levels, LEVELS)}"
                    "; or pass a list of levels"
                )
            kind = levels
            implied = {"binary": 1, "ternary": 2}.get(levels)
            if bits is not None and implied is not None and bits != implied:
                raise ConstraintError(
                    f"{self._label()}: {levels} levels are {implied}-bit; drop bits= "
                    f"or pass bits={implied}"
                )
        else:
            kind = "list"
            if bits is not None:
                raise ConstraintError(
                    f"{self._label()}: bits= is implied by the level list; drop bits="
                )
        top = _MAX_BITS.get(kind)
        if top is not None and bits is not None and bits > top:
            raise ConstraintError(
                f"{self._label()}: bits={bits} is too many for {kind} levels; use bits <= {top}"
            )
        if kind == "pow2" and bits is not None and bits < 2:
            raise ConstraintError(
                f"{self._label()}: pow2 levels need bits >= 2 (one sign bit); pass bits=2 or more"
            )
        return kind

    def _level_tensor(self) -> Tensor:
        """ℓ_1 < … < ℓ_L, unscaled, float64."""
        if self.kind == "binary":
            return torch.tensor([-1.0, 1.0], dtype=torch.float64)
        if self.kind == "ternary":
            return torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
        if self.kind == "uniform":
            top = 2 ** (self.bits - 1) - 1  # type: ignore[operator]
            return torch.arange(-top, top + 1, dtype=torch.float64)
        if self.kind == "pow2":
            count = 2 ** ((self.bits or 4) - 1) - 1
            mags = 2.0 ** -torch.arange(count - 1, -1, -1, dtype=torch.float64)
            return torch.cat([-mags.flip(0), torch.zeros(1, dtype=torch.float64), mags])
        values = self.levels
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ConstraintError(
                f"{self._label()}: levels must be a name or a list of numbers; "
                f"use one of {', '.join(LEVELS)} or e.g. [-1, 0, 1]"
            )
        ok = all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in values
        )
        unique = sorted(set(float(x) for x in values)) if ok else []
        if len(unique) < 2:
            raise ConstraintError(
                f"{self._label()}: levels need at least two distinct finite numbers; "
                "pass e.g. levels=[-1, -0.5, 0, 0.5, 1]"
            )
        return torch.tensor(unique, dtype=torch.float64)

    # ---- public -----------------------------------------------------------------------

    def level_values(self) -> Tensor:
        """The unscaled levels ℓ_1 < … < ℓ_L (float64); index codes address this tensor."""
        return self._levels.clone()

    @property
    def integer_codes(self) -> bool:
        """True when codes are the integer levels themselves (binary, ternary, uniform)."""
        return self.kind in ("binary", "ternary", "uniform")

    def check(self, w: Tensor | torch.Size | tuple[int, ...], name: str = "weight") -> None:
        """Raise ConstraintError, naming ``name``, if ``w`` has no entries to quantize."""
        shape = shape_of(w)
        if len(shape) == 0:
            raise ConstraintError(
                f"{self._label()} cannot apply to '{name}' ({shape_text(shape)}): it needs a "
                "weight with at least one dimension; exclude it"
            )

    def mask(self, w: Tensor) -> Tensor:
        """All True: a quantization constrains values, not which entries may be nonzero."""
        self.check(w)
        return torch.ones(w.shape, dtype=torch.bool, device=w.device)

    def project(self, w: Tensor, mask: Tensor | None = None) -> Tensor:
        """Π_S(w) (only the entries where ``mask`` is True, the rest 0); w is not modified."""
        return self._quantize(w, mask)[2]

    def codes(self, w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Codes and scales of :meth:`project`.

        For binary, ternary and uniform levels the codes are the integer levels Q
        (int8 up to 8 bits, else int16) and ``codes * scales`` is exactly
        ``project(w)``. For pow2 and level lists the codes index
        :meth:`level_values` (−1 marks an entry pruned by ``mask``); use
        :meth:`dequantize`. ``scales`` has w's dtype and shape () for
        ``scale="tensor"``/``"none"``, (out, 1, …, 1) for ``"channel"``.
        """
        q, scales, _ = self._quantize(w, mask)
        return q, scales

    def dequantize(self, codes: Tensor, scales: Tensor) -> Tensor:
        """Values of :meth:`codes`' output: exactly what :meth:`project` returned."""
        if self.integer_codes:
            return codes * scales
        levels = self._levels.to(device=codes.device, dtype=scales.dtype)
        values = levels[codes.clamp(min=0).long()] * scales
        return torch.where(codes >= 0, values, torch.zeros((), dtype=values.dtype))

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "quantization", "bits"?: ..., "levels"?: ..., "scale": ...}``."""
        return {"type": "quantization", **self._args()}

    # ---- the math ---------------------------------------------------------------------

    def _quantize(self, w: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        self.check(w)
        if mask is not None and mask.shape != w.shape:
            raise ConstraintError(
                f"{self._label()}: mask of shape {shape_text(tuple(mask.shape))} does not "
                f"match the weight ({shape_text(tuple(w.shape))}); pass a mask of its shape"
            )
        rows = w.shape[0] if self.scale == "channel" else 1
        x = w.detach().reshape(rows, -1).to(torch.float64)  # (rows, n)
        keep = None if mask is None else mask.reshape(rows, -1).to(w.device).contiguous()
        if self.scale == "none":
            alpha, ternary = torch.ones(rows, dtype=torch.float64, device=w.device), None
        elif self.kind == "ternary":
            alpha, ternary = ternary_fit(x, keep)
        elif self.kind == "binary":
            alpha, ternary = binary_scale(x, keep), None
        else:
            levels = self._levels.to(w.device)
            alpha, ternary = fit_scale(x, keep, levels, uniform=self.kind == "uniform"), None
        scale_w = alpha.to(w.dtype)  # the scale returned, in w's dtype
        a64 = scale_w.to(torch.float64).unsqueeze(1)
        safe = torch.where(a64 > 0, a64, torch.ones((), dtype=torch.float64))
        if ternary is not None:
            q = ternary
        elif self.kind == "binary":
            q = torch.where(x >= 0, 1.0, -1.0)
        elif self.kind in ("uniform", "ternary"):
            top = float(self._levels[-1])
            q = torch.clamp(torch.round(x / safe), -top, top)
        else:
            mids = (self._levels[1:] + self._levels[:-1]).to(w.device) / 2
            q = torch.searchsorted(mids, (x / safe).contiguous(), right=True).double()
        if self.integer_codes:
            if keep is not None:
                q = torch.where(keep, q, 0.0)
            dtype = torch.int8 if self._levels[-1] <= 127 else torch.int16
            codes = q.to(dtype)
            values = codes.to(w.dtype) * scale_w.unsqueeze(1)
        else:
            if keep is not None:
                q = torch.where(keep, q, -1.0)
            codes = q.to(torch.int16 if self._levels.numel() < 2**15 else torch.int32)
            levels = self._levels.to(device=w.device, dtype=w.dtype)
            values = levels[codes.clamp(min=0).long()] * scale_w.unsqueeze(1)
            values = torch.where(codes >= 0, values, torch.zeros((), dtype=w.dtype))
        shape = (w.shape[0], *([1] * (w.dim() - 1))) if self.scale == "channel" else ()
        return codes.view(w.shape), scale_w.reshape(shape), values.view(w.shape)
