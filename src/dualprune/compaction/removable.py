"""Which coupled channels compaction can remove exactly, and the constants it folds.

Let G be a group of coupled channels (:class:`~dualprune.constraints.groups.ChannelGroup`)
and j one of its channels. Removing j deletes every tied slice: the producers' filters
j with their biases, BatchNorm entries and depthwise filters, and every consumer's
input slice j. The model computes the same function afterwards iff every consumer C
(a Conv or Linear reading the channel at positions p ∈ P_j) loses nothing it needs
(docs/compact.md, "When a channel can go"):

    dead       W_C[:, p] = 0 for every p ∈ P_j                       nothing to do
    constant   x_C[..., p] = v_p for every input x, and C absorbs v:
                 Linear                          b_C ← b_C + Σ_p W_C[:, p]·v_p
                 Conv, v_p the same everywhere,
                   no zero padding               b_C ← b_C + Σ_p v_p·Σ_k W_C[:, p, k]
                 any Conv with v_p = 0           nothing to do

A conv with zero padding that reads a nonzero constant sees fewer constant taps at
the borders than inside, so no bias reproduces it: such a channel stays.

"x_C[..., p] does not depend on the input" is proved, not sampled, by propagating a
dependence tensor D through a copy of the model: every Conv/Linear weight becomes a
positive random number where it is nonzero and 0 where it is zero, biases become 0,
BatchNorm becomes x·[γ ≠ 0], and the floating result of every torch operation is
redrawn as a random number in [1, 2] where it is nonzero (so D stays positive: a
negation or a subtraction cannot make a later ReLU hide a dependence, and random
values never cancel). From a positive input, D is nonzero wherever the real activation
can depend on the input; the exceptions are threshold operations such as
``(x > t).float()`` or ``clamp(max=0)``, which the output check of
:func:`dualprune.compaction.remove.compact` is there to catch. The constants v are read from the
real forward pass of the example input, so they hold for inputs of its spatial size.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from dualprune.constraints.groups import ChannelGroup
from dualprune.plan import module_of

__all__ = ["Probe", "Verdict", "decide", "probe"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SAME = 1e-6  # relative spread under which a channel counts as one constant (pooling rounding)


@dataclass
class Verdict:
    """What compaction does with the channels of one group.

    Attributes:
        group: The group.
        remove: Group channels that are removed.
        why_kept: Channel → one-line reason it stays (every channel that stays).
        folds: Consumer module → Σ over removed channels of W_C[:, p]·v_p (float64,
            one entry per output of C): what the removed channels contributed.
    """

    group: ChannelGroup
    remove: tuple[int, ...]
    why_kept: dict[int, str]
    folds: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Probe:
    """Inputs of every Conv/Linear on one forward pass: real values and dependence D.

    Attributes:
        real: Module name → its input (real model, example input).
        dependence: Module name → D at its input (nonzero: depends on the input).
        runs: Module name → how many times it ran.
        output: The real model's output on the example input.
    """

    real: dict[str, Tensor]
    dependence: dict[str, Tensor]
    runs: dict[str, int]
    output: Any


@torch.no_grad()
def probe(model: nn.Module, example_input: Tensor, seed: int = 0) -> Probe:
    """Run ``model`` (in eval mode) and its dependence copy once, recording layer inputs.

    Args:
        model: The masked model (not modified).
        example_input: A floating-point batch.
        seed: Seed of the positive random values of the dependence copy.

    Returns:
        The inputs of every Conv/Linear module of both passes (see :class:`Probe`).
    """
    real: dict[str, Tensor] = {}
    runs: dict[str, int] = {}
    output = _run(model, example_input, real, runs)
    sur = _dependence_model(model, seed)
    gen = torch.Generator(device=example_input.device).manual_seed(seed + 1)
    x = 1 + torch.rand(example_input.shape, generator=gen, device=example_input.device)
    dependence: dict[str, Tensor] = {}
    with _Dependence(seed + 2):
        _run(sur, x.double(), dependence, {})
    return Probe(real, dependence, runs, output)


def _run(model: nn.Module, x: Tensor, store: dict[str, Tensor], runs: dict[str, int]) -> Any:
    """Forward ``x`` once, storing the first input of every Conv/Linear module by name."""
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (*_CONVS, nn.Linear)):

            def keep(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                runs[name] = runs.get(name, 0) + 1
                store.setdefault(name, args[0].detach().clone())

            handles.append(m.register_forward_pre_hook(keep))
    try:
        return model(x)
    finally:
        for h in handles:
            h.remove()


def _dependence_model(model: nn.Module, seed: int) -> nn.Module:
    """A float64 copy computing D: Conv/Linear weights positive where nonzero, biases 0,
    BatchNorm reduced to x·[γ ≠ 0] (μ = 0, σ = 1, β = 0)."""
    sur = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(seed)
    for m in sur.modules():
        if isinstance(m, (*_CONVS, nn.Linear)):
            w = m.weight
            draw = 1 + torch.rand(w.shape, generator=gen, dtype=w.dtype).to(w.device)
            w.copy_(torch.where(w != 0, draw, torch.zeros((), dtype=w.dtype, device=w.device)))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, _NORMS):
            if m.running_mean is not None and m.running_var is not None:  # both or neither
                m.running_mean.zero_()
                m.running_var.fill_(1 - m.eps)
            if m.weight is not None:
                m.weight.copy_((m.weight != 0).to(m.weight.dtype))
                m.bias.zero_()
    return sur


class _Dependence(TorchFunctionMode):
    """Every floating result r of a torch function becomes U[1, 2] where r ≠ 0, 0 elsewhere.

    Applied to every operation (modules and functional calls alike), this keeps D
    positive, so a negation or a subtraction cannot hide a dependence from a later
    ReLU, and redrawn values never cancel. In-place results are redrawn in place.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, Tensor):
            return self._redraw(out, args)
        if type(out) in (tuple, list):
            return type(out)(self._redraw(t, args) if isinstance(t, Tensor) else t for t in out)
        return out

    def _redraw(self, t: Tensor, args: tuple[Any, ...]) -> Tensor:
        if not t.is_floating_point():
            return t
        draw = (1 + torch.rand(t.shape, generator=self.gen, dtype=t.dtype)).to(t.device)
        r = torch.where(t != 0, draw, torch.zeros((), dtype=t.dtype, device=t.device))
        if any(t is a for a in args):  # an in-place op returned its input
            return t.copy_(r)
        return r


def decide(
    groups: Sequence[ChannelGroup],
    params: Mapping[str, Tensor],
    modules: Mapping[str, nn.Module],
    seen: Probe,
) -> list[Verdict]:
    """For every group, the channels that can go exactly and the constants to fold.

    Args:
        groups: The model's coupled groups.
        params: The masked model's parameters by name.
        modules: Its modules by name.
        seen: :func:`probe` of the masked model.

    Returns:
        One :class:`Verdict` per group, in the order of ``groups``. A group never
        loses every channel: if all could go, its channel 0 stays.
    """
    return [_decide(g, params, modules, seen) for g in groups]


def _decide(
    group: ChannelGroup, params: Mapping[str, Tensor], modules: Mapping[str, nn.Module], seen: Probe
) -> Verdict:
    blocked: dict[int, str] = {}
    terms: list[tuple[str, int, Tensor]] = []  # (consumer, channel, contribution to its outputs)
    via = _input_reasons(group, params)
    for s in (s for s in group.slices if s.dim == 1 and s.role == "weight"):
        name = module_of(s.param)
        w = params[s.param].detach()
        reads = w.transpose(0, 1).reshape(w.shape[1], -1).ne(0).any(1)  # (in,)
        read = [(p, c) for p, c in zip(s.index, s.channel, strict=True) if bool(reads[p])]
        if not read:
            continue
        if seen.runs.get(name, 0) != 1:
            why = f"'{name}' runs {seen.runs.get(name, 0)} times in one forward pass"
            blocked.update((c, why) for _, c in read if c not in blocked)
            continue
        module = modules[name]
        conv = isinstance(module, _CONVS)
        cdim = 1 if conv else -1
        x = seen.real[name].movedim(cdim, 0)
        x = x.reshape(x.shape[0], -1).double()  # (in, everything else)
        dep = seen.dependence[name].movedim(cdim, 0).reshape(x.shape).ne(0).any(1)
        lo, hi = x.min(1).values, x.max(1).values
        for p, c in read:
            if c in blocked:
                continue
            if dep[p]:
                source = f" via '{via[c]}'" if c in via else ""
                blocked[c] = f"read by '{name}' and depends on the input{source}"
            elif lo[p] == 0 and hi[p] == 0:
                continue  # a zero channel: nothing to fold, padding or not
            elif hi[p] - lo[p] > _SAME * max(1.0, float(hi[p].abs())):
                blocked[c] = f"input-independent but not the same at every position at '{name}'"
            elif isinstance(module, _CONVS) and _zero_padded(module):
                blocked[c] = f"its constant output enters zero-padded '{name}' (inexact at borders)"
            else:
                col = w.select(1, p).double()
                col = col.reshape(col.shape[0], -1).sum(1) if conv else col
                terms.append((name, c, col * float((lo[p] + hi[p]) / 2)))
    remove = [c for c in range(group.channels) if c not in blocked]
    if remove and len(remove) == group.channels:
        blocked[remove.pop(0)] = "every channel of its group could go; one stays"
    gone = set(remove)
    folds: dict[str, Tensor] = {}
    for name, c, term in terms:
        if c in gone:
            folds[name] = folds[name] + term if name in folds else term
    return Verdict(group, tuple(remove), blocked, folds)


def _input_reasons(group: ChannelGroup, params: Mapping[str, Tensor]) -> dict[int, str]:
    """Channel → a tied producer whose filter for it is nonzero (the first, in model order)."""
    via: dict[int, str] = {}
    for s in group.slices:
        if s.dim != 0 or s.role != "weight":
            continue
        w = params[s.param].detach()
        rows = w.reshape(w.shape[0], -1).ne(0).any(1).tolist()  # (out,)
        for p, c in zip(s.index, s.channel, strict=True):
            if rows[p] and c not in via:
                via[c] = module_of(s.param)
    return via


def _zero_padded(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> bool:
    """True when the conv pads with zeros (a constant input is not constant at its borders)."""
    if conv.padding_mode != "zeros":
        return False  # reflect / replicate / circular padding of a constant is that constant
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return False
        return any(d * (k - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return any(p > 0 for p in conv.padding)
