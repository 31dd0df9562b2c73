"""Energy, area and latency of a crossbar mapping (docs/algorithms.md §6, docs/hardware.md).

Let n_s = ceil(input_bits / d) be the input slices of one matrix-vector product
(MVM), N_l the MVMs of layer l per inference, and, for every used crossbar t of
the layer (from :class:`~dualprune.hardware.crossbar.CrossbarReport`): r_t
active rows, p_t physical columns read, a_t ADCs of A_t bits, cells_t
conducting cells whose levels sum to Λ_t. With the profile's constants:

    ΣG_t   = cells_t·g_min + Λ_t·Δg,           Δg = (g_max − g_min)/(2^c − 1)
    E_l    = N_l · n_s · Σ_t [ r_t·E_DAC(d) + V²·t_read·ΣG_t
                               + p_t·E_ADC(A_t) + p_t·E_S&A ]
    area   = Σ_t [ X_r·(X_c + ref)·A_cell + a_t·(A_ADC(A_t) + A_S&A) + r_t·A_DAC(d) ]
    T_l    = N_l · max_t n_s·(t_read + ceil(p_t / a_t)·t_ADC(A_t))
    energy = Σ_l E_l,   latency = Σ_l T_l

Assumptions: every active row is driven in every slice (the bound for inputs
whose bits are all 1); every conversion is shifted and added once (also merging
partial sums of crossbars that share outputs); the crossbars of a layer work in
parallel, layers one after another, the MVMs of a layer one after another (no
weight duplication); buffers, interconnect and leakage are not counted. ``ref``
is 1 for the offset mapping (its reference column), else 0. The figures are
model estimates: compare them as ratios to the dense model under the same
profile (:func:`cost_vs_dense`), as §6 asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from dualprune.errors import ConfigError
from dualprune.hardware.crossbar import CrossbarReport, map_model
from dualprune.hardware.mapping import LayerMap
from dualprune.hardware.profiles import Profile, get_profile
from dualprune.hardware.spec import CrossbarSpec
from dualprune.masks.masks import Masks

__all__ = ["CostReport", "LayerCost", "cost", "cost_vs_dense"]

ENERGY_PARTS = ("dac", "array", "adc", "shift_add")
AREA_PARTS = ("cells", "adc", "dac", "shift_add")


@dataclass(frozen=True)
class LayerCost:
    """Energy (J per inference), area (m²) and latency (s per inference) of one layer."""

    name: str
    mvms: int
    crossbars: int
    energy: Mapping[str, float]
    area: Mapping[str, float]
    latency: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "name": self.name,
            "mvms": self.mvms,
            "crossbars": self.crossbars,
            "energy_j": dict(self.energy),
            "area_m2": dict(self.area),
            "latency_s": self.latency,
        }


def _sum(parts: Mapping[str, float]) -> float:
    return sum(v for k, v in parts.items() if k != "total")


@dataclass(frozen=True)
class CostReport:
    """What a mapping costs under one profile, and (optionally) what the dense model costs.

    ``energy`` / ``area`` are per-component totals plus ``"total"``; ``reductions``
    gives 1 − pruned/dense for each figure when a ``baseline`` is present.
    """

    profile: Profile
    spec: CrossbarSpec
    layers: tuple[LayerCost, ...]
    crossbars: int
    adcs: int
    dacs: int
    baseline: CostReport | None = None

    @property
    def energy(self) -> dict[str, float]:
        """Energy per inference by component and ``"total"`` (J)."""
        out = {k: sum(layer.energy[k] for layer in self.layers) for k in ENERGY_PARTS}
        out["total"] = _sum(out)
        return out

    @property
    def area(self) -> dict[str, float]:
        """Area by component and ``"total"`` (m²)."""
        out = {k: sum(layer.area[k] for layer in self.layers) for k in AREA_PARTS}
        out["total"] = _sum(out)
        return out

    @property
    def latency(self) -> float:
        """Latency of one inference, layers in sequence (s)."""
        return sum(layer.latency for layer in self.layers)

    def figures(self) -> dict[str, float]:
        """Headline figures: energy, area, latency, crossbars, ADCs, DACs."""
        return {
            "energy_j": self.energy["total"],
            "area_m2": self.area["total"],
            "latency_s": self.latency,
            "crossbars": float(self.crossbars),
            "adcs": float(self.adcs),
            "dacs": float(self.dacs),
        }

    @property
    def reductions(self) -> dict[str, float]:
        """1 − figure / dense figure for every :meth:`figures` entry (needs a baseline)."""
        if self.baseline is None:
            raise ConfigError("this cost report has no dense baseline; use cost_vs_dense()")
        base = self.baseline.figures()
        return {k: (1.0 - v / base[k]) if base[k] else 0.0 for k, v in self.figures().items()}

    def as_dict(self) -> dict[str, Any]:
        """Plain data: profile name, totals, layers, and baseline and reductions if present."""
        out: dict[str, Any] = {
            "profile": self.profile.name,
            "spec": self.spec.as_dict(),
            "energy_j": self.energy,
            "area_m2": self.area,
            "latency_s": self.latency,
            "crossbars": self.crossbars,
            "adcs": self.adcs,
            "dacs": self.dacs,
            "layers": [layer.as_dict() for layer in self.layers],
        }
        if self.baseline is not None:
            out["dense"] = {k: v for k, v in self.baseline.as_dict().items() if k != "layers"}
            out["reductions"] = self.reductions
        return out

    def __str__(self) -> str:
        e, a = self.energy, self.area
        lines = [
            f"profile {self.profile.name}: {self.profile.description}",
            f"{'layer':<14}{'MVMs':>8}{'xbars':>7}{'energy nJ':>12}{'area mm²':>11}"
            f"{'latency µs':>12}",
        ]
        for layer in self.layers:
            lines.append(
                f"{layer.name:<14}{layer.mvms:>8}{layer.crossbars:>7}"
                f"{layer.energy['total'] * 1e9:>12.4g}{layer.area['total'] * 1e6:>11.4g}"
                f"{layer.latency * 1e6:>12.4g}"
            )
        lines.append(
            f"{'total':<14}{'':>8}{self.crossbars:>7}{e['total'] * 1e9:>12.4g}"
            f"{a['total'] * 1e6:>11.4g}{self.latency * 1e6:>12.4g}"
        )
        lines.append(
            "energy: " + ", ".join(f"{k} {e[k] / e['total']:.1%}" for k in ENERGY_PARTS)
            if e["total"]
            else "energy: 0"
        )
        lines.append(
            "area: " + ", ".join(f"{k} {a[k] / a['total']:.1%}" for k in AREA_PARTS)
            if a["total"]
            else "area: 0"
        )
        if self.baseline is not None:
            r = self.reductions
            short = {k: k.split("_")[0] for k in r}
            lines.append(
                "vs dense: " + ", ".join(f"{short[k]} {(-v) or 0.0:+.2%}" for k, v in r.items())
            )
        return "\n".join(lines)


def _layer_cost(layer: LayerMap, spec: CrossbarSpec, p: Profile) -> LayerCost:
    if layer.mvms is None:
        raise ConfigError(
            f"layer '{layer.name}' ({layer.kind}) has no MVM count; pass example_input to "
            "map_model so that its output positions can be counted"
        )
    n_s = spec.input_slices
    e_dac, a_dac = p.dac(spec.dac_bits)
    v2t = p.read_voltage.value**2 * p.read_time.value
    g_min = spec.g_min
    dg = (spec.g_max - g_min) / (2**spec.cell_bits - 1)
    ref = 1 if spec.mapping == "offset" else 0
    cell_area = spec.rows * (spec.cols + ref) * p.cell_area.value
    energy = dict.fromkeys(ENERGY_PARTS, 0.0)
    area = dict.fromkeys(AREA_PARTS, 0.0)
    slowest = 0.0
    for t in layer.tiles:
        energy["dac"] += t.rows * e_dac
        energy["array"] += v2t * (t.cells * g_min + t.level_sum * dg)
        energy["adc"] += t.phys_cols * p.adc.energy(t.adc_bits)
        energy["shift_add"] += t.phys_cols * p.shift_add_energy.value
        area["cells"] += cell_area
        area["adc"] += t.adcs * p.adc.area(t.adc_bits)
        area["dac"] += t.rows * a_dac
        area["shift_add"] += t.adcs * p.shift_add_area.value
        mux = -(-t.phys_cols // t.adcs)
        slowest = max(slowest, p.read_time.value + mux * p.adc.time(t.adc_bits))
    scale = layer.mvms * n_s
    energy = {k: v * scale for k, v in energy.items()}
    energy["total"] = _sum(energy)
    area["total"] = _sum(area)
    return LayerCost(
        name=layer.name,
        mvms=layer.mvms,
        crossbars=layer.crossbars,
        energy=energy,
        area=area,
        latency=scale * slowest,
    )


def cost(report: CrossbarReport, profile: str | Profile | None = None) -> CostReport:
    """Energy, area and latency of ``report`` under ``profile`` (module docstring).

    Args:
        report: A mapping from :func:`~dualprune.hardware.crossbar.map_model` (made
            with ``example_input`` when the model has convs).
        profile: A profile name or :class:`Profile`; default ``report.spec.profile``.

    Raises:
        UnknownNameError: An unknown profile name.
        ConfigError: A layer without an MVM count, or a tile needing more ADC bits
            than the profile's table has.
    """
    if not isinstance(report, CrossbarReport):
        raise ConfigError(f"cost() takes a CrossbarReport, got {type(report).__name__}")
    spec = report.spec
    p = get_profile(spec.profile if profile is None else profile)
    layers = tuple(_layer_cost(layer, spec, p) for layer in report.layers)
    totals = report.totals()
    return CostReport(
        profile=p,
        spec=spec,
        layers=layers,
        crossbars=totals["crossbars"],
        adcs=totals["adcs"],
        dacs=totals["dacs"],
    )


def cost_vs_dense(
    model: nn.Module,
    spec: CrossbarSpec,
    masks: Masks | None = None,
    example_input: Tensor | tuple[Tensor, ...] | None = None,
    profile: str | Profile | None = None,
    layout: str = "best",
    baseline: nn.Module | None = None,
    mapping: CrossbarReport | None = None,
) -> CostReport:
    """:func:`cost` of the pruned mapping with the dense mapping of the same model as baseline.

    The baseline maps every weight of every layer (``map_model(..., dense=True)``)
    with the same spec, profile and MVM counts; ``.reductions`` then gives
    1 − pruned/dense for energy, area, latency, crossbars, ADCs and DACs. The
    baseline programs the pruned weights at level 0, so its array energy is that
    of the dense layout with these weights, not of the weights before pruning.
    ``layout`` is passed to :func:`~dualprune.hardware.crossbar.map_model`.
    ``baseline``: the model before compression (same architecture), whose
    weights then give the baseline's conductances — the honest "dense and
    unpruned" reference; without it the pruned weights are used as above.
    ``mapping``: the pruned mapping when the caller already has it (same arguments).
    """
    pruned = mapping or map_model(model, spec, masks, example_input, layout=layout)
    ref, ref_masks = (model, masks) if baseline is None else (baseline, None)
    dense = map_model(ref, spec, ref_masks, example_input, dense=True, layout=layout)
    base = cost(dense, profile)
    out = cost(pruned, profile)
    return replace(out, baseline=base)
