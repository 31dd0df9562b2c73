"""Coupled channels as one constraint set S_G over several tensors (docs/constraints.md).

:mod:`~dualprune.constraints.groups` describes the groups of channels that
residual adds, concatenations and depthwise convs tie together (found on a model by
:func:`dualprune.graph.channel_groups`) and projects parameter dicts onto them.
:class:`Coupled` wraps those groups with their ratio into one plain description
that a solver drives like a per-layer constraint: a set and its projection, over
a dict of named tensors instead of one tensor.

Let G_1 … G_n be the groups, C_g the channels of group g and k_g its kept
count (k_g = max(1, round((1 − r_g)·C_g)), moved to a multiple of ``multiple_of``
as :func:`~dualprune.constraints.groups.keep_channels` says). Then

    S_G = {W : in every group g, at most k_g channels have a nonzero entry in a tied slice}
    Π_{S_G}(V) = V with every tied slice of each group's C_g − k_g lowest-score
                 channels set to 0 (scores s_j on the unprojected V, all groups at once)

For one group, Π_{S_G} is the exact Euclidean projection over the tensors of
the scored roles (``roles``, default the Conv/Linear weights); the slices of
the other roles (biases, BatchNorm γ and β) are zeroed with their channel
without entering the choice, so with ``roles=ROLES`` it is exact over every
tied tensor. Several groups are scored independently and their masks ANDed.
That is exact when no scored tensor is cut by two groups. A tensor cut along
both of its dims (a ResNet's downsample conv reads one stage's residual
channels and writes the next one's; a block's ``conv2`` is read-side in a
chain and write-side in a residual group) has its overlap entries counted in
both groups' scores, so there the choice is a heuristic; the result still lies
in S_G.
``ratio`` is a fraction of *channels*, not of weights (docs/algorithms.md §4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dualprune.constraints.base import check_multiple_of, kept_count, round_to_multiple
from dualprune.constraints.groups import (
    ChannelGroup,
    TiedSlice,
    check_roles,
    coupled_masks,
    keep_channels,
    tied_tensor,
)
from dualprune.errors import ConstraintError

__all__ = ["Coupled", "is_chain"]


def is_chain(group: ChannelGroup) -> bool:
    """True for a plain chain: one layer's filters read by exactly one other layer.

    Such a group ties one producer's output channels (dim 0) to one reader's
    input channels (dim 1) and nothing else but biases and BatchNorm, e.g. a
    ResNet block's ``conv1`` → ``conv2``. A per-layer ``Sparsity(r, "channel")``
    on the reader removes the same channels physically (docs/compact.md), so a
    plan can handle chains and leave the rest (residual adds, concatenations
    with several readers, depthwise convs) to :class:`Coupled`.
    """
    weights = [s for s in group.slices if s.role == "weight"]
    return len(weights) == 2 and sorted(s.dim for s in weights) == [0, 1]


class Coupled:
    """Channels tied across layers, removed together: the set S_G (module docstring).

    Args:
        groups: The channel groups (from :func:`dualprune.graph.channel_groups`;
            :func:`dualprune.graph.coupled_from_model` finds and wraps them); at least one.
        ratio: Fraction of *channels* to remove in [0, 1), one for all groups or
            one per group.
        multiple_of: Every group keeps a positive multiple of this many channels,
            or all of them (1 = the plain count).
        roles: Roles whose slices enter the channel scores (see
            :data:`~dualprune.constraints.groups.ROLES`).

    Raises:
        ConstraintError: No group, a ratio outside [0, 1), a ratio count that is
            neither 1 nor the number of groups, a bad ``multiple_of``.
        UnknownNameError: An unknown role.

    Example:
        >>> groups = dualprune.graph.channel_groups(model, torch.randn(2, 3, 32, 32))
        >>> coupled = Coupled(groups, 0.5, multiple_of=8)
        >>> solver = dp.ADMM(model, plan, coupled=coupled)
    """

    def __init__(
        self,
        groups: ChannelGroup | Sequence[ChannelGroup],
        ratio: float | Sequence[float],
        *,
        multiple_of: int = 1,
        roles: str | Sequence[str] = ("weight",),
    ) -> None:
        groups = [groups] if isinstance(groups, ChannelGroup) else list(groups)
        if not groups:
            raise ConstraintError(
                "Coupled needs at least one channel group; the model has no coupled channels "
                "left (check 'ignore' and 'chains'), or drop the coupled constraint"
            )
        for g in groups:
            if not isinstance(g, ChannelGroup):
                raise ConstraintError(f"Coupled: {g!r} is not a ChannelGroup (channel_groups())")
        self.groups: tuple[ChannelGroup, ...] = tuple(groups)
        self.ratio: float | tuple[float, ...] = _ratio(ratio, len(groups))
        self.multiple_of = check_multiple_of(multiple_of, "Coupled")
        self.roles: tuple[str, ...] = check_roles(roles)

    # ---- what it covers -----------------------------------------------------------------

    @property
    def params(self) -> tuple[str, ...]:
        """Every tied parameter name (all roles), in order of first appearance."""
        return tuple(dict.fromkeys(p for g in self.groups for p in g.params))

    @property
    def ratios(self) -> tuple[float, ...]:
        """The ratio of each group."""
        r = self.ratio
        return r if isinstance(r, tuple) else (r,) * len(self.groups)

    def kept(self) -> tuple[int, ...]:
        """k_g, the channels each group keeps (the counts Π_{S_G} realises)."""
        return tuple(
            round_to_multiple(max(1, kept_count(r, g.channels)), g.channels, self.multiple_of)
            for g, r in zip(self.groups, self.ratios, strict=True)
        )

    def check(self, params: Mapping[str, Tensor]) -> None:
        """Raise ConstraintError if a tied slice does not fit ``params`` (names and shapes)."""
        for g in self.groups:
            for s in g.slices:
                tied_tensor(params, s, g)

    # ---- the set and its projection -----------------------------------------------------

    def keep(self, params: Mapping[str, Tensor]) -> list[Tensor]:
        """One bool tensor of shape (C_g,) per group: True for the channels Π_{S_G} keeps."""
        return [
            keep_channels(params, g, r, roles=self.roles, multiple_of=self.multiple_of)
            for g, r in zip(self.groups, self.ratios, strict=True)
        ]

    def masks(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{tied parameter: bool mask of its shape}``: the support Π_{S_G} keeps."""
        return coupled_masks(
            params, self.groups, list(self.ratios), roles=self.roles, multiple_of=self.multiple_of
        )

    def project(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Π_{S_G}: new tensors for the tied parameters only (``params`` is not modified)."""
        out = {}
        for name, keep in self.masks(params).items():
            w = params[name].detach()
            out[name] = torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device))
        return out

    def contains(self, params: Mapping[str, Tensor]) -> bool:
        """True if ``params`` lie in S_G: no group has more than k_g nonzero channels."""
        for g, k in zip(self.groups, self.kept(), strict=True):
            alive = torch.zeros(g.channels, dtype=torch.bool)
            for s in g.slices:
                w = tied_tensor(params, s, g).detach()
                rows = w.transpose(0, s.dim).reshape(w.shape[s.dim], -1) != 0
                nz = rows.any(1)[torch.tensor(s.index, dtype=torch.long, device=w.device)]
                alive[torch.tensor(s.channel, dtype=torch.long)[nz.cpu()]] = True
            if int(alive.sum()) > k:
                return False
        return True

    def with_ratio(self, ratio: float | Sequence[float]) -> Coupled:
        """A copy with another ratio (one, or one per group)."""
        return Coupled(self.groups, ratio, multiple_of=self.multiple_of, roles=self.roles)

    # ---- plain data ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, ints, strings): what solver state dicts store and compare."""
        ratio = list(self.ratio) if isinstance(self.ratio, tuple) else self.ratio
        return {
            "type": "coupled",
            "ratio": ratio,
            "multiple_of": self.multiple_of,
            "roles": list(self.roles),
            "groups": [
                {
                    "root": g.root,
                    "channels": g.channels,
                    "slices": [
                        [s.param, s.dim, list(s.index), list(s.channel), s.role] for s in g.slices
                    ],
                }
                for g in self.groups
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Coupled:
        """The inverse of :meth:`to_dict` (an exact round trip).

        Raises:
            ConstraintError: Not a coupled spec, or a malformed group.
        """
        if not isinstance(d, Mapping) or d.get("type") != "coupled":
            raise ConstraintError(f"{d!r} is not a coupled spec (to_dict() of Coupled)")
        try:
            groups = [
                ChannelGroup(
                    root=str(g["root"]),
                    channels=int(g["channels"]),
                    slices=tuple(
                        TiedSlice(str(p), int(dim), tuple(index), tuple(channel), str(role))
                        for p, dim, index, channel, role in g["slices"]
                    ),
                )
                for g in d["groups"]
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise ConstraintError(f"coupled spec has a malformed group ({err})") from None
        ratio = d["ratio"]
        return cls(
            groups,
            tuple(ratio) if isinstance(ratio, list) else ratio,
            multiple_of=d.get("multiple_of", 1),
            roles=d.get("roles", ("weight",)),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Coupled) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        extra = f", multiple_of={self.multiple_of}" if self.multiple_of != 1 else ""
        extra += f", roles={list(self.roles)!r}" if self.roles != ("weight",) else ""
        n, channels = len(self.groups), sum(g.channels for g in self.groups)
        groups = f"{n} group" + ("s" if n != 1 else "")
        return f"Coupled({groups}, {channels} channels, ratio={self.ratio!r}{extra})"


def _ratio(ratio: object, n: int) -> float | tuple[float, ...]:
    """One ratio in [0, 1), or a tuple of n of them."""

    def one(r: object, where: str) -> float:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ConstraintError(
                f"Coupled: {where}={r!r} is not allowed; use a fraction of channels in [0, 1)"
            )
        return float(r)

    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        return one(ratio, "ratio")
    if not isinstance(ratio, Sequence) or isinstance(ratio, str):
        raise ConstraintError(f"Coupled: ratio={ratio!r} is not a float or a list of floats")
    if len(ratio) != n:
        raise ConstraintError(
            f"Coupled: {len(ratio)} ratios for {n} groups; give one ratio, or one per group"
        )
    return tuple(one(r, f"ratio[{i}]") for i, r in enumerate(ratio))
