"""Technology profiles: the constants the crossbar cost model reads (docs/algorithms.md §6).

A :class:`Profile` names one technology: its ADC model, the 1-bit DAC, the
shift-and-add unit, the area of one memory cell and the read voltage and pulse
that set the array energy V²·t·ΣG. Every constant is a :class:`Quantity` that
carries its unit and its source; values that no source gives are marked
``assumption`` in that string. All values are SI (J, m², s, V).

Profiles (``PROFILES``):

- ``isaac32``: the ISAAC accelerator's 32 nm components as tabulated in
  Accelergy's hwcomponents library (SAR ADC 4…10 bits, 1-bit DAC, 16-bit
  shift-and-add; cells from ISAAC's own table).
- ``neurosim22``: DNN+NeuroSim's 22 nm SAR ADC model, 1T1R RRAM cells (48F²,
  NeuroSim's default access type).
- ``neurosim22-xbar``: the same with selector-less crossbar cells (4F²).

ADC bits outside a table: a resolution below the smallest listed size uses the
smallest (a finer converter does the job of a coarser one); one above the largest
raises :class:`~dualprune.errors.ConfigError`. Formula ADCs take any bits ≥ 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from dualprune.errors import ConfigError, UnknownNameError, did_you_mean

__all__ = ["PROFILES", "FormulaADC", "Profile", "Quantity", "TableADC", "get_profile"]

_ACCELERGY = "Accelergy hwcomponents-library isaac.py (ISAAC, Shafiee et al., ISCA 2016), 32 nm"
_NEUROSIM = "DNN+NeuroSim V1.3"
_PJ, _UM2, _NS = 1e-12, 1e-12, 1e-9


class Quantity(NamedTuple):
    """A constant with its unit and where it comes from."""

    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class TableADC:
    """An ADC given by a table bits → (energy per conversion, area), rate scaled by bits.

    Conversion time t(b) = b / (``rate`` · ``rate_bits``): ``rate`` conversions per
    second at ``rate_bits`` bits, scaled linearly with the resolution (the rule
    Accelergy's library applies to this ADC's latency).
    """

    table: Mapping[int, tuple[float, float]]
    rate: float
    rate_bits: int
    source: str

    def resolve(self, bits: int) -> int:
        """The smallest listed resolution ≥ ``bits``; ConfigError above the largest."""
        sizes = sorted(self.table)
        for size in sizes:
            if size >= bits:
                return size
        raise ConfigError(
            f"an ADC of {bits} bits is beyond this profile's table ({sizes[0]}…{sizes[-1]} "
            "bits); use fewer crossbar rows or cell bits, a 1-bit DAC, or profile neurosim22"
        )

    def energy(self, bits: int) -> float:
        """Energy per conversion from the table row of :meth:`resolve` (J)."""
        return self.table[self.resolve(bits)][0]

    def area(self, bits: int) -> float:
        """Converter area from the table row of :meth:`resolve` (m²)."""
        return self.table[self.resolve(bits)][1]

    def time(self, bits: int) -> float:
        """t(b) = b / (rate · rate_bits), b the resolved bits (s)."""
        return self.resolve(bits) / (self.rate * self.rate_bits)


@dataclass(frozen=True)
class FormulaADC:
    """NeuroSim's SAR ADC: P(b) = (p1·b + p0) W, t(b) = (b + 1)·t_bit, E = P·t.

    Area (m²) = u·(478 + 182·(b − 1)) with u = 212.8·F², the area NeuroSim's
    ``SarADC::CalculateUnitArea`` gives: (269 + 109·(b − 1)) minimum NMOS plus
    (209 + 73·(b − 1)) minimum PMOS inverter footprints, each 28F tall and
    2·(1.0 + 2.8)F = 7.6F wide (``CalculateGateArea``, bulk ≥ 22 nm).
    NeuroSim adds a term for the column current (a function of the column
    resistance) to P; it is left out here (the array energy is counted apart).
    """

    p1: float
    p0: float
    t_bit: float
    feature: float
    source: str

    def resolve(self, bits: int) -> int:
        """Any resolution ≥ 1 is available."""
        return max(1, bits)

    def energy(self, bits: int) -> float:
        """E(b) = (p1·b + p0)·(b + 1)·t_bit (J)."""
        b = self.resolve(bits)
        return (self.p1 * b + self.p0) * self.time(b)

    def area(self, bits: int) -> float:
        """212.8·F²·(478 + 182·(b − 1)) (m²)."""
        b = self.resolve(bits)
        return 212.8 * self.feature**2 * (478 + 182 * (b - 1))

    def time(self, bits: int) -> float:
        """t(b) = (b + 1)·t_bit (s)."""
        return (self.resolve(bits) + 1) * self.t_bit


@dataclass(frozen=True)
class Profile:
    """One technology: converters, shift-and-add, cell area and read conditions.

    DAC energy and area are per 1-bit drive / converter; a d-bit DAC costs
    2^{d−1} times as much (Accelergy's ``pow_base(2)`` resolution scaling).
    One shift-and-add unit serves one ADC and runs once per conversion.
    """

    name: str
    description: str
    adc: TableADC | FormulaADC
    dac_energy: Quantity
    dac_area: Quantity
    shift_add_energy: Quantity
    shift_add_area: Quantity
    cell_area: Quantity
    read_voltage: Quantity
    read_time: Quantity

    def dac(self, bits: int) -> tuple[float, float]:
        """(energy per drive J, area m²) of a ``bits``-bit DAC: the 1-bit values × 2^{d−1}."""
        scale = 2.0 ** (bits - 1)
        return self.dac_energy.value * scale, self.dac_area.value * scale

    def constants(self) -> dict[str, Quantity]:
        """Every scalar constant by name (the ADC is described by ``adc.source``)."""
        names = (
            "dac_energy",
            "dac_area",
            "shift_add_energy",
            "shift_add_area",
            "cell_area",
            "read_voltage",
            "read_time",
        )
        return {n: getattr(self, n) for n in names}

    def adc_rows(self, bits: range = range(4, 11)) -> list[tuple[int, float, float, float]]:
        """(bits, energy pJ, area µm², time ns) for each resolution in ``bits`` this ADC has."""
        rows = []
        for b in bits:
            try:
                self.adc.resolve(b)
            except ConfigError:
                continue
            rows.append(
                (b, self.adc.energy(b) / _PJ, self.adc.area(b) / _UM2, self.adc.time(b) / _NS)
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        """Plain data: name, description, ADC source and rows, every constant with its source."""
        return {
            "name": self.name,
            "description": self.description,
            "adc": {
                "source": self.adc.source,
                "rows": [
                    {"bits": b, "energy_pj": e, "area_um2": a, "time_ns": t}
                    for b, e, a, t in self.adc_rows()
                ],
            },
            "constants": {k: q._asdict() for k, q in self.constants().items()},
        }


# ---------------------------------------------------------------------------------------
# the profiles

_ISAAC_ADC = TableADC(
    table={
        4: (0.79 * _PJ, 361.04 * _UM2),
        5: (0.99 * _PJ, 476.91 * _UM2),
        6: (1.20 * _PJ, 626.91 * _UM2),
        7: (1.42 * _PJ, 845.18 * _UM2),
        8: (1.67 * _PJ, 1200.0 * _UM2),
        9: (1.969078145 * _PJ, 1827.911647 * _UM2),
        10: (2.379022742 * _PJ, 3002.008032 * _UM2),
    },
    rate=1.2e9,
    rate_bits=8,
    source=(
        f"{_ACCELERGY}: IsaacADC, 8 b 1.2 GS/s SAR ADC (Kull et al., ISSCC 2013) "
        "scaled to 4…10 b after Saberi et al. 2011; latency linear in bits"
    ),
)

_ISAAC_DAC_E = Quantity(0.41667 * _PJ, "J", f"{_ACCELERGY}: IsaacDAC, 1 bit")
_ISAAC_DAC_A = Quantity(0.166015625 * _UM2, "m²", f"{_ACCELERGY}: IsaacDAC, 1 bit")
_ISAAC_SA_E = Quantity(0.021 * _PJ, "J", f"{_ACCELERGY}: IsaacShiftAdd, 16 bit")
_ISAAC_SA_A = Quantity(60.0 * _UM2, "m²", f"{_ACCELERGY}: IsaacShiftAdd, 16 bit")
_NEUROSIM_V = Quantity(0.5, "V", f"{_NEUROSIM} Param.cpp readVoltage")
_NEUROSIM_T = Quantity(10e-9, "s", f"{_NEUROSIM} Param.cpp readPulseWidth")
_F22 = 22e-9

_NEUROSIM_ADC = FormulaADC(
    p1=0.538e-6,
    p0=4.3753e-6,
    t_bit=1e-9,
    feature=_F22,
    source=(
        f"{_NEUROSIM} SarADC.cpp, 22 nm LSTP: P = (0.538·b + 4.3753) µW, t = (b + 1) ns; "
        "area from SarADC::CalculateUnitArea with F = 22 nm"
    ),
)


def _neurosim(name: str, cell_f2: int, cell: str) -> Profile:
    assumed = "assumption: NeuroSim has no DAC (rows are driven bit-serially); ISAAC 32 nm"
    return Profile(
        name=name,
        description=f"DNN+NeuroSim 22 nm SAR ADC, RRAM {cell} cells ({cell_f2}F²)",
        adc=_NEUROSIM_ADC,
        dac_energy=Quantity(_ISAAC_DAC_E.value, "J", f"{assumed} value ({_ISAAC_DAC_E.source})"),
        dac_area=Quantity(_ISAAC_DAC_A.value, "m²", f"{assumed} value ({_ISAAC_DAC_A.source})"),
        shift_add_energy=Quantity(
            _ISAAC_SA_E.value, "J", f"assumption: ISAAC 32 nm value ({_ISAAC_SA_E.source})"
        ),
        shift_add_area=Quantity(
            _ISAAC_SA_A.value, "m²", f"assumption: ISAAC 32 nm value ({_ISAAC_SA_A.source})"
        ),
        cell_area=Quantity(
            cell_f2 * _F22**2, "m²", f"{_NEUROSIM} Param.cpp {cell} cell {cell_f2}F², F = 22 nm"
        ),
        read_voltage=_NEUROSIM_V,
        read_time=_NEUROSIM_T,
    )


#: name → profile.
PROFILES: dict[str, Profile] = {
    "isaac32": Profile(
        name="isaac32",
        description="ISAAC 32 nm components (Accelergy library table)",
        adc=_ISAAC_ADC,
        dac_energy=_ISAAC_DAC_E,
        dac_area=_ISAAC_DAC_A,
        shift_add_energy=_ISAAC_SA_E,
        shift_add_area=_ISAAC_SA_A,
        cell_area=Quantity(
            0.0002e-6 / (8 * 128 * 128),
            "m²",
            "ISAAC (Shafiee et al., ISCA 2016) Table 6: 8 arrays of 128×128 cells in 0.0002 mm²",
        ),
        read_voltage=Quantity(0.5, "V", f"assumption: ISAAC gives none; {_NEUROSIM_V.source}"),
        read_time=Quantity(10e-9, "s", f"assumption: ISAAC gives none; {_NEUROSIM_T.source}"),
    ),
    "neurosim22": _neurosim("neurosim22", 48, "1T1R"),
    "neurosim22-xbar": _neurosim("neurosim22-xbar", 4, "crossbar (0T1R)"),
}


def get_profile(profile: str | Profile) -> Profile:
    """The :class:`Profile` named ``profile`` (a Profile is returned as is).

    Raises:
        UnknownNameError: No profile has that name (the message lists them).
    """
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise UnknownNameError(
            f"hardware profile '{profile}' is unknown{did_you_mean(str(profile), list(PROFILES))}"
        )
    return PROFILES[profile]
