import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualprune.errors import UnknownNameError
from dualprune.train.schedules import SCHEDULES, make_schedule


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@given(total=st.integers(1, 5000))
def test_multiplier_is_in_unit_interval(name, total):
    f = make_schedule(name, total)
    for t in (0, total // 3, total // 2, total - 1):
        assert 0 < f(t) <= 1.0 + 1e-12


def test_cosine_endpoints_and_monotone():
    f = make_schedule("cosine", 100)
    values = [f(t) for t in range(101)]
    assert values[0] == 1.0 and math.isclose(values[100], 0.0, abs_tol=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_cosine_warmup_rises_linearly():
    f = make_schedule("cosine", 100, warmup=10)
    assert [round(f(t), 6) for t in range(3)] == [0.1, 0.2, 0.3]
    assert f(10) == 1.0


def test_step_decays_at_milestones():
    f = make_schedule("step", 100, milestones=(0.5, 0.75), gamma=0.1)
    assert f(49) == 1.0 and math.isclose(f(50), 0.1) and math.isclose(f(75), 0.01)


def test_onecycle_peaks_at_pct_start():
    f = make_schedule("onecycle", 1000, pct_start=0.3)
    peak = max(range(1000), key=f)
    assert peak == 300 and f(0) < 0.05 and f(999) < 1e-3


def test_unknown_schedule_names_known_ones():
    with pytest.raises(UnknownNameError, match="did you mean 'cosine'.*known: constant"):
        make_schedule("cosin", 10)
