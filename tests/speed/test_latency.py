"""Latency measurement: structure, statistics, interleaving, threads and modes restored.

Timing values of real runs are never asserted: a fake clock, advanced by the
models themselves, makes every "call" take a known time.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from dualprune.errors import ConfigError
from dualprune.speed.latency import (
    LatencyComparison,
    LatencyResult,
    Timing,
    batch_of,
    compare_latency,
    measure_latency,
    quantile,
    thread_count,
    time_calls,
)


class FakeClock:
    """Seconds that pass only when a model says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Costly(nn.Module):
    """Advances the clock by ``cost`` seconds per sample; records what it saw."""

    def __init__(self, clock: FakeClock, cost: float, log: list[str] | None = None, tag: str = ""):
        super().__init__()
        self.clock, self.cost, self.log, self.tag = clock, cost, log, tag
        self.lin = nn.Linear(3, 2)
        self.seen: list[tuple[bool, bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.cost * x.shape[0]
        self.seen.append(
            (self.training, torch.is_inference_mode_enabled(), torch.get_num_threads())
        )
        if self.log is not None:
            self.log.append(self.tag)
        return self.lin(x)


def test_measure_latency_structure_and_exact_statistics() -> None:
    clock = FakeClock()
    model = Costly(clock, cost=1e-3)
    r = measure_latency(
        model,
        torch.randn(2, 3),
        batch_sizes=(4, 1),
        repeats=5,
        warmup=1,
        min_time=0.01,
        clock=clock,
    )
    assert isinstance(r, LatencyResult)
    assert list(r.timings) == [4, 1]  # the order given
    for b, t in r.timings.items():
        assert t.batch_size == b and t.repeats == 5 and len(t.samples_ms) == 5
        assert t.median_ms == pytest.approx(b * 1.0)  # 1 ms per sample, exactly
        assert t.per_sample_ms == pytest.approx(1.0)
        assert t.p25_ms <= t.median_ms <= t.p75_ms
        assert t.loops * b * 1e-3 >= 0.01  # a repeat lasts at least min_time
    assert r.median_ms(4) == pytest.approx(4.0)
    d = r.as_dict()
    json.dumps(d)
    assert [t["batch_size"] for t in d["timings"]] == [4, 1]
    assert "median ms" in str(r) and "model" in str(r)


def test_compare_speedups_macs_and_table() -> None:
    clock = FakeClock()
    models = {
        "dense": Costly(clock, 2e-3),
        "sparse": Costly(clock, 1e-3),
        "tiny": Costly(clock, 4e-3),
    }
    c = compare_latency(
        models,
        torch.randn(1, 3),
        batch_sizes=(1, 8),
        repeats=3,
        min_time=0.0,
        macs={"dense": 100.0, "sparse": 25.0},
        clock=clock,
    )
    assert isinstance(c, LatencyComparison)
    assert c.baseline == "dense" and list(c.results) == ["dense", "sparse", "tiny"]
    assert c.batch_sizes == [1, 8]
    assert c.speedup("dense", 8) == pytest.approx(1.0)
    assert c.speedup("sparse", 1) == pytest.approx(2.0)
    assert c.speedup("tiny", 8) == pytest.approx(0.5)
    assert c.macs_ratio("sparse") == pytest.approx(4.0)
    assert c.macs_ratio("tiny") is None  # no MACs given for it
    d = c.as_dict()
    json.dumps(d)
    assert d["variants"]["sparse"]["speedup"]["1"] == pytest.approx(2.0)
    assert d["variants"]["sparse"]["macs_ratio"] == pytest.approx(4.0)
    text = str(c)
    assert "MACs ratio" in text and "4.00×" in text and "50%" in text  # 2× of 4× realised


def test_variants_are_interleaved_round_robin_with_rotation() -> None:
    clock, log = FakeClock(), []
    models = {k: Costly(clock, 1e-3, log, k) for k in "abc"}
    compare_latency(
        models, torch.randn(1, 3), batch_sizes=(1,), warmup=0, repeats=4, min_time=0.0, clock=clock
    )
    assert log[:3] == ["a", "b", "c"]  # calibration, one call each
    rounds = [log[3 + 3 * i : 6 + 3 * i] for i in range(4)]
    assert rounds == [list("abc"), list("bca"), list("cab"), list("abc")]


def test_eval_inference_mode_and_threads_are_restored() -> None:
    clock = FakeClock()
    model = Costly(clock, 1e-3)
    model.train()
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    measure_latency(
        model,
        torch.randn(1, 3),
        batch_sizes=(2,),
        threads=target,
        repeats=2,
        warmup=1,
        min_time=0.0,
        clock=clock,
    )
    assert all(seen == (False, True, target) for seen in model.seen)
    assert model.training and model.lin.training  # flags restored
    assert torch.get_num_threads() == before


def test_threads_restored_after_an_error() -> None:
    before = torch.get_num_threads()

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom(), torch.randn(1, 3), threads=1 if before != 1 else 2)
    assert torch.get_num_threads() == before


def test_real_clock_smoke() -> None:
    r = measure_latency(nn.Linear(4, 2), torch.randn(1, 4), repeats=2, warmup=1, min_time=0.0)
    assert all(t.median_ms > 0 and t.loops >= 1 for t in r.timings.values())


def test_batch_of_cycles_through_the_rows() -> None:
    x = torch.arange(6.0).view(3, 2)
    b = batch_of(x, 5)
    assert b.shape == (5, 2) and b.is_contiguous()
    assert torch.equal(b[:, 0], torch.tensor([0.0, 2.0, 4.0, 0.0, 2.0]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_sizes": (0,)}, "batch size=0"),
        ({"batch_sizes": (1, 1)}, "distinct"),
        ({"batch_sizes": ()}, "non-empty"),
        ({"repeats": 0}, "repeats=0"),
        ({"warmup": -1}, "warmup=-1"),
        ({"threads": 0}, "threads=0"),
        ({"min_time": -1.0}, "min_time"),
        ({"macs": {"other": 1.0}}, "no variant"),
        ({"macs": {"m": 0}}, "positive"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    before = torch.get_num_threads()
    with pytest.raises(ConfigError, match=match):
        compare_latency({"m": nn.Linear(3, 2)}, torch.randn(1, 3), **kwargs)
    assert torch.get_num_threads() == before


def test_errors_on_models_and_inputs() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        compare_latency({}, torch.randn(1, 3))
    with pytest.raises(ConfigError, match="not an nn.Module"):
        compare_latency({"m": lambda x: x}, torch.randn(1, 3))  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="batch dimension"):
        measure_latency(nn.Linear(3, 2), [1.0, 2.0, 3.0])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="0 dimensions"):
        measure_latency(nn.Linear(3, 2), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="nothing to time"):
        time_calls({})


def test_thread_count_yields_and_restores() -> None:
    before = torch.get_num_threads()
    with thread_count(None) as n:
        assert n == before
    with thread_count(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


@given(st.lists(st.floats(0, 1e3), min_size=1, max_size=30), st.floats(0, 1), st.floats(0, 1))
def test_quantile_properties(values: list[float], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    assert min(values) <= quantile(values, lo) <= quantile(values, hi) <= max(values)
    assert quantile(values, 0.5) == pytest.approx(statistics.median(values))


def test_timing_from_seconds() -> None:
    t = Timing.from_seconds(2, [0.004, 0.001, 0.002, 0.003], loops=7)
    assert t.median_ms == pytest.approx(2.5) and t.loops == 7
    assert t.p25_ms == pytest.approx(1.75) and t.p75_ms == pytest.approx(3.25)
    assert t.per_sample_ms == pytest.approx(1.25)
