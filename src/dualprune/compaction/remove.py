"""Physical compaction: remove pruned filters and channels so the model really shrinks.

:func:`compact` takes a (masked) model and returns a deep copy whose Conv, Linear and
BatchNorm layers have fewer channels, computing the same function as the masked model
(eval mode): structured zeros become a smaller dense model, with fewer parameters and
fewer MACs on any hardware. Which channels can go, and why some pruned ones stay, is
decided by :mod:`dualprune.compaction.removable`; the channels are cut with Torch-Pruning's
dependency graph, so residual adds, concatenations, depthwise convs, BatchNorm and
flatten-into-Linear keep matching shapes. Zeros that do not fill whole channels
(irregular, column, block, N:M) stay in place and are reported: in the
:class:`CompactionResult` and with a :class:`CompactionWarning`. See docs/compact.md.

>>> small = compact(model, torch.randn(2, 3, 32, 32), masks)
>>> print(CompactionResult.from_dict(small.dualprune_compaction))
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from dualprune.compaction.removable import Verdict, decide, probe
from dualprune.compaction.result import (
    RESULT_ATTRIBUTE,
    CompactionResult,
    LayerCompaction,
    drop_positions,
    leftover_reasons,
)
from dualprune.errors import ConfigError, PlanError
from dualprune.graph import channel_groups
from dualprune.masks.enforce import EnforcedParam
from dualprune.masks.masks import Masks
from dualprune.plan import layer_weight, module_of, prunable_layers, weight_key
from dualprune.size.metrics import dense_macs

__all__ = [
    "CompactionResult",
    "CompactionWarning",
    "LayerCompaction",
    "compact",
    "compaction_result",
]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TOLERANCE = 1e-4  # max |compact − masked| allowed, relative to max(1, max |masked output|)
_NAMED = 6  # layers named in a warning


class CompactionWarning(UserWarning):
    """Pruned entries that compaction could not remove stay in place as zeros.

    Emitted by :func:`compact`; the message names the layers, and
    :attr:`CompactionResult.layers` says why for each of them.
    """


def compact(
    model: nn.Module,
    example_input: Tensor,
    masks: Masks | Mapping[str, Tensor] | None = None,
    *,
    ignore: str | Sequence[str] = (),
) -> nn.Module:
    """A physically smaller copy of ``model`` computing what the masked model computes.

    The copy gets ``masks`` applied (W ← Π_S(W), :meth:`Masks.apply`), then every
    coupled channel that is exactly removable is cut out (docs/compact.md): a channel
    whose every reader has zero weights for it goes; a channel whose value does not
    depend on the input (its filters are zero, so it carries a bias / BatchNorm β
    constant) goes when that constant can be folded exactly into the readers' biases
    (Linear layers, convs without zero padding) or is 0. Everything else stays,
    including pruned entries that do not fill whole channels.

    The result is checked against the masked model on ``example_input`` (max abs
    difference ≤ 1e-4 · max(1, max |output|)). It carries ``dualprune_compaction``,
    :meth:`CompactionResult.as_dict` of what was done (shapes, removed indices, folds),
    and has ``model``'s training mode. ``model`` and ``masks`` are not modified.

    Args:
        model: The network, masked or not (hooks of attached masks are fine).
        example_input: A floating-point batch for one forward pass (batch 2 is enough).
        masks: Masks to apply first, as a :class:`Masks` or ``{param name: bool
            tensor}``. ``None``: the weights are used as they are, and their zero
            entries count as pruned in the plan.
        ignore: Module names or globs whose output channels must not be removed.

    Returns:
        The compacted model.

    Raises:
        ConfigError: ``example_input`` is not a floating tensor or does not run
            through ``model``; ``masks`` name a parameter ``model`` lacks or have the
            wrong shape.
        UnknownNameError: An ``ignore`` pattern matches no module.
        ConstraintError: Coupled channels reach a layer compaction cannot cut
            (a grouped conv, LayerNorm...); the message names it and the ``ignore`` fix.
        PlanError: The compacted model's output differs from the masked model's
            (an operation that ties channels in a way the dependency graph misses).

    Warns:
        CompactionWarning: Pruned entries stay in place in some layers (named).

    Example:
        >>> masks = dp.Masks.from_constraints(model, plan.resolve(model))
        >>> small = dp.compact(model, torch.randn(2, 3, 32, 32), masks)
    """
    small, plan = _compact(model, example_input, masks, ignore)
    stays = [layer for layer in plan.layers if layer.pruned_kept]
    if stays:
        named = ", ".join(
            f"{s.name} ({s.pruned_kept:,} of {s.pruned:,} pruned entries)" for s in stays[:_NAMED]
        )
        more = f" and {len(stays) - _NAMED} more" if len(stays) > _NAMED else ""
        warnings.warn(
            f"compact: zeros stay in place in {len(stays)} layer(s) of "
            f"{type(model).__name__}: {named}{more}; compaction_result() says why",
            CompactionWarning,
            stacklevel=2,
        )
    return small


def compaction_result(
    model: nn.Module,
    example_input: Tensor,
    masks: Masks | Mapping[str, Tensor] | None = None,
    *,
    ignore: str | Sequence[str] = (),
) -> CompactionResult:
    """What :func:`compact` removes and keeps, per layer and why (same arguments).

    Runs the compaction on a copy (that is how shapes and MACs after are known) and
    returns its plan without warning. ``print(plan)`` shows the table.

    Raises:
        As :func:`compact`.
    """
    return _compact(model, example_input, masks, ignore)[1]


def _compact(
    model: nn.Module,
    x: Tensor,
    masks: Masks | Mapping[str, Tensor] | None,
    ignore: str | Sequence[str],
) -> tuple[nn.Module, CompactionResult]:
    """Copy and mask, find the groups, decide, fold, cut, verify, account."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compact needs an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"example_input is {got}; pass a floating-point batch such as the data")
    masks = _as_masks(masks)
    modes = {name: m.training for name, m in model.named_modules()}
    work = copy.deepcopy(model)
    _drop_enforcement(work)
    work.eval()
    if masks is not None:
        masks.apply(work)  # W ← Π_S(W): the masked model is the reference
    _check_runs(work, x)
    pruned = _pruned_entries(work, masks)
    before = {k: tuple(v.shape) for k, v in work.state_dict().items()}
    params_before = sum(p.numel() for p in work.parameters())
    macs_before = dense_macs(work, x)

    groups = channel_groups(work, x, ignore=ignore)
    modules = dict(work.named_modules())
    seen = probe(work, x)
    verdicts = decide(groups, dict(work.named_parameters()), modules, seen)
    with torch.enable_grad():  # the graph is traced through autograd
        dg = tp.DependencyGraph().build_dependency(work, example_inputs=x, verbose=False)
    folds = _fold(verdicts, modules, dg)
    for v in verdicts:
        if v.remove:
            root = modules[v.group.root]
            fn = dg.get_pruner_of_module(root).prune_out_channels
            dg.get_pruning_group(root, fn, list(v.remove)).prune()
    _verify(work, x, seen.output, type(model).__name__)

    removed = _removed_positions(verdicts)
    macs_after = dense_macs(work, x)
    plan = CompactionResult(
        model=type(model).__name__,
        layers=_plan(work, (macs_before, macs_after), pruned, before, removed, verdicts, folds),
        params_before=params_before,
        params_after=sum(p.numel() for p in work.parameters()),
        macs_before=sum(macs_before.values()),
        macs_after=sum(macs_after.values()),
        removed=removed,
        shapes={
            k: tuple(v.shape)
            for k, v in work.state_dict().items()
            if before.get(k) != tuple(v.shape)
        },
    )
    # a plain dict: nn.Module.__setattr__ is typed for tensors and modules only
    setattr(work, RESULT_ATTRIBUTE, plan.as_dict())
    for name, m in work.named_modules():
        m.train(modes.get(name, model.training))
    return work, plan


def _as_masks(masks: object) -> Masks | None:
    if masks is None or isinstance(masks, Masks):
        return masks
    if isinstance(masks, Mapping):
        return Masks(masks)
    raise ConfigError(
        f"masks must be a Masks or a mapping of parameter names to bool tensors, "
        f"got {type(masks).__name__}"
    )


def _drop_enforcement(model: nn.Module) -> None:
    """Remove the copied hooks of attached masks (they would project the copy's old shapes)."""
    for m in model.modules():
        for key, hook in list(m._forward_pre_hooks.items()):
            if isinstance(getattr(hook, "__self__", None), EnforcedParam):
                del m._forward_pre_hooks[key]


@torch.no_grad()
def _check_runs(model: nn.Module, x: Tensor) -> None:
    try:
        model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"example_input of shape {tuple(x.shape)} does not run through "
            f"{type(model).__name__} ({first}); pass a batch shaped like its training data"
        ) from None


def _pruned_entries(model: nn.Module, masks: Masks | None) -> dict[str, Tensor]:
    """Param name → bool tensor of pruned entries: ~M for masked params, else W == 0 (weights)."""
    if masks is not None:
        return {name: ~masks[name].cpu() for name in masks.names}
    return {
        weight_key(name): layer_weight(m).detach().eq(0).cpu()
        for name, m in prunable_layers(model).items()
    }


@torch.no_grad()
def _fold(verdicts: list[Verdict], modules: Mapping[str, nn.Module], dg: Any) -> dict[str, str]:
    """Put back δ_C = Σ W_C[:, p]·v_p, what the removed channels gave consumer C.

    Removing them turns C's output y into y − δ. Into C's bias if it has one
    (b ← b + δ); else into the running mean of a BatchNorm that is C's only reader
    (μ ← μ − δ, so (y − δ) − (μ − δ) = y − μ); else into a new bias. Returns where
    each fold went, by consumer.
    """
    total: dict[str, Tensor] = {}
    for v in verdicts:
        for name, delta in v.folds.items():
            total[name] = total[name] + delta if name in total else delta
    where: dict[str, str] = {}
    names = {m: n for n, m in modules.items()}
    for name, delta in total.items():
        m = modules[name]
        w, bias = layer_weight(m), getattr(m, "bias", None)
        if isinstance(bias, Tensor):
            bias.add_(delta.to(device=w.device, dtype=bias.dtype))
            where[name] = "bias"
            continue
        reader = _only_norm_reader(m, dg)
        if reader is not None:
            norm, mean = reader
            mean.sub_(delta.to(device=w.device, dtype=mean.dtype))
            where[name] = f"running_mean of '{names[norm]}'"
        else:
            m.bias = nn.Parameter(delta.to(device=w.device, dtype=w.dtype))
            where[name] = "new bias"
    return where


def _only_norm_reader(module: nn.Module, dg: Any) -> tuple[nn.Module, Tensor] | None:
    """The BatchNorm (with running statistics) that alone reads ``module``'s output, and its
    running mean, if any."""
    node = dg.module2node.get(module)
    if node is None or len(node.outputs) != 1:
        return None
    reader = node.outputs[0].module
    if isinstance(reader, _NORMS) and reader.running_mean is not None:
        return reader, reader.running_mean
    return None


def _verify(model: nn.Module, x: Tensor, reference: Any, name: str) -> None:
    with torch.no_grad():
        got = tree_leaves(model(x))
    want = tree_leaves(reference)
    worst, scale = 0.0, 1.0
    for a, b in zip(got, want, strict=True):
        if isinstance(a, Tensor):
            if a.shape != b.shape:
                worst = float("inf")
                break
            if a.numel():
                worst = max(worst, float((a.double() - b.double()).abs().max()))
                scale = max(scale, float(b.abs().max()))
    if worst > _TOLERANCE * scale:
        raise PlanError(
            f"compaction changed the output of {name} by {worst:.3g} on example_input; an "
            "operation ties channels in a way the dependency graph does not follow; pass "
            "ignore=[...] with the layers around it"
        )


def _removed_positions(verdicts: list[Verdict]) -> dict[str, dict[int, tuple[int, ...]]]:
    """Param name → dim → removed positions along it (of the uncompacted shapes)."""
    out: dict[str, dict[int, set[int]]] = {}
    for v in verdicts:
        gone = set(v.remove)
        for s in v.group.slices:
            hit = {p for p, c in zip(s.index, s.channel, strict=True) if c in gone}
            if hit:
                out.setdefault(s.param, {}).setdefault(s.dim, set()).update(hit)
    return {p: {d: tuple(sorted(ix)) for d, ix in sorted(dims.items())} for p, dims in out.items()}


def _plan(
    small: nn.Module,
    macs: tuple[Mapping[str, int], Mapping[str, int]],
    pruned: Mapping[str, Tensor],
    before: Mapping[str, tuple[int, ...]],
    removed: Mapping[str, Mapping[int, tuple[int, ...]]],
    verdicts: list[Verdict],
    folds: Mapping[str, str],
) -> tuple[LayerCompaction, ...]:
    """One row per Conv/Linear layer and per other module owning a masked parameter."""
    cause: dict[tuple[str, int, int], str] = {}
    for v in verdicts:
        for s in v.group.slices:
            for p, c in zip(s.index, s.channel, strict=True):
                if c in v.why_kept:
                    cause[(s.param, s.dim, p)] = v.why_kept[c]
    modules = dict(small.named_modules())
    macs_before, macs_after = macs
    names = list(prunable_layers(small))
    names += [n for n in dict.fromkeys(module_of(p) for p in pruned) if n not in names]
    rows = []
    for name in names:
        m = modules[name]
        prefix = f"{name}." if name else ""
        own = [p for p in pruned if module_of(p) == name]
        total = kept = 0
        reasons: list[str] = []
        depthwise = getattr(m, "groups", 1) > 1
        for param in own:
            mask = pruned[param]
            left = drop_positions(mask, removed.get(param, {}))
            total, kept = total + int(mask.sum()), kept + int(left.sum())
            reasons += leftover_reasons(param, mask, removed.get(param, {}), cause, depthwise)
        weight = f"{prefix}weight"
        rows.append(
            LayerCompaction(
                name=name,
                kind=type(m).__name__,
                shape_before=before.get(weight, ()),
                shape_after=tuple(m.weight.shape) if hasattr(m, "weight") else (),
                pruned=total,
                pruned_removed=total - kept,
                macs_before=macs_before.get(name, 0),
                macs_after=macs_after.get(name, 0),
                fold=folds.get(name, ""),
                reasons=tuple(reasons),
            )
        )
    return tuple(rows)
