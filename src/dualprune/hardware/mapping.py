"""What a crossbar mapping is: per tile, per layer and per model (docs/hardware.md).

The result types of :func:`~dualprune.hardware.crossbar.map_model`; the rules
that fill them are described in :mod:`dualprune.hardware.crossbar`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dualprune.errors import UnknownNameError, did_you_mean
from dualprune.hardware.spec import CrossbarSpec

__all__ = ["CrossbarReport", "LayerMap", "TileMap"]


@dataclass(frozen=True)
class TileMap:
    """One used crossbar: which group and tile, and what of it is active.

    Attributes:
        group: Group of the layer (0 unless grouped conv).
        row, col: Tile index in the chosen layout's grid.
        rows: Active rows r_t (= DACs).
        cols: Active logical columns c_t.
        phys_cols: Physical columns read p_t = c_t·m (+1 offset reference).
        adcs: ceil(p_t / adc_mux).
        adc_bits: ``spec.adc_bits(r_t)``.
        cells: Conducting cells r_t·p_t.
        level_sum: Σ of the programmed level of those cells (G = g_min + level·Δg).
    """

    group: int
    row: int
    col: int
    rows: int
    cols: int
    phys_cols: int
    adcs: int
    adc_bits: int
    cells: int
    level_sum: int


@dataclass(frozen=True)
class LayerMap:
    """How one layer lands on crossbars (counts per inference where they say so)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    groups: int
    rows: int  # R of one group's GEMM
    cols: int  # C of one group's GEMM
    nonzero: int
    mvms: int | None
    dense_crossbars: int
    crossbars: int
    packed: int
    tiles: tuple[TileMap, ...] = field(repr=False)

    @property
    def dacs(self) -> int:
        """DACs: one per active row of every used crossbar."""
        return sum(t.rows for t in self.tiles)

    @property
    def adcs(self) -> int:
        """ADCs: ceil(p_t / adc_mux) summed over used crossbars."""
        return sum(t.adcs for t in self.tiles)

    @property
    def adc_bit_range(self) -> tuple[int, int]:
        """(smallest, largest) ADC resolution of its tiles; (0, 0) with none."""
        bits = [t.adc_bits for t in self.tiles]
        return (min(bits), max(bits)) if bits else (0, 0)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, tiles included."""
        return {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "groups": self.groups,
            "rows": self.rows,
            "cols": self.cols,
            "nonzero": self.nonzero,
            "mvms": self.mvms,
            "dense_crossbars": self.dense_crossbars,
            "crossbars": self.crossbars,
            "packed": self.packed,
            "dacs": self.dacs,
            "adcs": self.adcs,
            "tiles": [vars(t).copy() for t in self.tiles],
        }


@dataclass(frozen=True)
class CrossbarReport:
    """The crossbar mapping of a model: per layer and in total (docs/hardware.md)."""

    spec: CrossbarSpec
    layers: tuple[LayerMap, ...]
    dense: bool = False
    layout: str = "best"

    @property
    def columns_per_weight(self) -> int:
        """Physical columns m per weight column (``spec.columns_per_weight``)."""
        return self.spec.columns_per_weight

    def layer(self, name: str) -> LayerMap:
        """The entry of layer ``name`` (UnknownNameError if it was not mapped)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        known = [layer.name for layer in self.layers]
        raise UnknownNameError(f"no mapped layer '{name}'{did_you_mean(name, known)}")

    def totals(self) -> dict[str, int]:
        """Sums over layers: crossbars, dense_crossbars, packed, dacs, adcs, nonzero."""
        keys = ("crossbars", "dense_crossbars", "packed", "dacs", "adcs", "nonzero")
        return {k: sum(getattr(layer, k) for layer in self.layers) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: spec, layers (with tiles) and totals."""
        return {
            "spec": self.spec.as_dict(),
            "dense": self.dense,
            "layout": self.layout,
            "columns_per_weight": self.columns_per_weight,
            "layers": [layer.as_dict() for layer in self.layers],
            "totals": self.totals(),
        }

    def __str__(self) -> str:
        s = self.spec
        head = (
            f"crossbar {s.rows}×{s.cols}, {s.weight_bits}-bit weights on {s.cell_bits}-bit "
            f"cells ({s.mapping}, m = {self.columns_per_weight}), {s.dac_bits}-bit DAC, "
            f"ADC per {s.adc_mux} columns"
        )
        cols = ("layer", "GEMM R×C", "MVMs", "dense", "xbars", "packed", "DACs", "ADCs", "ADC b")
        rows = []
        for layer in self.layers:
            lo, hi = layer.adc_bit_range
            gemm = f"{layer.rows}×{layer.cols}" + (f" ×{layer.groups}" if layer.groups > 1 else "")
            rows.append(
                (
                    layer.name,
                    gemm,
                    "?" if layer.mvms is None else str(layer.mvms),
                    str(layer.dense_crossbars),
                    str(layer.crossbars),
                    str(layer.packed),
                    str(layer.dacs),
                    str(layer.adcs),
                    f"{lo}" if lo == hi else f"{lo}–{hi}",
                )
            )
        t = self.totals()
        rows.append(
            (
                "total",
                "",
                "",
                str(t["dense_crossbars"]),
                str(t["crossbars"]),
                str(t["packed"]),
                str(t["dacs"]),
                str(t["adcs"]),
                "",
            )
        )
        width = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

        def line(r: tuple[str, ...]) -> str:
            return "  ".join(
                x.ljust(w) if i < 2 else x.rjust(w)
                for i, (x, w) in enumerate(zip(r, width, strict=True))
            )

        body = [line(cols), *(line(r) for r in rows)]
        return "\n".join([head, *(b.rstrip() for b in body)])
