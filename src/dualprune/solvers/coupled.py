"""The tensors a solver moves, and their combined projection: per-layer sets and S_G.

A solver holds a per-layer constraint S_i for each layer of its plan and,
optionally, one :class:`~dualprune.constraints.Coupled` set S_G over the tensors
that coupled channels tie together (docs/constraints.md, "Coupled channels").
Every tensor is keyed by its parameter name (``"layer1.0.conv1.weight"``,
``"layer1.0.bn2.weight"``), the key space of masks, storage and export; a plan's
layer ``"conv1"`` constrains the key ``"conv1.weight"``
(:func:`~dualprune.plan.weight_key`). Each key has one auxiliary Z (and U or Λ),
whichever sets it belongs to.

The combined projection of values V (W + U for ADMM, W + Λ/ρ for SLR, W at the
hard prune) is

    M_t   = mask of Π_{S_G} on tied tensor t, every group scored at V
            (scores weighted by ρ_t: s_j = Σ_t ρ_t ||V_t slice||², module below)
    Z_t   = Π_{S_i}(V_t) ⊙ M_t     a tensor with a layer constraint S_i and a tie
    Z_t   = Π_{S_i}(V_t)           a layer constraint only
    Z_t   = V_t ⊙ M_t              a tie only

Both parts are computed on the same V, so the rule does not depend on an order.
The result lies in S_G, and in S_i whenever S_i contains the zeroed tensor
(every sparsity structure does: each is an "at most k groups" set; a quantization
does when 0 is one of its levels, i.e. not for binary levels). It is **not** the
exact projection onto S_i ∩ S_G: e.g. a filter constraint may keep a filter the
coupled set empties, where the exact projection would keep another. For tensors
with one set only it is that set's projection.

ρ weighting: the ADMM/SLR Z-step minimises Σ_t ρ_t/2 ||Z_t − V_t||², so the
coupled scores are taken on √ρ_t·V_t. With one ρ for every tied tensor (a plain
float ``rho``) this is the plain projection Π_{S_G}(V).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dualprune.constraints import Constraint
from dualprune.constraints.coupled import Coupled
from dualprune.masks.masks import Masks
from dualprune.plan import weight_key

__all__ = ["JointSet"]


class JointSet:
    """Per-layer constraints plus an optional coupled set, keyed by parameter name.

    Args:
        constraints: ``{layer name: Constraint}`` as a plan resolves it (may be empty
            when ``coupled`` is given).
        coupled: The coupled-channel set, or None.
    """

    def __init__(self, constraints: Mapping[str, Constraint], coupled: Coupled | None) -> None:
        self.constraints = dict(constraints)  # by layer, as the plan has them
        self.coupled = coupled
        #: The constraint of each key (``"conv1.weight"``); tied-only keys have none.
        self.by_key: dict[str, Constraint] = {weight_key(n): c for n, c in constraints.items()}
        tied = coupled.params if coupled is not None else ()
        self.tied: tuple[str, ...] = tuple(tied)
        self._keys = list(dict.fromkeys([*self.by_key, *tied]))

    @property
    def keys(self) -> list[str]:
        """Every key: constrained layers' weights in plan order, then tied-only parameters."""
        return list(self._keys)

    def tied_masks(
        self,
        V: Mapping[str, Tensor],
        rho: Mapping[str, float] | None = None,
        coupled: Coupled | None = None,
    ) -> dict[str, Tensor]:
        """M_t of Π_{S_G} at V for every tied key (empty without a coupled set).

        Args:
            V: values by key (at least every tied key).
            rho: ρ_t by key, to weight the scores (None: unweighted).
            coupled: another coupled set on the same groups (a scheduled ratio).
        """
        coupled = self.coupled if coupled is None else coupled
        if coupled is None:
            return {}
        weights = [rho[k] for k in self.tied] if rho is not None else []
        scale = len(set(weights)) > 1  # equal ρ: the plain projection, bit for bit
        params = {k: V[k] * math.sqrt(rho[k]) if scale and rho else V[k] for k in self.tied}
        return coupled.masks(params)

    def project(
        self, V: Mapping[str, Tensor], rho: Mapping[str, float] | None = None
    ) -> dict[str, Tensor]:
        """Z = the combined projection of V (module docstring); new tensors, V unchanged."""
        masks = self.tied_masks(V, rho)
        Z = {}
        for k in self._keys:
            c = self.by_key.get(k)
            z = c.project(V[k]) if c is not None else V[k].detach().clone()
            if k in masks:
                z = torch.where(masks[k], z, torch.zeros((), dtype=z.dtype, device=z.device))
            Z[k] = z
        return Z

    def hard_masks(self, model: nn.Module, W: Mapping[str, Tensor]) -> Masks:
        """The fixed masks of W ← Z at the hard prune: per-layer masks ∧ coupled masks.

        Quantizers and their scales come from the per-layer constraints, fitted on
        the per-layer support (:meth:`Masks.from_constraints`), so ``masks.apply``
        leaves the projected weights unchanged.
        """
        per = Masks.from_constraints(model, self.constraints)
        masks = {n: per[n] for n in per.names}
        for k, m in self.tied_masks(W).items():
            masks[k] = masks[k] & m if k in masks else m
        return Masks(masks, per.quantizers, per.scales)

    def residual(self, W: Mapping[str, Tensor], Z: Mapping[str, Tensor]) -> float:
        """||W_G − Z_G||_F / ||W_G||_F over every tied tensor together (0 without ties)."""
        num = sum(float((W[k] - Z[k]).double().pow(2).sum()) for k in self.tied)
        den = sum(float(W[k].double().pow(2).sum()) for k in self.tied)
        if den > 0:
            return math.sqrt(num / den)
        return 0.0 if num == 0 else math.inf
