"""Measured inference latency: one model, or several variants timed side by side.

MACs (docs/algorithms.md §4) say how much arithmetic a compressed model saves;
this module measures how much *time* it saves on the machine at hand, which is
what a user of the model gets. The procedure, for every batch size:

1. eval mode and ``torch.inference_mode``; a fixed thread count
   (``torch.set_num_threads(threads)``), restored afterwards with the modules'
   train/eval flags;
2. warm-up calls, then calibration: the number of calls per repeat doubles until
   one repeat lasts at least ``min_time`` (so the clock's resolution never shows);
3. ``repeats`` timed repeats of that many calls. With several variants the
   repeats are interleaved round-robin (and the order rotates every round), so
   that machine noise — another process, a frequency change — hits all alike;
4. the median, 25th and 75th percentile of the per-call times.

Every call runs the full forward pass on the same input tensor; nothing is
cached between calls (the same tensor stays warm in the CPU's caches, as a
serving loop reusing its input buffer would).

Speedups are ratios of medians against the first variant; next to them,
:class:`LatencyComparison` shows the MACs ratio the caller passes, and how much
of that theoretical speedup the measurement realises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dualprune.errors import ConfigError

__all__ = [
    "LatencyComparison",
    "LatencyResult",
    "Timing",
    "batch_of",
    "compare_latency",
    "measure_latency",
    "quantile",
    "thread_count",
    "time_calls",
]

Clock = Callable[[], float]


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of ``values`` with linear interpolation between order statistics."""
    if not values:
        raise ConfigError("quantile of no values; time at least one repeat")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Timing:
    """Per-call latency of one model at one batch size, in milliseconds.

    ``median_ms`` is the median over ``repeats`` repeats of ``loops`` calls each;
    ``p25_ms``/``p75_ms`` bound the interquartile range. ``samples_ms`` keeps
    the per-call time of every repeat.
    """

    batch_size: int
    median_ms: float
    p25_ms: float
    p75_ms: float
    repeats: int
    loops: int
    samples_ms: tuple[float, ...]

    @classmethod
    def from_seconds(cls, batch_size: int, samples_s: Sequence[float], loops: int) -> Timing:
        """Summarise per-call times in seconds (one per repeat)."""
        ms = tuple(1e3 * s for s in samples_s)
        return cls(
            batch_size=batch_size,
            median_ms=quantile(ms, 0.5),
            p25_ms=quantile(ms, 0.25),
            p75_ms=quantile(ms, 0.75),
            repeats=len(ms),
            loops=loops,
            samples_ms=ms,
        )

    @property
    def per_sample_ms(self) -> float:
        """Median time per sample: ``median_ms / batch_size``."""
        return self.median_ms / self.batch_size

    def as_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready)."""
        return {
            "batch_size": self.batch_size,
            "median_ms": self.median_ms,
            "p25_ms": self.p25_ms,
            "p75_ms": self.p75_ms,
            "per_sample_ms": self.per_sample_ms,
            "repeats": self.repeats,
            "loops": self.loops,
            "samples_ms": list(self.samples_ms),
        }


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one model per batch size, measured with ``threads`` threads."""

    name: str
    threads: int
    timings: dict[int, Timing]

    def median_ms(self, batch_size: int) -> float:
        """Median milliseconds per call at ``batch_size``."""
        return self.timings[batch_size].median_ms

    def as_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready): ``{"name", "threads", "timings": [...]}``."""
        return {
            "name": self.name,
            "threads": self.threads,
            "timings": [t.as_dict() for t in self.timings.values()],
        }

    def __str__(self) -> str:
        rows = [f"{self.name} ({self.threads} thread{'s' if self.threads != 1 else ''})"]
        rows.append(f"{'batch':>6} {'median ms':>10} {'IQR ms':>17} {'ms/sample':>10}")
        for b, t in self.timings.items():
            iqr = f"{t.p25_ms:.4g}–{t.p75_ms:.4g}"
            rows.append(f"{b:>6} {t.median_ms:>10.4g} {iqr:>17} {t.per_sample_ms:>10.4g}")
        return "\n".join(rows)


@dataclass(frozen=True)
class LatencyComparison:
    """Latency of several variants of a model, timed interleaved, against ``baseline``.

    ``macs`` (optional) holds MACs per sample of each variant as the caller
    counted them; the theoretical speedup of a variant is then
    MACs(baseline) / MACs(variant), and ``realised`` = measured / theoretical.
    """

    results: dict[str, LatencyResult]
    baseline: str
    macs: dict[str, float] | None = None

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes measured, in the order given."""
        return list(self.results[self.baseline].timings)

    def speedup(self, name: str, batch_size: int) -> float:
        """Median latency of the baseline / median latency of ``name`` at ``batch_size``."""
        base = self.results[self.baseline].median_ms(batch_size)
        return base / self.results[name].median_ms(batch_size)

    def macs_ratio(self, name: str) -> float | None:
        """MACs(baseline) / MACs(name), or None without MACs for both."""
        if not self.macs or name not in self.macs or self.baseline not in self.macs:
            return None
        return self.macs[self.baseline] / self.macs[name]

    def as_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready): results, speedups and MACs ratios per variant."""
        variants = {}
        for name, res in self.results.items():
            ratio = self.macs_ratio(name)
            variants[name] = {
                **res.as_dict(),
                "macs": None if not self.macs else self.macs.get(name),
                "macs_ratio": ratio,
                "speedup": {str(b): self.speedup(name, b) for b in self.batch_sizes},
            }
        return {"baseline": self.baseline, "variants": variants}

    def __str__(self) -> str:
        threads = self.results[self.baseline].threads
        head = (
            f"{'variant':<14} {'batch':>5} {'median ms':>10} {'IQR ms':>17} "
            f"{'speedup':>8} {'MACs ratio':>10} {'realised':>8}"
        )
        rows = [f"latency vs '{self.baseline}', {threads} thread(s)", head]
        for b in self.batch_sizes:
            for name, res in self.results.items():
                t = res.timings[b]
                s = self.speedup(name, b)
                ratio = self.macs_ratio(name)
                macs = "—" if ratio is None else f"{ratio:.2f}×"
                real = "—" if ratio is None else f"{100 * s / ratio:.0f}%"
                iqr = f"{t.p25_ms:.4g}–{t.p75_ms:.4g}"
                rows.append(
                    f"{name:<14} {b:>5} {t.median_ms:>10.4g} {iqr:>17} "
                    f"{s:>7.2f}× {macs:>10} {real:>8}"
                )
        return "\n".join(rows)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not an integer >= {minimum}")
    return value


@contextmanager
def thread_count(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the old count after.

    ``None`` keeps the current count. Yields the count in effect.
    """
    old = torch.get_num_threads()
    if threads is not None:
        _check_int("threads", threads, 1)
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


@contextmanager
def _eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Every module in eval mode for the block; each one's train/eval flags restored after."""
    saved = [[(m, m.training) for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for flags in saved:
            for m, training in flags:
                m.training = training


def batch_of(example_input: Tensor, batch_size: int) -> Tensor:
    """A batch of ``batch_size`` samples cycling through the rows of ``example_input``.

    Raises:
        ConfigError: ``example_input`` is not a tensor with a batch dimension.
    """
    if not isinstance(example_input, Tensor) or example_input.dim() == 0:
        raise ConfigError(
            f"example_input must be a tensor with a batch dimension, got "
            f"{type(example_input).__name__}"
            + (" of 0 dimensions" if isinstance(example_input, Tensor) else "")
        )
    n = example_input.shape[0]
    if n == 0:
        raise ConfigError("example_input has an empty batch dimension; give at least one sample")
    index = torch.arange(batch_size, device=example_input.device) % n
    return example_input.index_select(0, index).contiguous()


def time_calls(
    calls: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 3,
    repeats: int = 20,
    min_time: float = 0.01,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> dict[str, tuple[list[float], int]]:
    """Seconds per call of every callable: ``(one time per repeat, calls per repeat)``.

    Warm-up, calibration (calls per repeat double until a repeat lasts
    ``min_time`` seconds), then ``repeats`` repeats interleaved round-robin,
    rotating the order each round. ``sync`` (e.g. ``torch.cuda.synchronize``)
    runs before every clock read after calls.

    Raises:
        ConfigError: no callables, or a count or ``min_time`` out of range.
    """
    if not calls:
        raise ConfigError("nothing to time: give at least one model")
    _check_int("warmup", warmup, 0)
    _check_int("repeats", repeats, 1)
    if not isinstance(min_time, (int, float)) or not min_time >= 0:
        raise ConfigError(f"min_time={min_time!r} is not a number of seconds >= 0")
    done = sync or (lambda: None)

    def run(f: Callable[[], object], n: int) -> float:
        t0 = clock()
        for _ in range(n):
            f()
        done()
        return clock() - t0

    for f in calls.values():
        for _ in range(warmup):
            f()
    done()
    loops = {}
    for name, f in calls.items():
        n = 1
        while n < 1_000_000 and (elapsed := run(f, n)) < min_time:
            n = 2 * n if elapsed <= 0 else max(2 * n, math.ceil(1.2 * n * min_time / elapsed))
        loops[name] = n
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(run(calls[name], loops[name]) / loops[name])
    return {name: (samples[name], loops[name]) for name in names}


def compare_latency(
    models: Mapping[str, nn.Module],
    example_input: Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = 1,
    warmup: int = 3,
    repeats: int = 20,
    min_time: float = 0.01,
    macs: Mapping[str, float] | None = None,
    clock: Clock = time.perf_counter,
) -> LatencyComparison:
    """Time several variants of a model interleaved; speedups are against the first.

    Args:
        models: name → module, e.g. ``{"dense": m, "compacted": c, "sparse": s}``;
            the first is the baseline. Modules are put in eval mode while timed
            (their flags are restored).
        example_input: a batch (any size); batches of each size cycle through its rows.
        batch_sizes: batch sizes to time, each ≥ 1.
        threads: ``torch.set_num_threads`` while timing (restored after); None keeps it.
        warmup: calls per variant before calibration.
        repeats: timed repeats per variant and batch size.
        min_time: seconds a repeat lasts at least (calls per repeat are calibrated).
        macs: MACs per sample of each variant (as counted by the caller) for the
            theoretical speedup column; keys must be names of ``models``.
        clock: seconds counter (``time.perf_counter``); replaceable in tests.

    Returns:
        A :class:`LatencyComparison` (``str()`` is a table, ``as_dict()`` plain data).

    Raises:
        ConfigError: no models, a bad batch size, thread count, count or MACs entry.
    """
    if not models:
        raise ConfigError("compare_latency needs at least one model")
    for name, m in models.items():
        if not isinstance(m, nn.Module):
            raise ConfigError(f"variant '{name}' is a {type(m).__name__}, not an nn.Module")
    sizes = [_check_int("batch size", b, 1) for b in batch_sizes]
    if not sizes or len(set(sizes)) != len(sizes):
        raise ConfigError(f"batch_sizes={tuple(batch_sizes)!r} must be non-empty and distinct")
    if macs is not None:
        for name, value in macs.items():
            if name not in models:
                raise ConfigError(
                    f"macs has '{name}', which is no variant; variants: " + ", ".join(models)
                )
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"macs['{name}']={value!r} is not a positive number")
    names = list(models)
    batch_of(example_input, 1)  # validates example_input
    sync = torch.cuda.synchronize if example_input.device.type == "cuda" else None
    per_batch: dict[int, dict[str, tuple[list[float], int]]] = {}
    with thread_count(threads) as used, _eval_mode(list(models.values())), torch.inference_mode():
        for b in sizes:
            x = batch_of(example_input, b)
            calls = {name: (lambda m=models[name], x=x: m(x)) for name in names}
            per_batch[b] = time_calls(
                calls, warmup=warmup, repeats=repeats, min_time=min_time, clock=clock, sync=sync
            )
    results = {
        name: LatencyResult(
            name,
            used,
            {b: Timing.from_seconds(b, *per_batch[b][name]) for b in sizes},
        )
        for name in names
    }
    return LatencyComparison(results, names[0], dict(macs) if macs is not None else None)


def measure_latency(
    model: nn.Module,
    example_input: Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = 1,
    warmup: int = 3,
    repeats: int = 20,
    min_time: float = 0.01,
    clock: Clock = time.perf_counter,
) -> LatencyResult:
    """Latency of one model per batch size (see :func:`compare_latency` for the arguments).

    Example:
        >>> r = measure_latency(model, torch.zeros(1, 1, 28, 28), batch_sizes=(1, 64))
        >>> r.median_ms(64)  # median milliseconds per forward of a batch of 64
    """
    comparison = compare_latency(
        {"model": model},
        example_input,
        batch_sizes=batch_sizes,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        min_time=min_time,
        clock=clock,
    )
    return comparison.results["model"]
