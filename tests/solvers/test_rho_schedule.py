"""RhoSchedule: ρ_i(k) = min(ρ_max, ρ_i · factor(k)), a geometric warm-up, then γ per update."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualprune.solvers import RhoSchedule
from dualprune.solvers.penalty import layer_values

schedules = st.builds(
    RhoSchedule,
    growth=st.floats(1.0, 2.0),
    warmup=st.integers(0, 8),
    warmup_from=st.floats(1e-3, 1.0),
    max=st.none() | st.floats(1e-3, 1e3),
)


def test_values():
    assert [RhoSchedule().value(0.1, k) for k in range(3)] == [0.1, 0.1, 0.1]
    assert [RhoSchedule(growth=1.3).value(1e-3, k) for k in range(4)] == pytest.approx(
        [1e-3, 1.3e-3, 1.69e-3, 2.197e-3], rel=1e-14
    )
    s = RhoSchedule(growth=2.0, warmup=2, warmup_from=0.25, max=3.0)
    assert [s.value(1.0, k) for k in range(6)] == pytest.approx([0.25, 0.5, 1.0, 2.0, 3.0, 3.0])


@settings(max_examples=100, deadline=None)
@given(s=schedules, base=st.floats(1e-4, 10.0), k=st.integers(0, 40))
def test_properties(s, base, k):
    v, nxt = s.value(base, k), s.value(base, k + 1)
    assert v > 0
    assert nxt >= v * (1 - 1e-12)  # never decreases
    if s.max is not None:
        assert v <= s.max
    if s.max is None or s.value(base, k + 1) < s.max:
        if k >= s.warmup:  # growth γ per update after the warm-up
            assert nxt == pytest.approx(v * s.growth, rel=1e-12)
        else:  # a constant ratio warmup_from^(−1/warmup) per warm-up update
            assert nxt == pytest.approx(v * s.warmup_from ** (-1 / s.warmup), rel=1e-12)
    assert s.factor(s.warmup) == 1.0  # the ramp ends at ρ itself
    if s.warmup:
        assert s.factor(0) == pytest.approx(s.warmup_from, rel=1e-15)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(1e-6, 1e3), min_size=3, max_size=3),
    order=st.permutations(["conv*", "fc1", "*"]),
)
def test_layer_values_first_match_wins(values, order):
    layers = ["conv1", "conv2", "fc1", "fc2"]
    table = dict(zip(order, values, strict=True))
    got = layer_values(table, layers, "rho")
    for layer in layers:
        first = next(p for p in order if p in ("*", layer) or (p == "conv*" and "conv" in layer))
        assert got[layer] == table[first]


def test_a_long_run_stays_at_the_cap():
    """γ^k leaves the float range after a few thousand updates (per-batch cadence); max holds."""
    s = RhoSchedule(growth=1.3, max=10.0)
    assert s.value(1e-3, 3000) == 10.0
    assert s.value(1e-3, 10**6) == 10.0
    assert RhoSchedule(growth=1.3).value(1e-3, 3000) == float("inf")
