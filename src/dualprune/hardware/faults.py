"""Fault-aware retraining: one chip's stuck cells, and the weights they force.

A stuck cell (docs/devices.md, §6 of docs/algorithms.md) holds g_min or g_max whatever
is written to it, for the chip's whole life. :func:`fault_masks` gives the stuck
weight cells of the chip that :func:`~dualprune.hardware.chips.program_chip` programs
with a seed; :func:`pinned_values` turns them into the weight values they force;
:func:`pin_faults` keeps those weights at their values while the rest retrains, so
the network learns around the faults of that chip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dualprune.errors import ConfigError, ConstraintError
from dualprune.hardware.chips import LayerPatterns, chip_layers
from dualprune.hardware.conductance import (
    cell_shape,
    conductances_to_weights,
    to_levels,
    weights_to_conductances,
)
from dualprune.hardware.devices import (
    DeviceNoise,
    Faults,
    cell_generator,
    sample_faults,
)
from dualprune.hardware.spec import CrossbarSpec

__all__ = ["PinnedFaults", "fault_masks", "pin_faults", "pinned_values"]


def fault_masks(
    model: nn.Module,
    spec: CrossbarSpec,
    noise: DeviceNoise,
    seed: int = 0,
    layers: LayerPatterns = None,
) -> dict[str, Faults]:
    """Stuck weight cells of the chip :func:`program_chip` programs with ``seed``.

    Returns {parameter name: Faults(stuck_min, stuck_max)}, bool of shape
    (S, P, *W.shape). Stuck reference cells (offset mapping) are not included.
    """
    out = {}
    for name, module in chip_layers(model, layers).items():
        key = f"{name}.weight" if name else "weight"
        shape = cell_shape(spec, tuple(module.weight.shape))
        out[key] = sample_faults(shape, noise, cell_generator(seed, key, "faults"))
    return out


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
            module = model.get_submodule(name.rpartition(".")[0])
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
    params = dict(model.named_parameters())
    pins = {}
    for name, f in faults.items():
        if name not in params:
            raise ConfigError(f"faults '{name}' names no parameter of {type(model).__name__}")
        w = params[name].detach()
        if tuple(f.stuck_min.shape) != cell_shape(spec, tuple(w.shape)):
            raise ConstraintError(
                f"faults of '{name}' have shape {tuple(f.stuck_min.shape)}, the weight "
                f"{tuple(w.shape)} needs {cell_shape(spec, tuple(w.shape))}"
            )
        alpha = (scales or {}).get(name)
        if alpha is None:
            alpha = to_levels(w, spec.weight_bits)[1]
        pins[name] = pinned_values(f, spec, alpha, dtype=w.dtype)
    return PinnedFaults(model, pins)
