"""Channel widths that are fast on this machine: a measured search (docs/speed.md).

Removing channels cuts MACs, but a CPU convolution kernel does not run every
shape equally well: on an AVX-512 core a 3×3 conv of 16 → 8 channels at 32×32
can take as long as 16 → 16, and 24 channels run at about half the MACs per
second of 32. So two plans with the same MACs can differ by 1.5× in measured
speed. This module picks the widths by measuring them.

Let the model's coupled channel groups (:func:`~dualprune.graph.channel_groups`)
fall into classes by their channel count C (in a CIFAR ResNet: 16, 32, 64, one
per stage; the block-internal groups share their stage's class). A candidate
gives every class c one kept width k_c ∈ {m, 2m, …} ∪ {C_c} (m = ``multiple_of``)
and every group of the class keeps its k_c channels of largest magnitude. Among
the candidates with MACs(dense)/MACs(candidate) ≥ ``macs_ratio`` and at most
``macs_ratio · (1 + slack)``, each compacted candidate is timed interleaved with
the dense model (:func:`~dualprune.speed.latency.compare_latency`) and the fastest
wins. Only the shapes matter for the timing, so the search runs on any weights;
apply the chosen widths with :meth:`WidthSearch.ratios` (a channel ratio per
group) to whatever solver or projection prunes the real model.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dualprune.compaction.remove import CompactionWarning, compact
from dualprune.constraints.groups import ChannelGroup, coupled_masks
from dualprune.errors import ConfigError
from dualprune.graph import channel_groups
from dualprune.plan import module_of
from dualprune.size.metrics import dense_macs
from dualprune.speed.latency import compare_latency

__all__ = ["WidthCandidate", "WidthSearch", "search_widths", "width_ratios"]


@dataclass(frozen=True)
class WidthCandidate:
    """One assignment of kept widths, its MACs and its measured latency.

    Attributes:
        widths: ``{class channel count C: kept channels k}``.
        macs: MACs per sample of the compacted model (FlopCounterMode).
        macs_ratio: MACs(dense) / ``macs``.
        median_ms: Median latency at the search's batch size.
        speedup: Median latency of the dense model / ``median_ms``, timed interleaved.
    """

    widths: dict[int, int]
    macs: float
    macs_ratio: float
    median_ms: float
    speedup: float

    @property
    def realised(self) -> float:
        """Measured speedup / MACs ratio: the share of the theoretical speedup kept."""
        return self.speedup / self.macs_ratio

    def label(self) -> str:
        """The widths as ``k1/k2/…`` in increasing order of C (e.g. ``8/32/32``)."""
        return _label(self.widths)


@dataclass(frozen=True)
class WidthSearch:
    """The result of :func:`search_widths`: the fastest candidate and all timed ones."""

    best: WidthCandidate
    candidates: tuple[WidthCandidate, ...]
    dense_macs: float
    dense_ms: float
    batch_size: int
    threads: int

    def ratios(self, groups: Sequence[ChannelGroup]) -> list[float]:
        """A channel ratio per group (for ``coupled_masks`` / ``project_coupled``)."""
        return width_ratios(groups, self.best.widths)

    def as_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready)."""

        def row(c: WidthCandidate) -> dict[str, object]:
            return {
                "widths": {str(k): v for k, v in c.widths.items()},
                "macs": c.macs,
                "macs_ratio": c.macs_ratio,
                "median_ms": c.median_ms,
                "speedup": c.speedup,
                "realised": c.realised,
            }

        return {
            "best": row(self.best),
            "candidates": [row(c) for c in self.candidates],
            "dense_macs": self.dense_macs,
            "dense_ms": self.dense_ms,
            "batch_size": self.batch_size,
            "threads": self.threads,
        }

    def __str__(self) -> str:
        head = f"{'widths':<14} {'MACs ratio':>10} {'median ms':>10} {'speedup':>8} {'realised':>8}"
        rows = [
            f"width search at batch {self.batch_size}, {self.threads} thread(s); "
            f"dense {self.dense_ms:.4g} ms",
            head,
        ]
        for c in sorted(self.candidates, key=lambda c: c.median_ms):
            mark = "  <- fastest" if c is self.best else ""
            rows.append(
                f"{c.label():<14} {c.macs_ratio:>9.2f}× {c.median_ms:>10.4g} "
                f"{c.speedup:>7.2f}× {100 * c.realised:>7.0f}%{mark}"
            )
        return "\n".join(rows)


def _label(widths: dict[int, int]) -> str:
    """``k1/k2/…`` in increasing order of the class channel count C."""
    return "/".join(str(widths[c]) for c in sorted(widths))


def width_ratios(groups: Sequence[ChannelGroup], widths: dict[int, int]) -> list[float]:
    """Channel ratio 1 − k_C/C for every group, from ``{C: k_C}``.

    Raises:
        ConfigError: A group's channel count has no width, or a width is outside 1..C.
    """
    out = []
    for g in groups:
        if g.channels not in widths:
            raise ConfigError(
                f"no width for the {g.channels}-channel group '{g.root}'; "
                f"widths are given for {sorted(widths)}"
            )
        k = widths[g.channels]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= g.channels:
            raise ConfigError(
                f"width {k!r} for {g.channels}-channel groups must be an int in 1..{g.channels}"
            )
        out.append(1.0 - k / g.channels)
    return out


def _choices(channels: int, m: int) -> list[int]:
    """Kept widths of a class: the multiples of m below C, and C itself."""
    return sorted({*range(m, channels, m), channels})


def _narrowed(
    model: nn.Module, x: Tensor, groups: Sequence[ChannelGroup], widths: dict[int, int]
) -> nn.Module:
    """A compacted copy of ``model`` keeping ``widths`` channels per group (by magnitude)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = coupled_masks(params, groups, width_ratios(groups, widths))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompactionWarning)
        return compact(model, x, masks)


#: Relative margin of the MACs estimate's prefilter around the band.
_MARGIN = 0.05


def _cuts(groups: Sequence[ChannelGroup]) -> dict[str, dict[int, int]]:
    """``{layer: {weight dim: class C of the group that cuts it}}``."""
    cuts: dict[str, dict[int, int]] = {}
    for g in groups:
        for s in g.slices:
            if s.role == "weight":
                cuts.setdefault(module_of(s.param), {})[s.dim] = g.channels
    return cuts


def _estimate(
    per_layer: dict[str, int], cuts: dict[str, dict[int, int]], widths: dict[int, int]
) -> float:
    """MACs with ``widths``: each layer's MACs scale with its kept weight entries.

    A layer's MACs are (weights) × (output positions), so keeping k of C channels
    along a cut weight dimension scales them by k/C; both dimensions multiply.
    """
    total = 0.0
    for layer, macs in per_layer.items():
        f = 1.0
        for c in cuts.get(layer, {}).values():
            f *= widths[c] / c
        total += macs * f
    return max(total, 1.0)


def _total_macs(model: nn.Module, x: Tensor) -> float:
    return float(sum(dense_macs(model, x).values()))


def search_widths(
    model: nn.Module,
    example_input: Tensor,
    *,
    macs_ratio: float = 2.0,
    slack: float = 0.15,
    multiple_of: int = 8,
    batch_size: int = 64,
    threads: int | None = 1,
    repeats: int = 7,
    min_time: float = 0.01,
    ignore: str | Sequence[str] = (),
    max_candidates: int = 24,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> WidthSearch:
    """Time the candidate widths that cut MACs by ``macs_ratio`` and return the fastest.

    Args:
        model: The network (its weights only decide which channels a candidate keeps).
        example_input: A floating batch for tracing and timing (batch 2 is enough).
        macs_ratio: Smallest MACs(dense)/MACs(candidate) a candidate must reach (> 1).
        slack: Candidates may cut MACs up to ``macs_ratio · (1 + slack)``; the closest
            ``max_candidates`` to ``macs_ratio`` are timed.
        multiple_of: Kept widths are multiples of this (or the full width).
        batch_size: Batch size of the timing.
        threads: ``torch.set_num_threads`` while timing; None keeps the current one.
        repeats: Timed repeats per candidate (median reported).
        min_time: Seconds a timed repeat lasts at least (calls per repeat are calibrated).
        ignore: Modules whose output channels stay (e.g. the classifier ``"fc"``).
        max_candidates: Most candidates timed.
        progress: Called with one line per timed candidate (e.g. ``print``).
        clock: Seconds counter for the timing (replaceable in tests).

    Returns:
        A :class:`WidthSearch`; ``str()`` is a table of the timed candidates.

    Raises:
        ConfigError: A bad argument, or no candidate reaches ``macs_ratio``.

    Example:
        >>> found = dp.search_widths(model, torch.randn(2, 3, 32, 32), macs_ratio=2,
        ...                          ignore="fc")
        >>> masks = coupled_masks(params, groups, found.ratios(groups))
    """
    if isinstance(macs_ratio, bool) or not isinstance(macs_ratio, (int, float)) or macs_ratio <= 1:
        raise ConfigError(f"macs_ratio={macs_ratio!r} must be a number > 1")
    if isinstance(slack, bool) or not isinstance(slack, (int, float)) or slack < 0:
        raise ConfigError(f"slack={slack!r} must be a number ≥ 0")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ConfigError(f"search_widths: multiple_of={multiple_of!r} must be an int ≥ 1")
    m = multiple_of
    if (
        isinstance(max_candidates, bool)
        or not isinstance(max_candidates, int)
        or max_candidates < 1
    ):
        raise ConfigError(f"max_candidates={max_candidates!r} must be an int ≥ 1")
    x = example_input[:2]
    groups = channel_groups(model, x, ignore=ignore)
    classes = sorted({g.channels for g in groups})
    if not classes:
        raise ConfigError("search_widths: the model has no channel group to narrow")
    per_layer = dense_macs(model, x)
    base = float(sum(per_layer.values()))
    cuts = _cuts(groups)
    band = (macs_ratio, macs_ratio * (1 + slack))
    estimated = []
    for combo in itertools.product(*[_choices(c, m) for c in classes]):
        widths = dict(zip(classes, combo, strict=True))
        est = base / _estimate(per_layer, cuts, widths)
        if band[0] * (1 - _MARGIN) <= est <= band[1] * (1 + _MARGIN) and combo != tuple(classes):
            estimated.append((abs(est - macs_ratio), widths))
    estimated.sort(key=lambda e: e[0])
    scored: list[tuple[float, dict[int, int], nn.Module, float]] = []
    for _, widths in estimated:  # exact MACs of the compacted model decide
        small = _narrowed(model, x, groups, widths)
        macs = _total_macs(small, x)
        if band[0] <= base / macs <= band[1]:
            scored.append((base / macs, widths, small, macs))
            if len(scored) == max_candidates:
                break
    if not scored:
        raise ConfigError(
            f"search_widths: no widths (multiples of {m}) cut MACs by {macs_ratio}×–"
            f"{band[1]:.3g}×; raise slack or lower multiple_of"
        )
    variants: dict[str, nn.Module] = {"dense": model}
    for _, widths, small, _ in scored:
        variants[_label(widths)] = small
    latency = compare_latency(
        variants,
        example_input,
        batch_sizes=(batch_size,),
        threads=threads,
        repeats=repeats,
        min_time=min_time,
        clock=clock,
    )
    dense_ms = latency.results["dense"].median_ms(batch_size)
    candidates = []
    for ratio, widths, _, macs in scored:
        ms = latency.results[_label(widths)].median_ms(batch_size)
        cand = WidthCandidate(widths, macs, ratio, ms, dense_ms / ms)
        candidates.append(cand)
        if progress is not None:
            progress(f"{cand.label()}: {ratio:.2f}× fewer MACs, {ms:.4g} ms ({cand.speedup:.2f}×)")
    best = min(candidates, key=lambda c: c.median_ms)
    used = torch.get_num_threads() if threads is None else threads
    return WidthSearch(best, tuple(candidates), base, dense_ms, batch_size, used)
