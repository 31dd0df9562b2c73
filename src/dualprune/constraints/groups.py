"""Coupled channels: channels that residual adds, concatenations and depthwise convs tie together.

A ``filter`` mask on one conv cannot be removed physically on its own when the
conv's output is added to a shortcut, concatenated, or fed to a depthwise conv:
channel ``c`` has to disappear from every tensor it is tied to, or from none
(docs/algorithms.md §3, row "coupled channels"). This module finds those ties
as plain data — :class:`ChannelGroup` — and projects parameter dicts onto them
(pure tensor math). The groups of a model are found by
:func:`dualprune.graph.channel_groups` on Torch-Pruning's dependency graph.

Let G be one group of C channels, each tied slice t a parameter W_t, a dimension
d_t (0 = output channels, 1 = input channels) and the positions along d_t that
carry each group channel j. With k = max(1, round((1 − ratio)·C)), halves up as
every structure counts (:func:`~dualprune.constraints.base.kept_count`), and
with ``multiple_of`` m > 1 then moved to the nearest of {m, 2m, …, ⌊C/m⌋·m} ∪ {C}
(ties: the larger; :func:`~dualprune.constraints.base.round_to_multiple`),

    S_G = {W : at most k channels j are nonzero, where j is zero when all its
               positions are 0 in every tied slice}
    s_j = Σ_{scored slices t} Σ_{positions p of j in t} ||W_t.select(d_t, p)||²_F

and Π_{S_G} keeps the k channels of largest s_j (ties: the lower index) and zeroes
the others in every tied slice; removing channel j costs exactly s_j, so this is
exact for the scored tensors. ``ratio`` here is a fraction of *channels*, not of
weights (docs/algorithms.md §4).

Which tied tensors are scored: by default only the ``"weight"`` role — the weights
of Conv/Linear layers, both their output slices and their consumers' input
slices. ``"bias"`` (conv/linear biases) and ``"norm"`` (BatchNorm weight and bias)
slices are zeroed with their channel but do not enter s_j unless ``roles`` says
so; ``roles=ROLES`` gives the exact projection over every tied parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dualprune.constraints.base import check_multiple_of, kept_count, round_to_multiple
from dualprune.errors import ConstraintError, UnknownNameError, did_you_mean

__all__ = [
    "ROLES",
    "ChannelGroup",
    "TiedSlice",
    "check_roles",
    "coupled_masks",
    "group_scores",
    "keep_channels",
    "project_coupled",
    "tied_tensor",
]

#: Roles a tied slice can have; ``roles=`` arguments pick the scored ones.
ROLES = ("weight", "bias", "norm")
_DEFAULT_ROLES = ("weight",)


@dataclass(frozen=True)
class TiedSlice:
    """The part of one parameter that carries the channels of a group.

    Attributes:
        param: Fully-qualified parameter name, e.g. ``"layer1.0.conv1.weight"``.
        dim: Dimension of ``param`` that is cut: 0 = output channels (conv/linear
            weights, biases, BatchNorm weight and bias, depthwise weights),
            1 = input channels (weights of the layers that consume the channels).
        index: Positions along ``dim`` that belong to the group.
        channel: Group channel (0..C−1) carried by each position in ``index``; a
            channel may own several positions (e.g. after a flatten into a Linear).
        role: ``"weight"``, ``"bias"`` or ``"norm"`` (BatchNorm affine parameters).
    """

    param: str
    dim: int
    index: tuple[int, ...]
    channel: tuple[int, ...]
    role: str


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together, as plain data (names, never modules).

    Attributes:
        root: Module whose output channels number the group (channel j is its
            output channel j), e.g. ``"layer1.0.conv2"``; the handle to remove the
            group with a dependency graph (``get_pruning_group(root, ...)``).
        channels: Number of channels C in the group.
        slices: Every tied slice, in model order of their layers.
    """

    root: str
    channels: int
    slices: tuple[TiedSlice, ...]

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the parameters this group touches, without repeats."""
        return tuple(dict.fromkeys(s.param for s in self.slices))


def group_scores(
    params: Mapping[str, Tensor], group: ChannelGroup, *, roles: Sequence[str] = _DEFAULT_ROLES
) -> Tensor:
    """Per-channel scores s_j: sums of squares over every scored tied slice.

    Args:
        params: Parameter tensors by fully-qualified name (``dict(model.named_parameters())``).
        group: The group to score.
        roles: Roles that enter the score (see :data:`ROLES`).

    Returns:
        A float64 tensor of shape ``(group.channels,)``.
    """
    roles = check_roles(roles)
    scores = torch.zeros(group.channels, dtype=torch.float64)
    for s in group.slices:
        if s.role not in roles:
            continue
        w = tied_tensor(params, s, group).detach()
        per_pos = w.transpose(0, s.dim).reshape(w.shape[s.dim], -1).double().pow(2).sum(1)
        index = torch.tensor(s.index, dtype=torch.long, device=w.device)
        channel = torch.tensor(s.channel, dtype=torch.long)
        scores.index_add_(0, channel, per_pos[index].cpu())
    return scores


def keep_channels(
    params: Mapping[str, Tensor],
    group: ChannelGroup,
    ratio: float,
    *,
    roles: Sequence[str] = _DEFAULT_ROLES,
    multiple_of: int = 1,
) -> Tensor:
    """Boolean tensor of shape ``(C,)``: True for the k channels of largest score.

    k = max(1, kept_count(ratio, C)); a group never loses every channel, since that
    would cut the network. With ``multiple_of`` m > 1, k then becomes the nearest
    of {m, 2m, …, ⌊C/m⌋·m} ∪ {C} (ties: the larger), a count that CPU kernels
    with channel blocks of m run well; ``ratio`` is still a fraction of channels
    and the realised one, 1 − k/C, may differ from it. Ties keep the lower
    channel index.

    Raises:
        ConstraintError: ``ratio`` outside [0, 1) or ``multiple_of`` not a positive int.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ConstraintError(
            f"coupled channels of '{group.root}': ratio={ratio!r} is not allowed; "
            "use a fraction of channels in [0, 1)"
        )
    m = check_multiple_of(multiple_of, f"coupled channels of '{group.root}'")
    scores = group_scores(params, group, roles=roles)
    k = round_to_multiple(max(1, kept_count(ratio, group.channels)), group.channels, m)
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros(group.channels, dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def coupled_masks(
    params: Mapping[str, Tensor],
    groups: ChannelGroup | Sequence[ChannelGroup],
    ratio: float | Sequence[float],
    *,
    roles: Sequence[str] = _DEFAULT_ROLES,
    multiple_of: int = 1,
) -> dict[str, Tensor]:
    """Masks (True = kept) for every parameter tied by ``groups``.

    All groups are scored on the unprojected ``params`` first, so the result does
    not depend on the order of ``groups``; a parameter tied by several groups (a
    conv's output channels in one, its input channels in another) gets the AND.

    Args:
        params: Parameter tensors by fully-qualified name.
        groups: One group or several (from :func:`dualprune.graph.channel_groups`).
        ratio: Fraction of channels to remove, one for all groups or one per group.
        roles: Roles that enter the scores (see :data:`ROLES`).
        multiple_of: Every group keeps a positive multiple of this many channels,
            or all of them (see :func:`keep_channels`); 1 = no rounding.

    Returns:
        ``{param name: bool tensor of the parameter's shape}`` for tied parameters only.
    """
    groups, ratios = _pair(groups, ratio)
    keeps = [
        keep_channels(params, g, r, roles=roles, multiple_of=multiple_of)
        for g, r in zip(groups, ratios, strict=True)
    ]
    masks: dict[str, Tensor] = {}
    for group, keep in zip(groups, keeps, strict=True):
        for s in group.slices:
            w = tied_tensor(params, s, group)
            if s.param not in masks:
                masks[s.param] = torch.ones(w.shape, dtype=torch.bool, device=w.device)
            drop = [p for p, c in zip(s.index, s.channel, strict=True) if not keep[c]]
            if drop:
                index = torch.tensor(drop, dtype=torch.long, device=w.device)
                masks[s.param].index_fill_(s.dim, index, False)
    return masks


def project_coupled(
    params: Mapping[str, Tensor],
    groups: ChannelGroup | Sequence[ChannelGroup],
    ratio: float | Sequence[float],
    *,
    roles: Sequence[str] = _DEFAULT_ROLES,
    multiple_of: int = 1,
) -> dict[str, Tensor]:
    """Π_S for coupled channels: zero the removed channels in every tied tensor.

    Pure: ``params`` is not modified. The result has every key of ``params``;
    tied parameters are new tensors, the others are passed through as they are.
    Arguments as in :func:`coupled_masks`.

    Example:
        >>> groups = dualprune.graph.channel_groups(model, x)
        >>> new = project_coupled(dict(model.named_parameters()), groups, 0.5)
        >>> model.load_state_dict(new, strict=False)
    """
    masks = coupled_masks(params, groups, ratio, roles=roles, multiple_of=multiple_of)
    out = dict(params)
    for name, mask in masks.items():
        w = params[name].detach()
        out[name] = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
    return out


def check_roles(roles: str | Sequence[str]) -> tuple[str, ...]:
    """``roles`` as a tuple of known roles (see :data:`ROLES`).

    Raises:
        UnknownNameError: a role that is not in :data:`ROLES`.
    """
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    for role in roles:
        if role not in ROLES:
            raise UnknownNameError(f"role '{role}' is unknown{did_you_mean(role, ROLES)}")
    return roles


def tied_tensor(params: Mapping[str, Tensor], s: TiedSlice, group: ChannelGroup) -> Tensor:
    """The tensor of a slice, checked against the slice's positions."""
    if s.param not in params:
        raise ConstraintError(
            f"coupled channels of '{group.root}': params has no '{s.param}'; "
            "pass dict(model.named_parameters()) of the model the groups were built from"
        )
    w = params[s.param]
    if w.dim() <= s.dim or (s.index and max(s.index) >= w.shape[s.dim]):
        raise ConstraintError(
            f"coupled channels of '{group.root}': '{s.param}' has shape {tuple(w.shape)}, "
            f"too small for position {max(s.index, default=0)} on dim {s.dim}; "
            "rebuild the groups for this model"
        )
    return w


def _pair(
    groups: ChannelGroup | Sequence[ChannelGroup], ratio: float | Sequence[float]
) -> tuple[list[ChannelGroup], list[float]]:
    groups = [groups] if isinstance(groups, ChannelGroup) else list(groups)
    if isinstance(ratio, (int, float)):
        return groups, [ratio] * len(groups)
    ratios = list(ratio)
    if len(ratios) != len(groups):
        raise ConstraintError(
            f"coupled channels: {len(ratios)} ratios for {len(groups)} groups; "
            "give one ratio, or one per group"
        )
    return groups, ratios
