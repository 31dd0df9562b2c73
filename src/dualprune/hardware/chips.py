"""Programmed chips: a model read back from noisy devices, and its Monte-Carlo accuracy.

One *chip* is one programming of a model onto devices (docs/devices.md): every
selected Conv/Linear weight is quantized to the spec's b-bit grid, laid onto cells
(:func:`~dualprune.hardware.devices.weights_to_conductances`), programmed once
(variation, clipping, drift, stuck cells; :func:`~dualprune.hardware.devices.program`)
and read back. Biases and BatchNorm stay digital. A chip with read noise draws a
fresh read at every forward (a forward pre-hook writes the weight).

Only crossbars that hold a kept weight are built
(:func:`~dualprune.hardware.conductance.built_weights`): by default a weight in a
tile with no kept weight has no cells, so it reads exactly 0 on every chip (no stuck
cell, variation or read noise reaches it).

Fault-aware retraining (one chip's stuck cells and the weights they force) lives in
:mod:`dualprune.hardware.faults`.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from dualprune.errors import ConfigError, ConstraintError, PlanError
from dualprune.hardware.conductance import (
    Conductances,
    built_weights,
    column_crossbars,
    conductances_to_levels,
    conductances_to_weights,
    grid_levels,
    weights_to_conductances,
)
from dualprune.hardware.devices import (
    DeviceNoise,
    cell_generator,
    program,
    read_sigma,
)
from dualprune.hardware.spec import CrossbarSpec
from dualprune.masks.masks import Masks
from dualprune.plan import layer_weight, module_of, prunable_layers, weight_key
from dualprune.train.loop import evaluate

__all__ = [
    "ChipsResult",
    "built_cells",
    "chip_layers",
    "evaluate_on_chips",
    "mask_tables",
    "program_chip",
]

LayerPatterns = str | Sequence[str] | None
MaskSource = Masks | Mapping[str, Tensor] | None


def chip_layers(model: nn.Module, layers: LayerPatterns = None) -> dict[str, nn.Module]:
    """Conv1d/Conv2d/Linear modules to put on the chip, by name, in model order.

    ``layers``: None (all), or globs / ``re:`` regexes over module names as in
    :class:`~dualprune.Plan`; a pattern that matches no such layer raises PlanError.
    """
    found = prunable_layers(model)
    if layers is None:
        return found
    hits: set[str] = set()
    for text in [layers] if isinstance(layers, str) else list(layers):
        if not isinstance(text, str) or not text:
            raise PlanError(f"layers pattern {text!r} is not a non-empty string")
        if text.startswith("re:"):
            try:
                rx = re.compile(text[3:])
            except re.error as e:
                raise PlanError(f"layers pattern '{text}' is not a valid regex ({e})") from None
            got = {n for n in found if rx.fullmatch(n)}
        else:
            got = {n for n in found if fnmatch.fnmatchcase(n, text)}
        if not got:
            raise PlanError(
                f"layers pattern '{text}' matches no Conv1d/Conv2d/Linear layer; "
                f"layers: {', '.join(list(found)[:8])}"
            )
        hits |= got
    return {n: m for n, m in found.items() if n in hits}


def mask_tables(
    model: nn.Module, masks: MaskSource, scales: Mapping[str, Tensor] | None
) -> tuple[Mapping[str, Tensor], Mapping[str, Tensor]]:
    """(masks, scales) by parameter name, checked against the model's parameters."""
    keep: Mapping[str, Tensor] = {}
    if isinstance(masks, Masks):
        keep = {n: masks[n] for n in masks.names}
        scales = {**masks.scales, **(scales or {})}
    elif masks is not None:
        keep = masks
    scales = scales or {}
    params = dict(model.named_parameters())
    for what, table in (("mask", keep), ("scales", scales)):
        for name in table:
            if name not in params:
                raise ConfigError(
                    f"{what} '{name}' names no parameter of {type(model).__name__}; "
                    "use parameter names such as 'conv1.weight'"
                )
    return keep, scales


def built_cells(
    model: nn.Module,
    spec: CrossbarSpec,
    masks: MaskSource = None,
    layers: LayerPatterns = None,
) -> dict[str, Tensor]:
    """:func:`built_weights` of every chip layer, by parameter name.

    A weight is kept where its mask (``masks``, when it has one for the weight) is
    True, else where W ≠ 0.

    Raises:
        ConfigError: a mask naming no parameter. PlanError: as :func:`chip_layers`.
        ConstraintError: a mask of the wrong shape.
    """
    keep_by_name, _ = mask_tables(model, masks, None)
    out = {}
    for name, module in chip_layers(model, layers).items():
        key = weight_key(name)
        keep = _keep(layer_weight(module), keep_by_name.get(key), key)
        out[key] = built_weights(keep, spec, int(getattr(module, "groups", 1)))
    return out


def _keep(weight: Tensor, mask: Tensor | None, key: str) -> Tensor:
    """The kept weights of one layer: its mask, else W ≠ 0 (bool, on the CPU)."""
    if mask is None:
        return weight.detach().cpu() != 0
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConstraintError(
            f"mask of '{key}' has shape {tuple(mask.shape)}, the weight is {tuple(weight.shape)}"
        )
    return mask.detach().cpu().to(torch.bool)


@dataclass(frozen=True)
class _Layer:
    """What one chip layer programs: levels q, scale α, support, built weights (or None: all).

    The cells themselves are made per chip (:meth:`cells`).
    """

    q: Tensor
    alpha: Tensor
    keep: Tensor | None
    spec: CrossbarSpec
    built: Tensor | None = None

    def cells(self) -> Conductances:
        return weights_to_conductances(self.q, self.spec, self.alpha, self.keep)


def _map_model(
    model: nn.Module,
    spec: CrossbarSpec,
    masks: MaskSource,
    scales: Mapping[str, Tensor] | None,
    layers: LayerPatterns,
    built_only: bool = True,
) -> dict[str, _Layer]:
    """Levels, scales and built weights of every chip layer, by parameter name (computed once)."""
    keep, alphas = mask_tables(model, masks, scales)
    out = {}
    for name, module in chip_layers(model, layers).items():
        key = weight_key(name)
        w, m = layer_weight(module).detach(), keep.get(key)
        q, alpha = grid_levels(w, spec, alpha=alphas.get(key), mask=m)
        built = None
        if built_only:
            built = built_weights(_keep(w, m, key), spec, int(getattr(module, "groups", 1)))
            built = None if bool(built.all()) else built.to(w.device)
        mask = None if m is None else m.to(torch.bool)
        out[key] = _Layer(q.to(torch.int32), alpha, mask, spec, built)
    return out


class _ReadNoise:
    """Forward pre-hook of one layer: W ← α·(ℓ + σ·N [− σ_ref·N_ref]) at every forward
    (0 for weights in unbuilt tiles)."""

    def __init__(
        self,
        cond: Conductances,
        noise: DeviceNoise,
        gen: torch.Generator,
        built: Tensor | None = None,
    ) -> None:
        self.level = conductances_to_levels(cond).to(cond.dtype)
        sigma, ref = read_sigma(cond, noise)
        self.sigma = sigma.to(cond.dtype)
        self.ref = None if ref is None else ref.to(cond.dtype)
        self.alpha, self.gen, self.built = cond.alpha, gen, built
        self.tiles = column_crossbars(cond.spec, cond.shape[0])

    def __call__(self, module: nn.Module, args: Any) -> None:
        w = layer_weight(module)
        if self.level.device != w.device:
            for key in ("level", "sigma", "ref", "alpha", "tiles", "built"):
                value = getattr(self, key)
                setattr(self, key, None if value is None else value.to(w.device))
        noise = torch.randn(w.shape, generator=self.gen, dtype=w.dtype).to(w.device)
        level = self.level + self.sigma * noise
        if self.ref is not None:
            shared = torch.randn(self.ref.shape, generator=self.gen, dtype=w.dtype).to(w.device)
            level = level - (self.ref * shared).index_select(0, self.tiles)
        value = level * self.alpha
        if self.built is not None:
            value = value.masked_fill(~self.built, 0)
        with torch.no_grad():
            w.copy_(value)


def _program_mapped(
    model: nn.Module, mapped: Mapping[str, _Layer], noise: DeviceNoise, seed: int
) -> nn.Module:
    """A deep copy of ``model`` holding one chip's read-back weights.

    Every cell is drawn (the streams do not depend on what is built); weights of
    unbuilt tiles are then read as 0, which is exactly a chip without those cells.
    """
    chip = copy.deepcopy(model)
    params = dict(chip.named_parameters())
    for key, layer in mapped.items():
        cells = program(layer.cells(), noise, seed=seed, name=key)
        weight = params[key]
        value = conductances_to_weights(cells)
        if layer.built is not None:
            value = value.masked_fill(~layer.built.to(value.device), 0)
        with torch.no_grad():
            weight.copy_(value)
        if noise.read > 0:
            module = chip.get_submodule(module_of(key))
            gen = cell_generator(seed, key, "read")
            module.register_forward_pre_hook(_ReadNoise(cells, noise, gen, layer.built))
    return chip


def program_chip(
    model: nn.Module,
    spec: CrossbarSpec,
    noise: DeviceNoise | None = None,
    *,
    masks: MaskSource = None,
    scales: Mapping[str, Tensor] | None = None,
    seed: int = 0,
    layers: LayerPatterns = None,
    built_only: bool = True,
) -> nn.Module:
    """A deep copy of ``model`` whose chip layers hold the weights one programmed chip reads.

    Per layer: (q, α) of the b-bit grid (``scales[name]`` / the Masks' fixed α when
    given, else fitted by ``Quantization(bits=b)``), cells programmed once with
    ``noise`` (streams seeded by ``seed`` and the parameter name), weights read back.
    With ``noise.read`` > 0 a forward pre-hook draws a fresh read of every cell at
    each forward. Zero noise gives exactly the quantized model.

    Args:
        masks: Supports by parameter name (a :class:`~dualprune.Masks` or a dict of
            bool tensors): pruned weights are q = 0 and, differential, unprogrammed.
        scales: α by parameter name (e.g. ``masks.scales``).
        layers: Patterns of the layers on the chip (default: every Conv/Linear).
        built_only: Only the cells of built crossbar tiles exist (``built_weights``:
            tiles with a kept weight, kept = mask, else W ≠ 0); weights of the other
            tiles read exactly 0. False: every weight has cells (any may be stuck).

    Raises:
        ConfigError: a spec with weight_bits < 2, a mask or scale naming no parameter.
        PlanError: a layers pattern matching no Conv/Linear layer.
        ConstraintError: a mask of the wrong shape, α < 0.
    """
    noise = DeviceNoise() if noise is None else noise
    mapped = _map_model(model, spec, masks, scales, layers, built_only)
    return _program_mapped(model, mapped, noise, seed)


@dataclass(frozen=True)
class ChipsResult:
    """Monte-Carlo accuracy over programmed chips.

    Attributes:
        accs: Accuracy of each chip (chip k is programmed with seed ``seeds[k]``).
        seeds: The chip seeds, ``seed + k``.
        ideal: Accuracy of the noise-free quantized model (the same mapping, no noise).
        noise, spec: What the chips were programmed with.
    """

    accs: list[float]
    seeds: list[int]
    ideal: float
    noise: DeviceNoise
    spec: CrossbarSpec = field(repr=False)

    @property
    def mean(self) -> float:
        """Mean accuracy over the chips."""
        return statistics.fmean(self.accs)

    @property
    def std(self) -> float:
        """Sample standard deviation over the chips (0 for one chip)."""
        return statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {
            "mean": self.mean,
            "std": self.std,
            "ideal": self.ideal,
            "n_chips": len(self.accs),
            "accs": list(self.accs),
            "seeds": list(self.seeds),
            "noise": self.noise.as_dict(),
            "spec": self.spec.as_dict(),
        }

    def __str__(self) -> str:
        return (
            f"accuracy {100 * self.mean:.2f} ± {100 * self.std:.2f} % over {len(self.accs)} "
            f"chips (min {100 * min(self.accs):.2f} %, noise-free {100 * self.ideal:.2f} %)"
        )


def _on(device: torch.device | str, loader: Iterable[Any]) -> Iterator[tuple[Tensor, Tensor]]:
    for x, y in loader:
        yield x.to(device), y.to(device)


def _score(chip: nn.Module, data: Any, device: torch.device | str | None) -> float:
    """Accuracy of ``chip`` on a loader (``train.evaluate``) or from a callable."""
    if device is not None:
        chip.to(device)
    if callable(data) and not isinstance(data, Iterable):
        out = data(chip)
        return float(out["acc"] if isinstance(out, Mapping) else out)
    return evaluate(chip, data if device is None else _on(device, data))["acc"]


def evaluate_on_chips(
    model: nn.Module,
    spec: CrossbarSpec,
    noise: DeviceNoise,
    data: Iterable[tuple[Tensor, Tensor]] | Callable[[nn.Module], float | Mapping[str, float]],
    *,
    n_chips: int = 10,
    seed: int = 0,
    masks: MaskSource = None,
    scales: Mapping[str, Tensor] | None = None,
    layers: LayerPatterns = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    built_only: bool = True,
) -> ChipsResult:
    """Accuracy of ``n_chips`` chips programmed with seeds seed, seed + 1, … (mean ± std).

    ``data`` is a loader of (x, y) batches (scored by ``dualprune.train.evaluate``:
    top-1 accuracy) or a callable ``f(chip) -> accuracy`` (or a dict with ``"acc"``).
    The mapping (α, levels) is computed once; each chip is a fresh programming of it.
    ``progress``: a tqdm bar over chips (None: on a terminal only). ``built_only``:
    as :func:`program_chip`.

    Raises:
        ConfigError: n_chips < 1, and as :func:`program_chip`.
    """
    if isinstance(n_chips, bool) or not isinstance(n_chips, int) or n_chips < 1:
        raise ConfigError(f"n_chips must be a positive integer, got {n_chips!r}")
    mapped = _map_model(model, spec, masks, scales, layers, built_only)
    ideal = _score(_program_mapped(model, mapped, DeviceNoise(), seed), data, device)
    seeds = [seed + k for k in range(n_chips)]
    disable = (not progress) if progress is not None else (None if n_chips > 1 else True)
    accs = []
    for s in tqdm(seeds, desc="chips", unit="chip", leave=False, disable=disable):
        accs.append(_score(_program_mapped(model, mapped, noise, s), data, device))
    return ChipsResult(accs, seeds, ideal, noise, spec)
