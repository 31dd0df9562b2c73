"""The hardware stage of a run: crossbar mapping, cost against the dense model, chips.

A recipe with a ``hardware:`` section (:class:`HardwareOptions`) ends its run by
mapping the final model onto crossbars (docs/hardware.md), costing it against
the dense model it started from, and — with ``noise`` — evaluating it on
``chips`` Monte-Carlo programmed chips (docs/devices.md). ``dualprune hw`` does
the same for any run or checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from dualprune.hardware import (
    CrossbarSpec,
    DeviceNoise,
    cost_vs_dense,
    evaluate_on_chips,
    map_model,
)
from dualprune.masks.masks import Masks

__all__ = ["HardwareOptions", "hardware_markdown", "hardware_summary"]


class HardwareOptions(BaseModel):
    """A crossbar spec, its cost profile and (optionally) device noise to evaluate under."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    crossbar: str = Field("128x128", description="ROWSxCOLS")
    cell_bits: int = Field(2, ge=1)
    weight_bits: int = Field(8, ge=1)
    mapping: Literal["differential", "offset"] = "differential"
    dac_bits: int = Field(1, ge=1)
    input_bits: int = Field(8, ge=1)
    adc_mux: int = Field(8, ge=1)
    profile: str = "isaac32"
    g_max: float = Field(40e-6, gt=0, description="siemens")
    on_off: float = Field(17.0, gt=1)
    layout: Literal["best", "compact", "grid"] = "best"
    noise: str | None = Field(None, description="e.g. 'sigma=0.02,stuck_min=0.01'")
    chips: int = Field(10, ge=1, description="Monte-Carlo chips when noise is given")
    seed: int = 0

    def spec(self) -> CrossbarSpec:
        """The :class:`~dualprune.hardware.CrossbarSpec` these options describe."""
        return CrossbarSpec.parse(
            self.crossbar,
            cell_bits=self.cell_bits,
            weight_bits=self.weight_bits,
            mapping=self.mapping,
            dac_bits=self.dac_bits,
            input_bits=self.input_bits,
            adc_mux=self.adc_mux,
            profile=self.profile,
            g_max=self.g_max,
            on_off=self.on_off,
        )

    def device_noise(self) -> DeviceNoise | None:
        """The parsed ``noise`` (None when absent)."""
        return None if self.noise is None else DeviceNoise.parse(self.noise)


def hardware_summary(
    model: nn.Module,
    options: HardwareOptions,
    example_input: Tensor,
    *,
    masks: Masks | None = None,
    baseline: nn.Module | None = None,
    loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    progress: bool | None = None,
) -> tuple[dict[str, Any], str]:
    """Map, cost and (with noise and a loader) evaluate on chips; return (data, text).

    ``baseline`` is the dense model before compression (same architecture); the
    reductions are against it mapped dense under the same spec and profile.
    """
    spec = options.spec()
    mapping = map_model(model, spec, masks, example_input, layout=options.layout)
    cost = cost_vs_dense(
        model,
        spec,
        masks,
        example_input,
        profile=options.profile,
        layout=options.layout,
        baseline=baseline,
        mapping=mapping,
    )
    result: dict[str, Any] = {
        "options": options.model_dump(),
        "mapping": mapping.as_dict(),
        "cost": cost.as_dict(),
    }
    text = [str(mapping), "", str(cost)]
    noise = options.device_noise()
    if noise is not None and loader is not None:
        scales = masks.scales if masks is not None else None
        chips = evaluate_on_chips(
            model,
            spec,
            noise,
            loader,
            n_chips=options.chips,
            seed=options.seed,
            masks=masks,
            scales=scales,
            progress=progress,
        )
        result["chips"] = chips.as_dict()
        text += ["", str(chips)]
    return result, "\n".join(text)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def hardware_markdown(hw: dict[str, Any]) -> str:
    """The report's hardware section (Markdown) from :func:`hardware_summary`'s data."""
    cost, spec = hw["cost"], hw["cost"]["spec"]
    lines = [
        "## Hardware (crossbar)",
        "",
        f"{spec['rows']}×{spec['cols']} crossbars, {spec['weight_bits']}-bit weights on "
        f"{spec['cell_bits']}-bit cells ({spec['mapping']}, {spec['columns_per_weight']} "
        f"physical columns per weight column), {spec['dac_bits']}-bit DAC, "
        f"profile `{cost['profile']}`. Reductions are against the dense model before "
        "compression, mapped with the same spec and profile.",
        "",
        "| figure | compressed | dense | reduction |",
        "|---|---|---|---|",
    ]
    dense, red = cost.get("dense", {}), cost.get("reductions", {})
    rows = [
        ("crossbars", cost["crossbars"], dense.get("crossbars"), red.get("crossbars")),
        ("ADCs", cost["adcs"], dense.get("adcs"), red.get("adcs")),
        ("DACs", cost["dacs"], dense.get("dacs"), red.get("dacs")),
        (
            "energy per inference (nJ)",
            f"{1e9 * cost['energy_j']['total']:.4g}",
            f"{1e9 * dense['energy_j']['total']:.4g}" if dense else None,
            red.get("energy_j"),
        ),
        (
            "area (mm²)",
            f"{1e6 * cost['area_m2']['total']:.4g}",
            f"{1e6 * dense['area_m2']['total']:.4g}" if dense else None,
            red.get("area_m2"),
        ),
        (
            "latency per inference (µs)",
            f"{1e6 * cost['latency_s']:.4g}",
            f"{1e6 * dense['latency_s']:.4g}" if dense else None,
            red.get("latency_s"),
        ),
    ]
    for name, a, b, r in rows:
        lines.append(
            f"| {name} | {a} | {'' if b is None else b} | {'' if r is None else _pct(r)} |"
        )
    chips = hw.get("chips")
    if chips:
        lines += [
            "",
            f"Accuracy on {chips['n_chips']} programmed chips "
            f"(noise `{hw['options']['noise']}`): "
            f"{100 * chips['mean']:.2f} ± {100 * chips['std']:.2f}% "
            f"(noise-free mapping {100 * chips['ideal']:.2f}%).",
        ]
    return "\n".join(lines) + "\n"
