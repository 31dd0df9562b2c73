"""Model analysis on Torch-Pruning's dependency graph: which channels are tied together.

A ``filter`` mask on one conv cannot be removed physically on its own when the
conv's output is added to a shortcut, concatenated, or fed to a depthwise conv:
channel ``c`` has to disappear from every tensor it is tied to, or from none
(docs/algorithms.md §3, row "coupled channels"). :func:`channel_groups` finds
those ties with Torch-Pruning's dependency graph (no tracer of our own) and
returns them as plain data (:class:`~dualprune.constraints.ChannelGroup`, names
and positions, never modules); :func:`coupled_from_model` wraps them into the
constraint :class:`~dualprune.constraints.Coupled`. The math on the groups (scores,
masks, the projection) is pure tensor code in :mod:`dualprune.constraints.groups`.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dualprune.constraints.coupled import Coupled, is_chain
from dualprune.constraints.groups import ChannelGroup, TiedSlice
from dualprune.errors import ConstraintError, UnknownNameError
from dualprune.plan import layer_of, module_of

__all__ = ["channel_groups", "coupled_from_model"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
                key=lambda s: (order[module_of(s.param)], s.param.endswith("bias"), s.dim),
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
        layer_of(s.param)
        for s in slices
        if s.dim == 0 and s.role == "weight" and s.index == identity and s.channel == identity
    ]
    return min(producers, key=lambda n: order.get(n, len(order))) if producers else root


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


def coupled_from_model(
    model: nn.Module,
    example_input: Any,
    ratio: float | Sequence[float],
    *,
    ignore: str | Sequence[str] = (),
    chains: bool = True,
    multiple_of: int = 1,
    roles: str | Sequence[str] = ("weight",),
) -> Coupled:
    """The coupled channels of ``model`` as one constraint: :func:`channel_groups`, wrapped.

    Args:
        model, example_input, ignore: As in :func:`channel_groups`.
        ratio, multiple_of, roles: As in :class:`~dualprune.constraints.Coupled`
            (one ratio for all groups, or one per kept group).
        chains: Keep the plain chains (:func:`~dualprune.constraints.is_chain`);
            False leaves them to the plan's per-layer constraints.

    Raises:
        UnknownNameError, ConstraintError: as :func:`channel_groups` and
            :class:`~dualprune.constraints.Coupled` raise them.

    Example:
        >>> coupled = coupled_from_model(model, torch.randn(2, 3, 32, 32), 0.5,
        ...                              ignore=["fc"], multiple_of=8)
        >>> solver = dp.ADMM(model, plan, coupled=coupled)
    """
    groups = channel_groups(model, example_input, ignore=ignore)
    if not chains:
        groups = [g for g in groups if not is_chain(g)]
    return Coupled(groups, ratio, multiple_of=multiple_of, roles=roles)
