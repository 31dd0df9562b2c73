"""Kernel patterns with connectivity pruning, and the large-tensor selection path."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from structure_sets import kept, pattern_brute_best, pattern_in_set

from dualprune.constraints import Sparsity, default_library, select_patterns
from dualprune.constraints.structures import topk_mask

LIB_3 = [(0, 4, 8), (1, 4, 7), (2, 4, 6), (3, 4, 5)]  # p = 3 lines through the centre


def k_kernels(ratio: float, kernels: float, n_kernels: int, kk: int, p: int) -> int:
    return min(kept(kernels, n_kernels), kept(ratio, n_kernels * kk) // p)


def test_default_library_is_the_56_centre_patterns():
    lib = default_library((3, 3), 4)
    assert len(lib) == math.comb(8, 3) == 56
    assert all(4 in pat and len(set(pat)) == 4 for pat in lib)
    assert lib == sorted(lib) and len(set(lib)) == 56
    assert len(default_library((5, 5), 2)) == 24
    assert default_library((3,), 2) == [(0, 1), (1, 2)]


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    ratio=st.sampled_from([0.0, 0.5, 0.7, 0.8, 0.9]),
    kernels=st.sampled_from([0.0, 0.3, 0.5]),
)
def test_pattern_feasible_idempotent_and_optimal(data, ratio, kernels):
    out, cin = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    values = st.one_of(st.integers(-2, 2).map(float), st.floats(-5, 5, width=32))
    w = torch.tensor(data.draw(st.lists(values, min_size=out * cin * 9, max_size=out * cin * 9)))
    w = w.double().reshape(out, cin, 3, 3)
    c = Sparsity(ratio, "pattern", library=LIB_3, kernels=kernels)
    k_ker = k_kernels(ratio, kernels, out * cin, 9, 3)
    mask = c.mask(w)
    assert pattern_in_set(mask, LIB_3, k_ker, 3)
    z = c.project(w)
    assert torch.equal(c.project(z), z)
    best = pattern_brute_best(w, LIB_3, k_ker)
    assert float((w[mask] ** 2).sum()) == pytest.approx(best, rel=1e-12, abs=1e-12)


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_default_library_optimal_on_two_kernels(data):
    w = torch.tensor(data.draw(st.lists(st.floats(-5, 5, width=32), min_size=18, max_size=18)))
    w = w.double().reshape(2, 1, 3, 3)
    lib = default_library()
    c = Sparsity(0.8, "pattern")  # 4 of 9 each, then connectivity: 0.2·18 = 3.6 → 4 → 1 kernel
    mask = c.mask(w)
    assert pattern_in_set(mask, lib, 1, 4)
    assert float((w[mask] ** 2).sum()) == pytest.approx(pattern_brute_best(w, lib, 1), rel=1e-12)


def test_pattern_ratio_below_the_pattern_floor_keeps_every_kernel():
    w = torch.randn(4, 3, 3, 3)
    mask = Sparsity(0.0, "pattern").mask(w)
    assert torch.all(mask.sum((2, 3)) == 4)  # p entries in each of the 12 kernels


def test_pattern_ties_pick_lower_library_index_and_lower_kernel():
    w = torch.ones(3, 1, 3, 3)  # every pattern and every kernel ties
    mask = Sparsity(0.0, "pattern", kernels=0.5).mask(w)  # round(0.5·3) = 2 kernels
    first = torch.zeros(9, dtype=torch.bool)
    first[list(default_library()[0])] = True
    assert torch.equal(mask[0, 0].reshape(-1), first)
    assert torch.equal(mask[1, 0].reshape(-1), first)
    assert not mask[2].any()


def test_pattern_library_option_and_conv1d_kernels():
    w = torch.randn(2, 2, 5, dtype=torch.float64)
    c = Sparsity(0.0, "pattern", kernel=(5,), library=[[0, 1], [3, 4], [1, 2]])
    m = c.mask(w)
    assert torch.all(m.sum(2) == 2)


def test_select_patterns_returns_the_most_frequent_winners():
    lib = default_library()
    w = torch.zeros(6, 2, 3, 3)
    for k, pat in enumerate([lib[5]] * 7 + [lib[9]] * 4 + [lib[2]]):
        w.view(-1, 9)[k, list(pat)] = 1.0 + k
    assert select_patterns(w, 2) == [lib[5], lib[9]]
    chosen = select_patterns([w, w], 3)
    assert chosen == [lib[5], lib[9], lib[2]]
    z = Sparsity(0.0, "pattern", library=chosen).project(w)
    assert torch.equal(z, w)


# ---- the sampled selection used for large tensors ------------------------------------


def reference_topk(a: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(a.reshape(-1), descending=True, stable=True).indices[:k]
    out = torch.zeros(a.numel(), dtype=torch.bool)
    out[order] = True
    return out.view(a.shape)


@pytest.mark.parametrize("k", [1, 7, 40_000, 99_999, 100_000 - 1])
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(100_000).abs(),
        lambda: torch.randint(0, 4, (100_000,)).float(),  # massive ties
        lambda: torch.zeros(100_000),
        lambda: (torch.arange(100_000) % 7 == 0).float() * torch.rand(100_000),  # periodic
        lambda: torch.cat([torch.zeros(99_000), torch.rand(1000)]),
    ],
    ids=["gauss", "ties", "zeros", "periodic", "skewed"],
)
def test_large_topk_matches_a_stable_sort(make, k):
    torch.manual_seed(0)
    a = make()
    assert torch.equal(topk_mask(a, k), reference_topk(a, k))


def test_large_irregular_mask_count_and_ties():
    torch.manual_seed(1)
    w = torch.randint(-3, 4, (256, 64, 3, 3)).float()
    for ratio in (0.1, 0.5, 0.77, 0.999):
        mask = Sparsity(ratio).mask(w)
        assert int(mask.sum()) == kept(ratio, w.numel())
        assert torch.equal(mask, reference_topk(w.abs(), kept(ratio, w.numel())))
