"""Coupled: the set S_G over several tied tensors, its projection and plain data.

The groups here are written by hand (a producer's filters, a reader's input
channels, a flatten that gives every channel two reader inputs, BatchNorm), so
the properties run on many small shapes without tracing a model.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from structure_sets import kept, kept_multiple

from dualprune.constraints import ChannelGroup, Coupled, TiedSlice, is_chain
from dualprune.constraints.groups import ROLES, coupled_masks
from dualprune.errors import ConstraintError, UnknownNameError
from dualprune.solvers.coupled import JointSet


def group(C: int, root: str = "a") -> ChannelGroup:
    """a.weight (C, 3) filters, n.weight/n.bias (C,) BatchNorm, b.weight (2, C) and
    c.weight (2, 2C) reader inputs (channel j at positions 2j and 2j + 1)."""
    ids = tuple(range(C))
    return ChannelGroup(
        root=root,
        channels=C,
        slices=(
            TiedSlice(f"{root}.weight", 0, ids, ids, "weight"),
            TiedSlice("n.weight", 0, ids, ids, "norm"),
            TiedSlice("n.bias", 0, ids, ids, "norm"),
            TiedSlice("b.weight", 1, ids, ids, "weight"),
            TiedSlice(
                "c.weight", 1, tuple(range(2 * C)), tuple(j // 2 for j in range(2 * C)), "weight"
            ),
        ),
    )


def params(C: int, seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (C, 3), "n.weight": (C,), "n.bias": (C,), "b.weight": (2, C)}
    shapes["c.weight"] = (2, 2 * C)
    return {n: torch.randn(s, generator=g, dtype=dtype) for n, s in shapes.items()}


def channel_cost(p: dict[str, torch.Tensor], j: int, roles=("weight",)) -> float:
    """Σ of squares removed with channel j, over the given roles."""
    cost = float(p["a.weight"][j].pow(2).sum()) + float(p["b.weight"][:, j].pow(2).sum())
    cost += float(p["c.weight"][:, 2 * j : 2 * j + 2].pow(2).sum())
    if "norm" in roles:
        cost += float(p["n.weight"][j] ** 2 + p["n.bias"][j] ** 2)
    return cost


def alive(p: dict[str, torch.Tensor], C: int) -> list[int]:
    """Channels with a nonzero entry in some tied slice."""
    out = []
    for j in range(C):
        parts = [p["a.weight"][j], p["b.weight"][:, j], p["c.weight"][:, 2 * j : 2 * j + 2]]
        parts += [p["n.weight"][j : j + 1], p["n.bias"][j : j + 1]]
        if any(bool((t != 0).any()) for t in parts):
            out.append(j)
    return out


CASES = st.tuples(
    st.integers(2, 7),  # C
    st.floats(0.0, 0.95, exclude_max=False),  # ratio
    st.sampled_from([1, 2, 3, 8]),  # multiple_of
    st.integers(0, 10_000),  # seed
)


@settings(max_examples=60, deadline=None)
@given(CASES)
def test_projection_is_feasible_idempotent_and_keeps_exactly_k(case):
    C, ratio, m, seed = case
    c = Coupled(group(C), ratio, multiple_of=m)
    p = params(C, seed)
    before = {n: t.clone() for n, t in p.items()}
    z = c.project(p)
    assert all(torch.equal(p[n], before[n]) for n in p)  # input not modified
    assert set(z) == set(c.params)
    (k,) = c.kept()
    assert len(alive(z, C)) == k
    assert k == kept_multiple(max(1, kept(ratio, C)), C, m)  # never every channel removed
    assert k % m == 0 or k == C
    assert c.contains(z)
    again = c.project(z)
    assert all(torch.equal(again[n], z[n]) for n in z)
    for n in z:  # kept entries bit for bit, removed ones +0
        assert torch.equal(z[n][z[n] != 0], p[n][z[n] != 0])


@settings(max_examples=40, deadline=None)
@given(CASES, st.sampled_from([("weight",), ROLES]))
def test_projection_is_optimal_by_brute_force(case, roles):
    C, ratio, m, seed = case
    c = Coupled(group(C), ratio, multiple_of=m, roles=roles)
    p = params(C, seed)
    (k,) = c.kept()
    best = min(
        sum(channel_cost(p, j, roles) for j in range(C) if j not in kept)
        for kept in itertools.combinations(range(C), k)
    )
    z = c.project(p)
    got = sum(channel_cost(p, j, roles) for j in range(C) if j not in alive(z, C))
    assert got == pytest.approx(best, rel=1e-12, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(CASES)
def test_points_in_the_set_are_fixed(case):
    C, ratio, m, seed = case
    c = Coupled(group(C), ratio, multiple_of=m)
    p = c.project(params(C, seed))  # in S_G; zero one more kept channel: still in S_G
    j = alive(p, C)[0]
    p["a.weight"][j] = 0
    p["b.weight"][:, j] = 0
    p["c.weight"][:, 2 * j : 2 * j + 2] = 0
    p["n.weight"][j] = p["n.bias"][j] = 0
    assert c.contains(p)
    z = c.project(p)
    assert all(torch.equal(z[n], p[n]) for n in z)


def test_outside_the_set_is_detected():
    c = Coupled(group(4), 0.5)
    assert not c.contains(params(4, 0))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.floats(0.0, 0.9), st.integers(0, 1000))
def test_rho_weighted_joint_projection_is_optimal(C, ratio, seed):
    """min Σ_t ρ_t ||Z_t − V_t||² over S_G, ρ differing per tensor (the ADMM/SLR Z-step)."""
    c = Coupled(group(C), ratio)
    joint = JointSet({}, c)
    V = params(C, seed)
    rho = {"a.weight": 0.3, "n.weight": 1.0, "n.bias": 1.0, "b.weight": 5.0, "c.weight": 0.01}
    scored = ("a.weight", "b.weight", "c.weight")  # the "weight" role

    def cost(z):
        return sum(rho[n] * float((z[n] - V[n]).pow(2).sum()) for n in scored)

    def removed(kept):
        z = {n: V[n].clone() for n in scored}
        for j in set(range(C)) - set(kept):
            z["a.weight"][j] = 0
            z["b.weight"][:, j] = 0
            z["c.weight"][:, 2 * j : 2 * j + 2] = 0
        return z

    (k,) = c.kept()
    best = min(cost(removed(kept)) for kept in itertools.combinations(range(C), k))
    Z = joint.project(V, rho)
    assert cost(Z) == pytest.approx(best, rel=1e-12, abs=1e-12)
    assert c.contains(Z)
    plain = joint.project(V, dict.fromkeys(rho, 0.7))  # equal ρ: the plain projection
    assert all(torch.equal(plain[n], c.project(V)[n]) for n in plain)


def test_groups_sharing_a_tensor_are_anded():
    g1 = group(4, "a")
    g2 = ChannelGroup("d", 2, (TiedSlice("b.weight", 0, (0, 1), (0, 1), "weight"),))
    c = Coupled([g1, g2], [0.5, 0.5])
    p = params(4, 3)
    masks = c.masks(p)
    assert masks["b.weight"].shape == (2, 4)
    assert int(masks["b.weight"].any(1).sum()) == 1  # one of 2 rows (group d)
    assert int(masks["b.weight"].any(0).sum()) == 2  # two of 4 columns (group a)
    assert c.kept() == (2, 1)


def test_plain_data_round_trip_and_ratios():
    c = Coupled([group(4), group(6, "x")], [0.25, 0.5], multiple_of=2, roles=ROLES)
    d = c.to_dict()
    assert d["type"] == "coupled" and d["ratio"] == [0.25, 0.5]
    again = Coupled.from_dict(d)
    assert again == c and again.to_dict() == d
    assert c.kept() == (4, 4)  # 3 → 4 (multiple of 2), 3 → 4
    assert c.with_ratio(0.0).kept() == (4, 6)
    assert "2 groups, 10 channels" in repr(c)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.0}, r"ratio=1\.0 is not allowed; use a fraction of channels in \[0, 1\)"),
        ({"ratio": [0.5, 0.5]}, "2 ratios for 1 groups"),
        ({"ratio": 0.5, "multiple_of": 0}, "multiple_of=0 is not allowed"),
        ({"ratio": "half"}, "is not a float or a list"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(ConstraintError, match=match) as info:
        Coupled(group(4), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [0, -8, 2.0, 8.5, "8", True, None])
def test_bad_multiple_of_names_the_group(bad):
    with pytest.raises(
        ConstraintError, match=r"'a': multiple_of=.* is not allowed; use a positive"
    ):
        coupled_masks(params(4, 0), group(4), 0.5, multiple_of=bad)


def test_no_groups_unknown_role_and_bad_spec():
    with pytest.raises(ConstraintError, match="at least one channel group"):
        Coupled([], 0.5)
    with pytest.raises(UnknownNameError, match="role 'bn' is unknown"):
        Coupled(group(4), 0.5, roles=["bn"])
    with pytest.raises(ConstraintError, match="not a coupled spec"):
        Coupled.from_dict({"type": "sparsity"})
    with pytest.raises(ConstraintError, match="params has no 'n.weight'"):
        Coupled(group(4), 0.5).check({"a.weight": torch.zeros(4, 3)})


def test_is_chain():
    ids = (0, 1)
    chain = ChannelGroup(
        "p",
        2,
        (
            TiedSlice("p.weight", 0, ids, ids, "weight"),
            TiedSlice("bn.weight", 0, ids, ids, "norm"),
            TiedSlice("r.weight", 1, ids, ids, "weight"),
        ),
    )
    assert is_chain(chain)
    assert not is_chain(group(3))  # two readers
