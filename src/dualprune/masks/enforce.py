"""Keeping one parameter in a fixed compressed set while it trains (behind ``Masks.attach``).

After hard pruning a weight W has a fixed support M (True = kept) and, if quantized,
fixed scales α, so the set it must stay in during retraining is (docs/algorithms.md §1
"masked retraining", §3 "joint sparse + quantized")

    S = {W : W = 0 outside M,  W ∈ {α·ℓ_j} on M}

and Π_S(V) = α·ℓ(V/α) on M, 0 elsewhere, where ℓ(x) is the level nearest to x (ties
go to the larger level): exact, because support and scales are fixed.

:class:`EnforcedParam` keeps one parameter in S with three hooks (docs/masks.md):

    forward pre-hook         if W changed since we last wrote it: settle
    post-accumulate-grad     grad ← grad ⊙ M;  quantized: W ← latent (the optimizer steps it)
    optimizer step post-hook settle (pruned-only layers always, quantized ones if W changed)

    settle:  latent ← W ⊙ M,  W ← Π_S(latent)

So pruned entries are exactly 0 after every optimizer step, whatever momentum or
Adam moments the optimizer holds, and a quantized layer is trained with a
straight-through estimator: the forward pass sees Π_S(latent), the gradient taken
there updates the float latent weight. Each hook costs a few tensor kernels per
layer, no Python loop over entries; a forward pre-hook with nothing to do is one
integer comparison (the parameter's version counter).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dualprune.constraints import Quantization

__all__ = ["EnforcedParam", "LevelGrid"]


class LevelGrid:
    """The fixed level grid {α·ℓ_j} of one quantized weight, on the weight's device.

    The nearest level is found as :class:`~dualprune.constraints.Quantization` finds
    it: integer levels −L … L (uniform, ternary) by clamp(round(x), −L, L) (halves to
    even; 40× faster than a search on CPU), other level sets (binary, pow2, lists) by
    ``searchsorted`` over the midpoints between levels (ties go to the larger level).

    Args:
        quantizer: Gives the unscaled levels ℓ_1 < … < ℓ_L (``level_values()``).
        scales: α, shape () or (out, 1, …, 1) (as ``Quantization.codes`` returns it).
        like: A tensor of the weight's device and dtype (computed in at least float32).
    """

    def __init__(self, quantizer: Quantization, scales: Tensor, like: Tensor) -> None:
        dtype = torch.promote_types(like.dtype, torch.float32)
        levels = quantizer.level_values()  # float64, ascending
        top = float(levels[-1])
        integer = top.is_integer() and torch.equal(levels, torch.arange(-top, top + 1).double())
        self.top: float | None = top if integer and top >= 1 else None
        self.levels = levels.to(device=like.device, dtype=dtype)
        self.mids = ((self.levels[1:] + self.levels[:-1]) / 2).contiguous()
        self.alpha = scales.detach().to(device=like.device, dtype=dtype)
        self.safe = torch.where(self.alpha > 0, self.alpha, torch.ones_like(self.alpha))

    def snap(self, w: Tensor, pruned: Tensor) -> Tensor:
        """Π_S(w): α·ℓ(w/α), 0 where ``pruned`` (a new tensor of w's dtype)."""
        x = w.to(self.levels.dtype) / self.safe
        if self.top is not None:
            q = x.round_().clamp_(-self.top, self.top)
        else:
            q = self.levels[torch.searchsorted(self.mids, x.contiguous(), right=True)]
        return q.mul_(self.alpha).masked_fill_(pruned, 0).to(w.dtype)

    def to(self, device: torch.device) -> None:
        """Move the grid to ``device`` in place."""
        for key in ("levels", "mids", "alpha", "safe"):
            setattr(self, key, getattr(self, key).to(device))


class EnforcedParam:
    """One parameter, its fixed set S and the hook state that keeps it in S.

    ``latent`` is the float weight the optimizer updates (quantized layers only);
    ``holds_latent`` says the parameter holds it now (from backward to the step);
    ``version`` is the parameter's version counter when we last wrote it.

    Args:
        name: Fully-qualified parameter name (for messages).
        module: The module owning the parameter (gets the forward pre-hook).
        param: The parameter.
        keep: Bool support M of the parameter's shape.
        grid: The level grid of a quantized parameter, else None.
    """

    def __init__(
        self, name: str, module: nn.Module, param: Tensor, keep: Tensor, grid: LevelGrid | None
    ) -> None:
        self.name, self.module, self.param, self.grid = name, module, param, grid
        self.keep = keep.to(param.device)
        self.pruned = ~self.keep
        self.latent: Tensor | None = None
        self.holds_latent = False
        self.version = -1
        self.handles: list[Any] = []

    def project(self, w: Tensor) -> Tensor:
        """Π_S(w) with the fixed support and scales (a new tensor)."""
        return (
            w.masked_fill(self.pruned, 0) if self.grid is None else self.grid.snap(w, self.pruned)
        )

    def dirty(self) -> bool:
        """True when the parameter may have left S since we last wrote it."""
        return self.holds_latent or self.param._version != self.version

    def settle(self) -> None:
        """Take the parameter as the new latent: latent ← W ⊙ M, then W ← Π_S(latent)."""
        p = self.param
        if self.keep.device != p.device:
            self.follow(p.device)
        if self.grid is None:
            p.masked_fill_(self.pruned, 0)
        else:
            if self.latent is None:
                self.latent = torch.empty_like(p)
            self.latent.copy_(p).masked_fill_(self.pruned, 0)
            p.copy_(self.grid.snap(self.latent, self.pruned))
        self.holds_latent = False
        self.version = p._version

    def follow(self, device: torch.device) -> None:
        """Move support, grid and latent to ``device`` (the model moved after attach)."""
        self.keep, self.pruned = self.keep.to(device), self.pruned.to(device)
        if self.grid is not None:
            self.grid.to(device)
        if self.latent is not None:
            self.latent = self.latent.to(device)

    def current_latent(self) -> Tensor | None:
        """The latent weight as the next settle would take it (None if not quantized)."""
        if self.grid is None or self.latent is None:
            return None
        w = self.param if self.dirty() else self.latent
        return w.detach().masked_fill(self.pruned, 0)

    # ---- hooks ------------------------------------------------------------------------

    def attach(self) -> None:
        """Register the forward pre-hook and (if it trains) the gradient hook."""
        self.handles.append(self.module.register_forward_pre_hook(self.pre_forward))
        if self.param.requires_grad:
            self.handles.append(self.param.register_post_accumulate_grad_hook(self.post_grad))

    def detach(self) -> None:
        """Leave the parameter in S and remove its hooks (idempotent)."""
        with torch.no_grad():
            if self.grid is None or self.dirty():
                self.settle()
        for handle in self.handles:
            handle.remove()
        self.handles, self.latent = [], None

    def pre_forward(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook: settle if W changed since we wrote it (else nothing)."""
        if self.dirty():
            with torch.no_grad():
                self.settle()

    def post_grad(self, p: Tensor) -> None:
        """Post-accumulate-grad hook: grad ⊙ M; a quantized W gets its latent back (STE)."""
        with torch.no_grad():
            if self.keep.device != p.device:
                self.follow(p.device)
            if p.grad is not None:
                p.grad.masked_fill_(self.pruned, 0)
            if self.grid is not None and self.latent is not None and not self.holds_latent:
                p.copy_(self.latent)
                self.holds_latent = True

    def after_step(self) -> None:
        """Optimizer step post-hook for this parameter: back into S."""
        if self.grid is None or self.dirty():
            with torch.no_grad():
                self.settle()
