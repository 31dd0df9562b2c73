"""Fault-aware retraining: one chip's stuck cells, and the weights they force.

A stuck cell (docs/devices.md, §6 of docs/algorithms.md) holds g_min or g_max whatever
is written to it, for the chip's whole life. :func:`fault_masks` gives the stuck
weight cells of the chip that :func:`~dualprune.hardware.chips.program_chip` programs
with a seed. Two ways to retrain around them, so the network learns the faults of
that chip:

- :func:`read_faults` (exact): every forward uses, for each weight with a stuck cell,
  what the chip reads for it (:func:`fault_levels`: its free cells hold the current
  weight's digits), with a straight-through gradient; the weight keeps training.
- :func:`pin_faults` (conservative): such a weight is frozen at the value it reads when
  its free cells hold 0 (:func:`pinned_values`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dualprune.errors import ConfigError, ConstraintError
from dualprune.hardware.chips import (
    LayerPatterns,
    MaskSource,
    built_cells,
    chip_layers,
    mask_tables,
)
from dualprune.hardware.conductance import (
    cell_shape,
    conductances_to_weights,
    grid_levels,
    level_offset,
    to_levels,
    weights_to_conductances,
)
from dualprune.hardware.devices import DeviceNoise, Faults, cell_generator, sample_faults
from dualprune.hardware.spec import CrossbarSpec
from dualprune.plan import layer_weight, module_of, weight_key

__all__ = [
    "FaultReads",
    "PinnedFaults",
    "fault_levels",
    "fault_masks",
    "pin_faults",
    "pinned_values",
    "read_faults",
]


def fault_masks(
    model: nn.Module,
    spec: CrossbarSpec,
    noise: DeviceNoise,
    seed: int = 0,
    layers: LayerPatterns = None,
    *,
    masks: MaskSource = None,
    built_only: bool = True,
) -> dict[str, Faults]:
    """Stuck weight cells of the chip :func:`program_chip` programs with ``seed``.

    Returns {parameter name: Faults(stuck_min, stuck_max)}, bool of shape
    (S, P, *W.shape). Stuck reference cells (offset mapping) are not included. With
    ``built_only`` (the default, as in ``program_chip``) only cells of built crossbar
    tiles can be stuck (``built_cells(model, spec, masks)``: pass the ``masks`` the
    chip is programmed with); the others are drawn and dropped, so a built cell's
    fault does not depend on what else is built.

    Raises:
        ConfigError, ConstraintError, PlanError: as :func:`program_chip`.
    """
    built = built_cells(model, spec, masks, layers) if built_only else {}
    out = {}
    for name, module in chip_layers(model, layers).items():
        key = weight_key(name)
        shape = cell_shape(spec, tuple(layer_weight(module).shape))
        f = sample_faults(shape, noise, cell_generator(seed, key, "faults"))
        if key in built:
            f = Faults(f.stuck_min & built[key], f.stuck_max & built[key])
        out[key] = f
    return out


def fault_levels(q: Tensor, faults: Faults, spec: CrossbarSpec) -> Tensor:
    """The level a chip with these stuck weight cells reads for each integer level q.

    Every free cell holds its digit of q (docs/devices.md), a cell stuck at g_min
    reads digit 0, one stuck at g_max digit top = 2^c − 1:

        differential   read = Σ_s 2^{cs} (ℓ⁺_s − ℓ⁻_s),  ℓ^±_s = ⌊q^± / 2^{cs}⌋ mod 2^c
        offset         read = Σ_s 2^{cs} ℓ_s − o,          ℓ_s = ⌊(q + o) / 2^{cs}⌋ mod 2^c

    (stuck digits replaced). Offset: the reference cell is taken healthy (it reads
    exactly o). With no stuck cell, read = q.

    Args:
        q: Integer levels (any shape), e.g. from ``grid_levels``.
        faults: Bool (S, P, *q.shape).

    Returns:
        int64 levels of q's shape.

    Raises:
        ConstraintError: faults whose shape is not (S, P, *q.shape) for this spec.
    """
    expected = cell_shape(spec, tuple(q.shape))
    if {tuple(faults.stuck_min.shape), tuple(faults.stuck_max.shape)} != {expected}:
        raise ConstraintError(
            f"faults of shape {tuple(faults.stuck_min.shape)} do not fit levels of shape "
            f"{tuple(q.shape)}: expected {expected}"
        )
    c, top, o = spec.cell_bits, 2**spec.cell_bits - 1, level_offset(spec)
    q = q.to(torch.int64)
    lo, hi = faults.stuck_min.to(q.device), faults.stuck_max.to(q.device)
    differential = spec.mapping == "differential"
    devices = (q.clamp(min=0), (-q).clamp(min=0)) if differential else (q + o,)  # (q⁺, q⁻)/(u,)
    read = torch.full_like(q, -o)
    for p, u in enumerate(devices):
        sign = 1 - 2 * p
        for s in range(spec.slices):
            digit = ((u >> (c * s)) & top).masked_fill(lo[s, p], 0).masked_fill(hi[s, p], top)
            read += sign * (digit << (c * s))
    return read


def pinned_values(
    faults: Faults, spec: CrossbarSpec, alpha: Tensor | float, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """(pinned, value) of one weight tensor for fault-aware retraining (docs/devices.md).

    A weight with any stuck cell is frozen at the value the chip reads when its free
    cells hold the mapping of q = 0 (differential: g_min; offset: the offset's digits,
    healthy reference) and its stuck cells their stuck state, i.e.
    value = α·Σ_s 2^{cs}(ℓ⁺_s − ℓ⁻_s) with ℓ = 2^c − 1 at stuck-at-g_max cells, 0 elsewhere
    (differential). ``pinned``: bool of W's shape; ``value``: W's shape in ``dtype``.

    Raises:
        ConstraintError: faults whose shape is not (S, P, *W.shape) for this spec.
    """
    shape = tuple(faults.stuck_min.shape[2:])
    if tuple(faults.stuck_min.shape) != cell_shape(spec, shape) or not shape:
        raise ConstraintError(
            f"faults of shape {tuple(faults.stuck_min.shape)} do not fit the spec: "
            f"expected (slices={spec.slices}, devices, *weight shape)"
        )
    a = torch.as_tensor(alpha).detach().to(device="cpu", dtype=dtype)
    cond = weights_to_conductances(torch.zeros(shape, dtype=torch.int64), spec, alpha=a)
    lo, hi = faults.stuck_min.cpu(), faults.stuck_max.cpu()
    stuck = cond.G.masked_fill(lo, spec.g_min).masked_fill(hi, spec.g_max)
    pinned = (lo | hi).flatten(0, 1).any(0)
    return pinned, conductances_to_weights(replace(cond, G=stuck, dtype=dtype))


@dataclass
class _Pin:
    param: Tensor
    pinned: Tensor
    value: Tensor
    version: int = -1

    def impose(self) -> None:
        p = self.param
        if self.pinned.device != p.device:
            self.pinned, self.value = self.pinned.to(p.device), self.value.to(p.device)
        with torch.no_grad():
            p.copy_(torch.where(self.pinned, self.value, p))
        self.version = p._version

    def pre_forward(self, module: nn.Module, args: Any) -> None:
        if self.param._version != self.version:
            self.impose()

    def post_grad(self, p: Tensor) -> None:
        if p.grad is not None:
            p.grad.masked_fill_(self.pinned.to(p.grad.device), 0)


class PinnedFaults:
    """Hooks that keep the weights forced by one chip's stuck cells at their values.

    The mechanism of :meth:`dualprune.Masks.attach`: the gradient of a pinned weight
    is zeroed after backward, an optimizer step post-hook (any ``torch.optim``
    optimizer) re-imposes the value after every step (whatever momentum or weight
    decay did), and a forward pre-hook re-imposes it if the weight was written since.
    Attach Masks first when both are used: the pins then win at every hook.
    """

    def __init__(self, model: nn.Module, pins: dict[str, tuple[Tensor, Tensor]]) -> None:
        params = dict(model.named_parameters())
        self._pins: dict[str, _Pin] = {}
        self._handles: list[Any] = []
        for name, (pinned, value) in pins.items():
            p = params[name]
            pin = _Pin(p, pinned.to(p.device), value.to(device=p.device, dtype=p.dtype))
            pin.impose()
            module = model.get_submodule(module_of(name))
            self._handles.append(module.register_forward_pre_hook(pin.pre_forward))
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(pin.post_grad))
            self._pins[name] = pin
        self._by_id = {id(pin.param): pin for pin in self._pins.values()}
        self._handles.append(register_optimizer_step_post_hook(self._after_step))

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                pin = self._by_id.get(id(p))
                if pin is not None and pin.param is p:
                    pin.impose()

    @property
    def counts(self) -> dict[str, int]:
        """Pinned weights per parameter name."""
        return {n: int(pin.pinned.sum()) for n, pin in self._pins.items()}

    def values(self, name: str) -> tuple[Tensor, Tensor]:
        """(pinned, value) of parameter ``name``."""
        pin = self._pins[name]
        return pin.pinned, pin.value

    def detach(self) -> None:
        """Remove every hook (the weights keep their pinned values); idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __repr__(self) -> str:
        total = sum(self.counts.values())
        return f"PinnedFaults({total} weights pinned in {len(self._pins)} parameters)"


def pin_faults(
    model: nn.Module,
    faults: Mapping[str, Faults],
    spec: CrossbarSpec,
    scales: Mapping[str, Tensor] | None = None,
) -> PinnedFaults:
    """Freeze, in place, the weights one chip's stuck cells force (:func:`pinned_values`).

    α per parameter from ``scales`` (e.g. ``masks.scales``: retraining keeps it fixed),
    else fitted now by ``Quantization(bits=b)`` on the current weight. Returns the
    hooks; call ``detach()`` when retraining ends.

    Raises:
        ConfigError: a faults key that names no parameter of ``model``.
        ConstraintError: faults of the wrong shape for the spec or the weight.
    """
    params = _checked(model, faults, spec)
    pins = {}
    for name, f in faults.items():
        w = params[name].detach()
        alpha = (scales or {}).get(name)
        if alpha is None:
            alpha = to_levels(w, spec.weight_bits)[1]
        pins[name] = pinned_values(f, spec, alpha, dtype=w.dtype)
    return PinnedFaults(model, pins)


def _checked(model: nn.Module, faults: Mapping[str, Faults], spec: CrossbarSpec) -> dict[str, Any]:
    """The parameters the faults name, each checked against the faults' shape."""
    params = dict(model.named_parameters())
    for name, f in faults.items():
        if name not in params:
            raise ConfigError(f"faults '{name}' names no parameter of {type(model).__name__}")
        shape = tuple(params[name].shape)
        if tuple(f.stuck_min.shape) != cell_shape(spec, shape):
            raise ConstraintError(
                f"faults of '{name}' have shape {tuple(f.stuck_min.shape)}, the weight "
                f"{shape} needs {cell_shape(spec, shape)}"
            )
    return params


@dataclass
class _FaultRead:
    """One layer's stuck cells, restricted to the weights that have one (flat ``idx``)."""

    spec: CrossbarSpec
    faulty: Tensor  # bool, W's shape
    idx: Tensor  # flat indices of the faulty weights
    sub: Faults  # (S, P, len(idx))
    alpha: Tensor | None
    keep: Tensor | None

    def effective(self, w: Tensor) -> Tensor:
        """W where healthy, the chip's read α·read(q) where faulty (straight-through)."""
        if self.faulty.device != w.device:
            self.faulty, self.idx = self.faulty.to(w.device), self.idx.to(w.device)
            self.sub = Faults(*(t.to(w.device) for t in self.sub))
            self.keep = None if self.keep is None else self.keep.to(w.device)
        with torch.no_grad():
            q, a = grid_levels(w.detach(), self.spec, alpha=self.alpha, mask=self.keep)
            level = fault_levels(q.reshape(-1)[self.idx], self.sub, self.spec)
            value = w.detach().clone()
            value.view(-1)[self.idx] = level.to(w.dtype) * a.expand(w.shape).reshape(-1)[self.idx]
        return torch.where(self.faulty, value + (w - w.detach()), w)


class FaultReads:
    """Hooks that make every forward read the faulty weights as one chip reads them.

    Per layer with a stuck weight cell, a forward pre-hook puts in place of W

        W_eff = W,  and  α·read(q) + (W − sg(W))  where W has a stuck cell

    (q, α of W on the chip's grid, read from :func:`fault_levels`, sg = stop-gradient):
    the forward value is exactly what the chip reads, the gradient reaches W unchanged.
    A forward hook (registered first, ``prepend=True``) puts the parameter back, so
    other hooks that swap the weight the same way and are registered later are undone
    before it. The parameter itself is never written.
    """

    def __init__(self, model: nn.Module, reads: dict[str, _FaultRead]) -> None:
        self._reads = reads
        self._saved: dict[int, tuple[nn.Module, Tensor]] = {}
        self._handles: list[Any] = []
        for name, fr in reads.items():
            if fr.idx.numel() == 0:
                continue
            module = model.get_submodule(module_of(name))
            self._handles.append(module.register_forward_pre_hook(self._swapper(fr)))
            self._handles.append(module.register_forward_hook(self._restore, prepend=True))

    def _swapper(self, fr: _FaultRead) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self._restore(module, args, None)  # a forward that raised left its swap behind
            w = module._parameters["weight"]
            if w is None:
                return
            self._saved[id(module)] = (module, w)
            module._parameters["weight"] = fr.effective(w)  # type: ignore[assignment]

        return hook

    def _restore(self, module: nn.Module, args: Any, output: Any) -> None:
        saved = self._saved.pop(id(module), None)
        if saved is not None:
            module._parameters["weight"] = saved[1]  # type: ignore[assignment]

    @property
    def counts(self) -> dict[str, int]:
        """Weights with a stuck cell, per parameter name."""
        return {n: int(fr.idx.numel()) for n, fr in self._reads.items()}

    def detach(self) -> None:
        """Remove every hook and put back any weight still swapped; idempotent."""
        for module, w in self._saved.values():
            module._parameters["weight"] = w  # type: ignore[assignment]
        self._saved = {}
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __repr__(self) -> str:
        total = sum(self.counts.values())
        return f"FaultReads({total} faulty weights read as the chip reads them)"


def read_faults(
    model: nn.Module,
    faults: Mapping[str, Faults],
    spec: CrossbarSpec,
    scales: Mapping[str, Tensor] | None = None,
    masks: MaskSource = None,
) -> FaultReads:
    """Make every forward of ``model`` read its faulty weights as one chip does.

    A weight with a stuck cell is read, at every forward, as α·read(q) with q, α the
    levels :func:`~dualprune.hardware.chips.program_chip` gives the current W
    (``grid_levels`` with ``scales[name]`` / the Masks' α, else α fitted by
    ``Quantization(bits=b)`` on the kept weights) and read from :func:`fault_levels`;
    the gradient is straight-through, so the weight keeps training and the network
    learns what the chip will read. Weights without a stuck cell are left as they are:
    attach :class:`~dualprune.Masks` first so that they are on the grid, and the model
    computes exactly what ``program_chip(model, spec, noise with only these stuck
    cells, masks=..., scales=..., seed=...)`` computes.

    Offset mapping: the same, with the reference cells taken healthy; a stuck
    reference cell (which ``program_chip`` also draws) shifts a whole row of one
    crossbar and is not modeled here.

    Args:
        faults: {parameter name: Faults} (from :func:`fault_masks`).
        scales: α by parameter name (e.g. ``masks.scales``, fixed while retraining).
        masks: The supports the chip is programmed with (pruned weights are q = 0;
            a :class:`~dualprune.Masks` also gives its scales).

    Returns:
        The hooks; call ``detach()`` when retraining ends.

    Raises:
        ConfigError: a faults, mask or scales key that names no parameter of ``model``.
        ConstraintError: faults of the wrong shape for the spec or the weight.
    """
    _checked(model, faults, spec)
    keep, alphas = mask_tables(model, masks, scales)
    reads = {}
    for name, f in faults.items():
        lo, hi = f.stuck_min.cpu(), f.stuck_max.cpu()
        faulty = (lo | hi).flatten(0, 1).any(0)  # W's shape
        idx = faulty.flatten().nonzero().squeeze(1)
        alpha, mask = alphas.get(name), keep.get(name)
        reads[name] = _FaultRead(
            spec,
            faulty,
            idx,
            Faults(lo.flatten(2)[:, :, idx], hi.flatten(2)[:, :, idx]),
            None if alpha is None else alpha.detach(),
            None if mask is None else mask.detach().cpu().to(torch.bool),
        )
    return FaultReads(model, reads)
