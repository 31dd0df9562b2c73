"""search_widths: candidates in the MACs band, the fastest chosen, widths applied exactly."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from dualprune.errors import ConfigError
from dualprune.graph import channel_groups
from dualprune.size.metrics import dense_macs
from dualprune.speed.widths import (
    _choices,
    _cuts,
    _estimate,
    _narrowed,
    search_widths,
    width_ratios,
)


class TinyRes(nn.Module):
    """Stem 8 channels, one residual block at 8, a 16-channel conv, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bna = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bnb = nn.BatchNorm2d(8)
        self.up = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bnu = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(h + self.bnb(self.b(torch.relu(self.bna(self.a(h))))))
        h = torch.relu(self.bnu(self.up(h)))
        return self.fc(h.mean((2, 3)))


def ticking(step: float = 1e-3):
    """A clock that advances ``step`` seconds per reading: every call costs the same."""
    t = itertools.count()
    return lambda: next(t) * step


def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyRes().eval()


X = torch.randn(2, 3, 8, 8)


def macs(m: nn.Module) -> float:
    return float(sum(dense_macs(m, X).values()))


def test_choices_are_multiples_and_the_full_width() -> None:
    assert _choices(16, 4) == [4, 8, 12, 16]
    assert _choices(10, 4) == [4, 8, 10]
    assert _choices(3, 8) == [3]


def test_candidates_lie_in_the_band_and_the_fastest_wins() -> None:
    m = model()
    found = search_widths(
        m,
        X,
        macs_ratio=1.5,
        slack=1.0,
        multiple_of=4,
        batch_size=2,
        repeats=2,
        ignore="fc",
        min_time=0,
        clock=ticking(),
    )
    assert found.candidates and found.best in found.candidates
    assert found.best.median_ms == min(c.median_ms for c in found.candidates)
    base = macs(m)
    assert found.dense_macs == pytest.approx(base)
    for c in found.candidates:
        assert 1.5 <= c.macs_ratio <= 3.0
        assert set(c.widths) == {8, 16}
        small = _narrowed(m, X, channel_groups(m, X, ignore="fc"), c.widths)
        assert macs(small) == pytest.approx(c.macs)  # the MACs of exactly these widths
        assert c.realised == pytest.approx(c.speedup / c.macs_ratio)
    assert "<- fastest" in str(found) and found.as_dict()["best"]["widths"]


def test_the_macs_estimate_is_exact_on_every_candidate() -> None:
    m = model()
    groups = channel_groups(m, X, ignore="fc")
    per_layer, cuts = dense_macs(m, X), _cuts(groups)
    for k8, k16 in itertools.product(_choices(8, 4), _choices(16, 4)):
        widths = {8: k8, 16: k16}
        assert _estimate(per_layer, cuts, widths) == pytest.approx(
            macs(_narrowed(m, X, groups, widths))
        )


def test_widths_are_applied_to_every_group() -> None:
    m = model()
    groups = channel_groups(m, X, ignore="fc")
    small = _narrowed(m, X, groups, {8: 4, 16: 8})
    assert small.stem.out_channels == 4 and small.a.out_channels == 4
    assert small.up.out_channels == 8 and small.fc.in_features == 8
    assert width_ratios(groups, {8: 2, 16: 4}) == [0.75] * len(groups)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"macs_ratio": 1.0}, "macs_ratio=1.0 must be a number > 1"),
        ({"slack": -1}, "slack=-1"),
        ({"multiple_of": 0}, "multiple_of"),
        ({"max_candidates": 0}, "max_candidates=0"),
        ({"macs_ratio": 1000.0, "multiple_of": 4}, "no widths (multiples of 4) cut MACs by 1000"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r".*") as info:
        search_widths(model(), X, ignore="fc", min_time=0, clock=ticking(), **kwargs)
    assert message in str(info.value)


def test_width_ratios_errors() -> None:
    groups = channel_groups(model(), X, ignore="fc")
    with pytest.raises(ConfigError, match="no width for the 16-channel group"):
        width_ratios(groups, {8: 4})
    with pytest.raises(ConfigError, match="must be an int in 1..8"):
        width_ratios(groups, {8: 9, 16: 8})
