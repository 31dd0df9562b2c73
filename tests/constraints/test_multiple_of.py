"""``multiple_of``: kept filter/channel counts rounded to what channel-blocked kernels like.

Checked against the reference sets of structure_sets.py (``kept_multiple`` is the
rule as docs/constraints.md states it): the support is feasible with the rounded
count, idempotent, optimal against brute force for that count, ties keep the
lower index; ``multiple_of=1`` is the plain rule bit for bit; the coupled-channel
functions follow the same rule on hand-built groups; bad values name the option.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from structure_sets import brute_best_joint, families, in_set, kept, kept_multiple

from dualprune import Plan
from dualprune.constraints import Sparsity, from_dict, kept_count
from dualprune.constraints.base import round_to_multiple
from dualprune.constraints.groups import (
    ChannelGroup,
    TiedSlice,
    coupled_masks,
    group_scores,
    keep_channels,
    project_coupled,
)
from dualprune.constraints.structures import (
    channel_mask,
    filter_mask,
    project_channel,
    project_filter,
)
from dualprune.errors import ConstraintError

STRUCTURES = ["filter", "channel"]
RATIOS = st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9, 0.99])
MULTIPLES = st.sampled_from([1, 2, 3, 4, 8])
VALUES = st.one_of(
    st.integers(-3, 3).map(float),  # ties and zeros
    st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32),
)


@st.composite
def case(draw, structure: str, tiny: bool = False):
    """(shape, options) with up to 9 filters/channels, so counts above and below m occur."""
    kernel = draw(st.sampled_from([(), (1,), (2,), (1, 1)] if tiny else [(), (2,), (3, 3)]))
    hi = 7 if tiny else 9
    groups = draw(st.integers(2 if structure == "channel" else 1, hi))
    other = draw(st.integers(1, 2))
    shape = (groups, other, *kernel) if structure == "filter" else (other, groups, *kernel)
    return shape, {"multiple_of": draw(MULTIPLES)}


def tensor(draw, shape, dtype=torch.float64):
    vals = draw(st.lists(VALUES, min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(vals, dtype=dtype).reshape(shape)


def kept_groups(mask: torch.Tensor, structure: str) -> torch.Tensor:
    """Which filters (dim 0) or channels (dim 1) the mask keeps."""
    dim = 0 if structure == "filter" else 1
    return mask.transpose(0, dim).reshape(mask.shape[dim], -1).any(1)


# ---- the count rule ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(count=st.integers(1, 70), m=st.integers(1, 20), data=st.data())
def test_count_is_the_nearest_allowed_one(count, m, data):
    k0 = data.draw(st.integers(0, count))
    k = round_to_multiple(k0, count, m)
    assert k == kept_multiple(k0, count, m)
    if m > 1:
        assert k == count or (k % m == 0 and m <= k <= count)
        assert k0 == 0 or k == count or abs(k - k0) <= max(m / 2, m - k0)
    assert round_to_multiple(count, count, m) == count  # ratio 0 keeps everything
    if k0 < count:  # never fewer kept for a larger k0 (a smaller ratio)
        assert round_to_multiple(k0 + 1, count, m) >= k


def test_examples_of_the_rule():
    # ResNet-20 stage widths 16/32/64 at ratio 0.3 (k0 = 11, 22, 45) with m = 8
    assert [kept_count(0.3, c, 8) for c in (16, 32, 64)] == [8, 24, 48]
    assert [round_to_multiple(k, 45, 8) for k in (0, 4, 11, 12, 41, 43, 45)] == [
        8, 8, 8, 16, 40, 45, 45,
    ]  # fmt: skip
    assert round_to_multiple(3, 6, 8) == 6  # C ≤ m: keep all
    assert kept_count(0.99, 5) == 0 and kept_count(0.99, 5, 2) == 2  # at least m


# ---- Sparsity(filter / channel, multiple_of=m) -------------------------------------------


@pytest.mark.parametrize("structure", STRUCTURES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_support_is_feasible_with_the_rounded_count(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    w = tensor(data.draw, shape, data.draw(st.sampled_from([torch.float32, torch.float64])))
    c = Sparsity(ratio, structure, **opts)
    mask = c.mask(w)
    assert in_set(mask, families(structure, shape, ratio, **opts))
    n, m = int(kept_groups(mask, structure).sum()), opts["multiple_of"]
    count = shape[0 if structure == "filter" else 1]
    assert n == count or n % m == 0
    z = c.project(w)
    assert torch.equal(z, torch.where(mask, w, torch.zeros((), dtype=w.dtype)))
    assert torch.equal(c.project(z), z)  # idempotent


@pytest.mark.parametrize("structure", STRUCTURES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_optimal_against_brute_force(structure, data):
    shape, opts = data.draw(case(structure, tiny=True))
    ratio = data.draw(RATIOS)
    w = tensor(data.draw, shape)
    fams = families(structure, shape, ratio, **opts)
    best = brute_best_joint(w, fams)
    c = Sparsity(ratio, structure, **opts)
    assert float((w[c.mask(w)] ** 2).sum()) == pytest.approx(best, rel=1e-12, abs=1e-12)
    z = c.project(w)
    assert float(((w - z) ** 2).sum()) == pytest.approx(float((w**2).sum()) - best, abs=1e-9)


@pytest.mark.parametrize("structure", STRUCTURES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_ties_keep_the_lower_index(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    ints = st.lists(st.integers(-1, 1), min_size=math.prod(shape), max_size=math.prod(shape))
    w = torch.tensor(data.draw(ints), dtype=torch.float32).reshape(shape)
    e = (w.double().reshape(-1) ** 2).tolist()
    expected = torch.zeros(w.numel(), dtype=torch.bool)
    for groups, k in families(structure, shape, ratio, **opts):
        scores = [sum(e[i] for i in g) for g in groups]
        for j in sorted(range(len(groups)), key=lambda j: (-scores[j], j))[:k]:
            expected[groups[j]] = True
    assert torch.equal(Sparsity(ratio, structure, **opts).mask(w).reshape(-1), expected)


@pytest.mark.parametrize("structure", STRUCTURES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_multiple_of_one_is_the_plain_rule_bit_for_bit(structure, data):
    shape, _ = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    w = tensor(data.draw, shape, torch.float32)
    plain, one = Sparsity(ratio, structure), Sparsity(ratio, structure, multiple_of=1)
    assert one == plain and one.to_dict() == plain.to_dict() and repr(one) == repr(plain)
    for a, b in ((one.project(w), plain.project(w)), (one.mask(w), plain.mask(w))):
        assert a.dtype == b.dtype and torch.equal(a, b)
    count = shape[0 if structure == "filter" else 1]
    assert int(kept_groups(plain.mask(w), structure).sum()) == kept(ratio, count)
    fns = (
        (filter_mask, project_filter) if structure == "filter" else (channel_mask, project_channel)
    )
    for fn in fns:
        assert torch.equal(fn(w, ratio, multiple_of=1), fn(w, ratio))


def test_resnet_widths_become_multiples_of_eight():
    torch.manual_seed(0)
    for c, want in ((16, 8), (32, 24), (64, 48)):
        w = torch.randn(c, 4, 3, 3)
        mask = Sparsity(0.3, "filter", multiple_of=8).mask(w)
        assert int(kept_groups(mask, "filter").sum()) == want
        mask = Sparsity(0.3, "channel", multiple_of=8).mask(w.transpose(0, 1))
        assert int(kept_groups(mask, "channel").sum()) == want


def test_the_option_travels_through_dicts_plans_and_with_ratio():
    c = Sparsity(0.5, "channel", multiple_of=8)
    assert c.to_dict() == {
        "type": "sparsity", "ratio": 0.5, "structure": "channel", "multiple_of": 8,
    }  # fmt: skip
    assert from_dict(c.to_dict()) == c
    assert c.with_ratio(0.7).options == {"multiple_of": 8}
    plan = Plan.from_dict(
        {"layers": {"conv*": {"type": "sparsity", "ratio": 0.5, "structure": "filter",
                              "multiple_of": 16}}}
    )  # fmt: skip
    assert plan.mapping["conv*"] == Sparsity(0.5, "filter", multiple_of=16)
    assert Plan.from_dict(plan.to_dict()).mapping == plan.mapping


# ---- coupled channel groups -------------------------------------------------------------


def _chain(channels: int) -> ChannelGroup:
    """producer.weight's output channels j tied to reader.weight's input channels (reversed)."""
    ident = tuple(range(channels))
    return ChannelGroup(
        root="producer",
        channels=channels,
        slices=(
            TiedSlice("producer.weight", 0, ident, ident, "weight"),
            TiedSlice("reader.weight", 1, ident, ident[::-1], "weight"),
        ),
    )


@settings(max_examples=80, deadline=None)
@given(channels=st.integers(1, 9), m=MULTIPLES, ratio=RATIOS, seed=st.integers(0, 2**16))
def test_coupled_groups_keep_the_best_rounded_count(channels, m, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    params = {
        "producer.weight": torch.randn(channels, 2, 2, generator=g, dtype=torch.float64),
        "reader.weight": torch.randn(3, channels, 2, generator=g, dtype=torch.float64),
    }
    group = _chain(channels)
    keep = keep_channels(params, group, ratio, multiple_of=m)
    k = kept_multiple(max(1, kept(ratio, channels)), channels, m)
    assert int(keep.sum()) == k
    assert k == channels or k % m == 0
    scores = group_scores(params, group)
    best = max(sum(scores[list(s)].tolist()) for s in itertools.combinations(range(channels), k))
    assert float(scores[keep].sum()) == pytest.approx(best, rel=1e-12)
    once = project_coupled(params, group, ratio, multiple_of=m)
    twice = project_coupled(once, group, ratio, multiple_of=m)
    assert all(torch.equal(once[n], twice[n]) for n in params)  # idempotent
    masks = coupled_masks(params, [group], ratio, multiple_of=m)
    assert int(masks["producer.weight"][:, 0, 0].sum()) == k
    if m == 1:
        assert torch.equal(keep, keep_channels(params, group, ratio))


# ---- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -8, 2.0, 8.5, "8", True, None])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_bad_values_name_the_option(structure, bad):
    with pytest.raises(ConstraintError, match=r"multiple_of=.* is not allowed; use a positive int"):
        Sparsity(0.5, structure, multiple_of=bad)
    params = {"producer.weight": torch.ones(4, 2), "reader.weight": torch.ones(3, 4)}
    with pytest.raises(ConstraintError, match=r"'producer': multiple_of=.* is not allowed") as e:
        coupled_masks(params, _chain(4), 0.5, multiple_of=bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("structure", ["irregular", "column", "nm", "block", "pattern"])
def test_structures_without_the_option_name_it(structure):
    with pytest.raises(
        ConstraintError, match=rf"Sparsity\({structure}\) has no option 'multiple_of'"
    ):
        Sparsity(0.5, structure, multiple_of=8)
    spec = {"type": "sparsity", "ratio": 0.5, "structure": structure, "multiple_of": 8}
    with pytest.raises(ConstraintError, match="no option 'multiple_of'"):
        from_dict(spec)
