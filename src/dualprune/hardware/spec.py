"""What a memristor crossbar is: its geometry, cells, converters and conductances.

A :class:`CrossbarSpec` is pure configuration with the derived counts of
docs/algorithms.md §6 (slices per weight, physical columns per weight column,
the ADC bits a tile needs). Mapping a model onto crossbars lives in
``crossbar.py``, device physics in ``devices.py``, energy and area in ``cost.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from dualprune.errors import ConfigError

__all__ = ["MAPPINGS", "CrossbarSpec", "adc_bits"]

MAPPINGS = ("differential", "offset")


def adc_bits(active_rows: int, dac_bits: int = 1, cell_bits: int = 2) -> int:
    """ADC resolution A a column needs (docs/algorithms.md §6).

    A = ceil(log2(r·(2^d − 1)·(2^c − 1) + 1)) for r active rows, a d-bit DAC and
    c-bit cells: the number of distinct column sums. 0 active rows need no ADC.

    Example:
        >>> adc_bits(128, 1, 2)
        9
    """
    if active_rows < 0 or dac_bits < 1 or cell_bits < 1:
        raise ConfigError(
            f"adc_bits needs active_rows ≥ 0, dac_bits ≥ 1, cell_bits ≥ 1; "
            f"got {active_rows}, {dac_bits}, {cell_bits}"
        )
    if active_rows == 0:
        return 0
    top = active_rows * (2**dac_bits - 1) * (2**cell_bits - 1)
    return max(1, math.ceil(math.log2(top + 1)))


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"CrossbarSpec.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class CrossbarSpec:
    """A crossbar array and how signed weights are laid onto it.

    Args:
        rows, cols: Crossbar size X_r × X_c (inputs × physical columns).
        cell_bits: Bits c one device stores (2^c conductance states).
        weight_bits: Bits b of a signed weight (sign included).
        mapping: ``"differential"`` (a device pair per weight, 2·S physical
            columns per weight column) or ``"offset"`` (S columns per weight
            column plus one shared dummy reference column per crossbar, read
            by the periphery; it is not counted against ``cols``).
        dac_bits: Bits d one input drive carries; an input of ``input_bits``
            is streamed in ceil(input_bits / d) slices.
        input_bits: Bits of an activation.
        adc_mux: Columns sharing one ADC (time-multiplexed).
        profile: Name of a technology profile in ``cost.PROFILES``.
        g_max: Largest programmable conductance, siemens.
        on_off: Ratio g_max / g_min.

    Raises:
        ConfigError: a non-positive size or bit count, an unknown mapping,
            g_max ≤ 0 or on_off ≤ 1.
    """

    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    weight_bits: int = 8
    mapping: str = "differential"
    dac_bits: int = 1
    input_bits: int = 8
    adc_mux: int = 8
    profile: str = "isaac32"
    g_max: float = 40e-6
    on_off: float = 17.0

    def __post_init__(self) -> None:
        for name in (
            "rows",
            "cols",
            "cell_bits",
            "weight_bits",
            "dac_bits",
            "input_bits",
            "adc_mux",
        ):
            _positive(name, getattr(self, name))
        if self.mapping not in MAPPINGS:
            raise ConfigError(
                f"CrossbarSpec.mapping '{self.mapping}' is unknown; allowed: {', '.join(MAPPINGS)}"
            )
        if self.mapping == "differential" and self.weight_bits < 2:
            raise ConfigError("CrossbarSpec.weight_bits must be ≥ 2 with a differential mapping")
        if self.cols < self.columns_per_weight:
            raise ConfigError(
                f"CrossbarSpec.cols={self.cols} cannot hold one weight column: a "
                f"{self.weight_bits}-bit weight on {self.cell_bits}-bit cells with a "
                f"{self.mapping} mapping needs {self.columns_per_weight} physical columns"
            )
        if not self.g_max > 0:
            raise ConfigError(f"CrossbarSpec.g_max must be > 0 siemens, got {self.g_max!r}")
        if not self.on_off > 1:
            raise ConfigError(f"CrossbarSpec.on_off must be > 1, got {self.on_off!r}")

    @classmethod
    def parse(cls, size: str, **kwargs: Any) -> CrossbarSpec:
        """Build a spec from ``"ROWSxCOLS"`` (e.g. ``"128x128"``) and keyword options."""
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", size)
        if not m:
            raise ConfigError(f"crossbar size '{size}' is not ROWSxCOLS, e.g. 128x128")
        return cls(rows=int(m.group(1)), cols=int(m.group(2)), **kwargs)

    @property
    def slices(self) -> int:
        """Cells S per weight per polarity: ceil((b−1)/c) differential, ceil(b/c) offset."""
        bits = self.weight_bits - 1 if self.mapping == "differential" else self.weight_bits
        return math.ceil(bits / self.cell_bits)

    @property
    def columns_per_weight(self) -> int:
        """Physical columns m per logical weight column: 2·S differential, S offset."""
        return 2 * self.slices if self.mapping == "differential" else self.slices

    @property
    def logical_cols(self) -> int:
        """Weight columns one crossbar holds, X_c // m (X_c mod m physical columns stay unused)."""
        return self.cols // self.columns_per_weight

    @property
    def input_slices(self) -> int:
        """Input bit slices per matrix-vector product: ceil(input_bits / dac_bits)."""
        return math.ceil(self.input_bits / self.dac_bits)

    @property
    def g_min(self) -> float:
        """Smallest conductance g_max / on_off, siemens."""
        return self.g_max / self.on_off

    @property
    def cell_levels(self) -> int:
        """Conductance states of one cell, 2^c."""
        return 2**self.cell_bits

    def adc_bits(self, active_rows: int | None = None) -> int:
        """ADC bits a tile with ``active_rows`` driven rows needs (all rows if None)."""
        return adc_bits(
            self.rows if active_rows is None else active_rows, self.dac_bits, self.cell_bits
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields plus the derived counts."""
        d = asdict(self)
        d.update(
            slices=self.slices,
            columns_per_weight=self.columns_per_weight,
            logical_cols=self.logical_cols,
            input_slices=self.input_slices,
            g_min=self.g_min,
        )
        return d
