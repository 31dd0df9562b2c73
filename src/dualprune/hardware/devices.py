"""Memristor device non-idealities: what a programmed chip does to its conductances.

Pure tensor functions on :class:`~dualprune.hardware.conductance.Conductances`
(docs/algorithms.md §6, docs/devices.md). :class:`DeviceNoise` (all off by default)
holds the model; :func:`program` applies programming variation, clipping, drift and
stuck cells once per programmed chip, :func:`read` the read noise of one read.
Randomness comes from :func:`cell_generator` streams, one per (chip seed, tensor
name, purpose), so a chip is reproducible and its faults do not move when the
variation settings change.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple

import torch
from torch import Tensor

from dualprune.errors import ConfigError, did_you_mean
from dualprune.hardware.conductance import Conductances, delta_g, slice_significance
from dualprune.hardware.spec import CrossbarSpec

__all__ = [
    "DeviceNoise",
    "Faults",
    "cell_generator",
    "program",
    "read",
    "read_sigma",
    "sample_faults",
]


@dataclass(frozen=True)
class DeviceNoise:
    """Device non-idealities of docs/algorithms.md §6; every one is off by default.

    Args:
        sigma: State-independent programming variation: G ← G + σ·(g_max − g_min)·N(0, 1).
        beta: Proportional programming variation: G ← G + β·G_target·N(0, 1).
        read: Read noise, a fraction of the conductance drawn at every read:
            G_read = G·(1 + ρ·N(0, 1)) (not clipped).
        nu: Drift exponent ν: G ← G·(t/t0)^−ν for every programmed cell.
        t, t0: Time since programming and the reference time (same unit, > 0).
        stuck_min, stuck_max: Rates of cells stuck at g_min / at g_max, drawn once
            per chip for every cell (weights and references), stuck_min + stuck_max ≤ 1.
        margin: After programming variation G is clipped to [0, g_max·(1 + margin)]:
            no conductance is negative and none exceeds the device's saturated state.

    Raises:
        ConfigError: a negative or non-finite value, t or t0 ≤ 0, rates above 1.
    """

    sigma: float = 0.0
    beta: float = 0.0
    read: float = 0.0
    nu: float = 0.0
    t: float = 1.0
    t0: float = 1.0
    stuck_min: float = 0.0
    stuck_max: float = 0.0
    margin: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"DeviceNoise.{f.name} must be a finite number, got {v!r}")
            if v < 0 or (f.name in ("t", "t0") and v <= 0):
                allowed = "> 0" if f.name in ("t", "t0") else ">= 0"
                raise ConfigError(f"DeviceNoise.{f.name} must be {allowed}, got {v!r}")
        if self.stuck_min + self.stuck_max > 1:
            raise ConfigError(
                f"DeviceNoise.stuck_min + stuck_max must be <= 1, got "
                f"{self.stuck_min} + {self.stuck_max}"
            )

    @classmethod
    def parse(cls, text: str) -> DeviceNoise:
        """``"sigma=0.02,read=0.01,stuck_min=0.001"`` (``""`` or ``"none"``: all off)."""
        known, values = [f.name for f in fields(cls)], {}
        for item in [] if text.strip() in ("", "none") else text.split(","):
            key, _, value = (s.strip() for s in item.partition("="))
            if key not in known:
                raise ConfigError(f"device noise key '{key}' is unknown{did_you_mean(key, known)}")
            try:
                values[key] = float(value)
            except ValueError:
                raise ConfigError(f"device noise '{item.strip()}' is not KEY=NUMBER") from None
        return cls(**values)

    def as_dict(self) -> dict[str, float]:
        """The fields as plain floats."""
        return {k: float(v) for k, v in asdict(self).items()}

    @property
    def drift(self) -> float:
        """The drift factor (t/t0)^−ν (exactly 1.0 when ν = 0 or t = t0)."""
        return 1.0 if self.nu == 0 or self.t == self.t0 else (self.t / self.t0) ** -self.nu


class Faults(NamedTuple):
    """Stuck cells of one weight tensor, bool of shape (S, P, *W.shape)."""

    stuck_min: Tensor
    stuck_max: Tensor


def _randn(like: Tensor, gen: torch.Generator) -> Tensor:
    """N(0, 1) of ``like``'s shape and dtype, drawn on the CPU (same numbers on any device)."""
    return torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)


def cell_generator(seed: int, name: str, purpose: str) -> torch.Generator:
    """A CPU generator for one (chip seed, tensor name, purpose): independent streams,
    so faults do not move when the variation settings change."""
    digest = hashlib.sha256(f"{int(seed)}\0{name}\0{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_faults(
    shape: tuple[int, ...] | torch.Size, noise: DeviceNoise, gen: torch.Generator
) -> Faults:
    """Stuck cells: U ~ U[0, 1) per cell, stuck at g_min if U < p_min, at g_max if
    p_min ≤ U < p_min + p_max (so a larger rate only adds stuck cells)."""
    if noise.stuck_min == 0 and noise.stuck_max == 0:
        none = torch.zeros(shape, dtype=torch.bool)
        return Faults(none, none.clone())
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return Faults(
        u < noise.stuck_min, (u >= noise.stuck_min) & (u < noise.stuck_min + noise.stuck_max)
    )


def _program_cells(
    G: Tensor,
    programmed: Tensor | None,
    spec: CrossbarSpec,
    noise: DeviceNoise,
    gen: torch.Generator,
    faults: Faults,
) -> Tensor:
    """Variation, clipping and drift on programmed cells, then stuck cells."""
    out, span = G, spec.g_max - spec.g_min
    if noise.sigma > 0:
        out = out + noise.sigma * span * _randn(G, gen)
    if noise.beta > 0:
        out = out + noise.beta * G * _randn(G, gen)
    out = out.clamp(0.0, spec.g_max * (1 + noise.margin)) * noise.drift
    if programmed is not None:
        out = torch.where(programmed, out, G)
    out = out.masked_fill(faults.stuck_min.to(G.device), spec.g_min)
    return out.masked_fill(faults.stuck_max.to(G.device), spec.g_max)


def program(cond: Conductances, noise: DeviceNoise, seed: int = 0, name: str = "") -> Conductances:
    """Program one chip: what the cells hold after writing (once per chip lifetime).

    Per programmed cell, in order: G ← G_t + σ·(g_max − g_min)·N + β·G_t·N, clipped to
    [0, g_max·(1 + margin)], then drift G ← G·(t/t0)^−ν. Unprogrammed cells (pruned,
    differential masked mapping) stay at g_min. Then stuck cells (weights and
    references alike) are set to g_min / g_max. Streams: ``cell_generator(seed, name,
    p)`` with p = "program", "faults" (weights) and "program-ref", "faults-ref".
    """
    delta_g(cond.spec)  # validates the spec
    faults = sample_faults(cond.G.shape, noise, cell_generator(seed, name, "faults"))
    gen = cell_generator(seed, name, "program")
    keep = None if cond.programmed is None else cond.programmed.expand_as(cond.G)
    G = _program_cells(cond.G, keep, cond.spec, noise, gen, faults)
    ref = cond.ref
    if ref is not None:
        ref_faults = sample_faults(ref.shape, noise, cell_generator(seed, name, "faults-ref"))
        ref_gen = cell_generator(seed, name, "program-ref")
        ref = _program_cells(ref, None, cond.spec, noise, ref_gen, ref_faults)
    return replace(cond, G=G, ref=ref)


def read(cond: Conductances, noise: DeviceNoise, gen: torch.Generator) -> Conductances:
    """One read of every cell: G_read = G·(1 + ρ·N(0, 1)), fresh per read, not clipped."""
    if noise.read == 0:
        return cond

    def draw(t: Tensor) -> Tensor:
        return t * (1 + noise.read * _randn(t, gen))

    return replace(cond, G=draw(cond.G), ref=None if cond.ref is None else draw(cond.ref))


def read_sigma(cond: Conductances, noise: DeviceNoise) -> tuple[Tensor, Tensor | None]:
    """Std, in levels, of what :func:`read` adds to each read-back level (Gaussian, exact).

    Per weight ρ/Δg·sqrt(Σ_{s,p} 4^{cs}·G²_{s,p}); for the offset mapping also per
    reference cell ρ/Δg·2^{c(S−1)}·G^ref, a draw shared by the weights of its row in one
    crossbar and subtracted. Lets a chip draw one number per weight per read.
    """
    dg = delta_g(cond.spec)
    var = torch.einsum("s,sp...->...", slice_significance(cond.spec, 2, cond.G.device), cond.G**2)
    per = noise.read / dg * var.sqrt()
    if cond.ref is None:
        return per, None
    top = 2.0 ** (cond.spec.cell_bits * (cond.spec.slices - 1))
    return per, noise.read / dg * top * cond.ref
