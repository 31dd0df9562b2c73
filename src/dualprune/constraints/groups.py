"""Coupled channels: channels that residual adds, concatenations and depthwise convs tie together.

A ``filter`` mask on one conv cannot be removed physically on its own when the
conv's output is added to a shortcut, concatenated, or fed to a depthwise conv:
channel ``c`` has to disappear from every tensor it is tied to, or from none
(docs/algorithms.md §3, row "coupled channels"). This module finds those ties
with Torch-Pruning's dependency graph (no tracer of our own) and turns them into
plain data — :class:`ChannelGroup` — plus pure projections on parameter dicts.

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

import copy
import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dualprune.constraints.base import check_multiple_of, kept_count, round_to_multiple
from dualprune.errors import ConstraintError, UnknownNameError, did_you_mean

__all__ = [
    "ROLES",
    "ChannelGroup",
    "TiedSlice",
    "channel_groups",
    "coupled_masks",
    "group_scores",
    "keep_channels",
    "project_coupled",
]

#: Roles a tied slice can have; ``roles=`` arguments pick the scored ones.
ROLES = ("weight", "bias", "norm")
_DEFAULT_ROLES = ("weight",)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


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


def channel_groups(
    model: nn.Module,
    example_input: Any,
    *,
    ignore: str | Sequence[str] = (),
) -> list[ChannelGroup]:
    """Find the groups of coupled output channels of ``model``'s Conv and Linear layers.

    The model is traced on a deep copy (tracing would otherwise switch it to eval
    mode and update BatchNorm statistics). Groups whose channels reach a model
    output (a layer whose result nothing else consumes, such as the classifier)
    are left out: removing them would change the output shape.

    Supported layers inside a group: Conv1d/2d/3d with ``groups`` 1 or depthwise
    (``groups == in_channels == out_channels``, whose input and output channel are
    tied), Linear and BatchNorm. Parameter-free ops (add, cat, flatten, pooling,
    activations) are followed through.

    Args:
        model: The network.
        example_input: An input tensor (or tuple of inputs) for one forward pass.
        ignore: Module names or glob patterns (``fnmatch``) whose output channels
            must not be removed; every group containing them is dropped.

    Returns:
        The groups, ordered by their root in ``model.named_modules()`` order.

    Raises:
        UnknownNameError: An ``ignore`` pattern matches no module.
        ConstraintError: A group contains a layer the masks cannot handle
            (grouped conv, LayerNorm, ...); the message names it.

    Example:
        >>> groups = channel_groups(model, torch.randn(1, 3, 32, 32), ignore=["fc"])
    """
    import torch_pruning as tp

    work = copy.deepcopy(model)
    names = {module: name for name, module in work.named_modules()}
    ignored = _match_ignore(work, ignore)
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(
            work, example_inputs=example_input, verbose=False
        )
    order = {name: i for i, name in enumerate(names.values())}
    groups = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=(*_CONVS, nn.Linear)):
        root = names[group[0].dep.target.module]
        slices: dict[tuple[str, int], tuple[list[int], list[int], str]] = {}
        reaches_output = False
        for item in group:
            node, handler = item.dep.target, item.dep.handler
            is_out = dg.is_out_channel_pruning_fn(handler)
            if is_out and len(node.outputs) == 0:
                reaches_output = True
            for param, dim, role in _tied_params(node.module, names, is_out, root):
                index, channel, _ = slices.setdefault((param, dim), ([], [], role))
                for pos, ch in zip(item.idxs, item.root_idxs, strict=True):
                    index.append(int(pos))
                    channel.append(int(ch))
        if reaches_output:
            continue
        channels = len(set(group[0].root_idxs))
        tied = tuple(
            sorted(
                (
                    TiedSlice(param, dim, *_dedupe(index, channel), role)
                    for (param, dim), (index, channel, role) in slices.items()
                ),
                key=lambda s: (order[s.param.rpartition(".")[0]], s.param.endswith("bias"), s.dim),
            )
        )
        root = _first_producer(tied, root, channels, order)
        groups.append(ChannelGroup(root=root, channels=channels, slices=tied))
    return sorted(groups, key=lambda g: order[g.root])


def _first_producer(
    slices: tuple[TiedSlice, ...], root: str, channels: int, order: Mapping[str, int]
) -> str:
    """The earliest layer whose output channel j is group channel j (reads better than
    the graph's pick, e.g. ``stem`` rather than a shortcut conv; any such layer will do)."""
    identity = tuple(range(channels))
    producers = [
        s.param[: -len(".weight")]
        for s in slices
        if s.dim == 0 and s.role == "weight" and s.index == identity and s.channel == identity
    ]
    return min(producers, key=lambda n: order.get(n, len(order))) if producers else root


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
    roles = _check_roles(roles)
    scores = torch.zeros(group.channels, dtype=torch.float64)
    for s in group.slices:
        if s.role not in roles:
            continue
        w = _get(params, s, group).detach()
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
        groups: One group or several (from :func:`channel_groups`).
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
            w = _get(params, s, group)
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
        >>> groups = channel_groups(model, x)
        >>> new = project_coupled(dict(model.named_parameters()), groups, 0.5)
        >>> model.load_state_dict(new, strict=False)
    """
    masks = coupled_masks(params, groups, ratio, roles=roles, multiple_of=multiple_of)
    out = dict(params)
    for name, mask in masks.items():
        w = params[name].detach()
        out[name] = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
    return out


def _tied_params(
    module: Any, names: Mapping[Any, str], is_out: bool, root: str
) -> list[tuple[str, int, str]]:
    """(param name, dim, role) cut when ``module``'s output (or input) channels go."""
    if isinstance(module, nn.Parameter):
        raise ConstraintError(
            f"coupled channels of '{root}' reach a bare parameter outside any layer; "
            f"only Conv, Linear and BatchNorm are supported; pass ignore=['{root}']"
        )
    if module not in names:
        return []  # the graph's own add / cat / flatten / pooling / activation ops
    name = names[module]
    prefix = f"{name}." if name else ""
    if isinstance(module, (*_CONVS, nn.Linear)):
        depthwise = isinstance(module, _CONVS) and (
            module.groups == module.in_channels == module.out_channels
        )
        if isinstance(module, _CONVS) and module.groups > 1 and not depthwise:
            raise ConstraintError(
                f"coupled channels of '{root}' reach grouped conv '{name}' "
                f"(groups={module.groups}); only groups=1 or depthwise convs are supported; "
                f"pass ignore=['{root}']"
            )
        if not (is_out or depthwise):
            return [(f"{prefix}weight", 1, "weight")]
        bias = [(f"{prefix}bias", 0, "bias")] if module.bias is not None else []
        return [(f"{prefix}weight", 0, "weight"), *bias]
    if isinstance(module, _NORMS):
        return (
            [(f"{prefix}weight", 0, "norm"), (f"{prefix}bias", 0, "norm")] if module.affine else []
        )
    if any(True for _ in module.parameters(recurse=False)):
        raise ConstraintError(
            f"coupled channels of '{root}' reach '{name}' ({type(module).__name__}), "
            f"which the masks cannot cut; only Conv, Linear and BatchNorm are supported; "
            f"pass ignore=['{root}']"
        )
    return []


def _dedupe(index: list[int], channel: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Drop repeated (position, channel) pairs, keeping first-seen order."""
    pairs = list(dict.fromkeys(zip(index, channel, strict=True)))
    return tuple(p for p, _ in pairs), tuple(c for _, c in pairs)


def _match_ignore(model: nn.Module, patterns: str | Sequence[str]) -> list[nn.Module]:
    """Modules whose names match the ``ignore`` globs; a glob matching none raises."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    named = [(n, m) for n, m in model.named_modules() if n]
    hits = {p: [m for n, m in named if fnmatch.fnmatchcase(n, p)] for p in patterns}
    for pattern, found in hits.items():
        if not found:
            close = difflib.get_close_matches(pattern, [n for n, _ in named], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            layers = [n for n, m in named if isinstance(m, (*_CONVS, nn.Linear))]
            raise UnknownNameError(
                f"ignore pattern '{pattern}' matches no module{hint}; layers include: "
                f"{', '.join(layers[:6])}{', ...' if len(layers) > 6 else ''}; fix the glob"
            )
    return [m for found in hits.values() for m in found]


def _check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    for role in roles:
        if role not in ROLES:
            raise UnknownNameError(f"role '{role}' is unknown{did_you_mean(role, ROLES)}")
    return roles


def _get(params: Mapping[str, Tensor], s: TiedSlice, group: ChannelGroup) -> Tensor:
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
