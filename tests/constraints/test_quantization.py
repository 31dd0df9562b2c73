"""Quantization sets: membership, exact fits against brute force, fits against grid search."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualprune.constraints import Quantization

FLOATS = st.floats(-4, 4, allow_nan=False, allow_infinity=False, width=32)
VALUES = st.one_of(st.integers(-2, 2).map(float), FLOATS)


def vectors(min_size=1, max_size=40):
    return st.lists(VALUES, min_size=min_size, max_size=max_size).map(
        lambda v: torch.tensor(v, dtype=torch.float64)
    )


def objective(v: torch.Tensor, z: torch.Tensor) -> float:
    return float(((v.double() - z.double()) ** 2).sum())


def uniform_at(v: torch.Tensor, alpha: float, top: int) -> torch.Tensor:
    return alpha * torch.clamp(torch.round(v / alpha), -top, top)


def admm_nn_grid_best(v: torch.Tensor, top: int) -> float:
    """ADMM-NN: α ∈ [0.9, 1.1]·max|V|/L in steps of 0.001·max|V|/L (docs/algorithms.md §3)."""
    ref = float(v.abs().max()) / top
    if ref == 0:
        return objective(v, torch.zeros_like(v))
    return min(objective(v, uniform_at(v, ref * (0.9 + 0.001 * i), top)) for i in range(201))


def spec_alternation_best(v: torch.Tensor, top: int, iters: int = 10) -> float:
    """The spec's alternation from α0 = mean|V≠0| / (L/2), best objective seen."""
    nz = v[v != 0].abs()
    if nz.numel() == 0:
        return 0.0
    alpha = float(nz.mean()) / (top / 2)
    best = float("inf")
    for _ in range(iters):
        q = torch.clamp(torch.round(v / alpha), -top, top)
        best = min(best, objective(v, alpha * q))
        if float((q * q).sum()) == 0:
            break
        alpha = float((v * q).sum() / (q * q).sum())
        if alpha <= 0:
            break
    return best


# ---- uniform --------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [3, 4, 8])
@settings(max_examples=60, deadline=None)
@given(v=vectors())
def test_uniform_no_worse_than_grid_search_and_alternation(bits, v):
    top = 2 ** (bits - 1) - 1
    q = Quantization(bits=bits)
    z = q.project(v)
    ours = objective(v, z)
    tol = 1e-9 * (1 + float((v * v).sum()))
    assert ours <= admm_nn_grid_best(v, top) + tol
    assert ours <= spec_alternation_best(v, top) + tol


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("scale", ["tensor", "channel"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_uniform_codes_reproduce_the_projection_exactly(bits, scale, data):
    shape = data.draw(st.sampled_from([(3, 4), (2, 3, 2), (2, 2, 3, 3)]))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    n = int(torch.Size(shape).numel())
    values = data.draw(st.lists(VALUES, min_size=n, max_size=n))
    v = torch.tensor(values, dtype=dtype).reshape(shape)
    q = Quantization(bits=bits, scale=scale)
    before = v.clone()
    z = q.project(v)
    codes, scales = q.codes(v)
    assert torch.equal(v, before)
    assert z.dtype == dtype and codes.dtype == torch.int8
    assert torch.equal(codes * scales, z)
    top = 2 ** (bits - 1) - 1
    assert int(codes.abs().max()) <= top
    want = (shape[0], *[1] * (len(shape) - 1)) if scale == "channel" else ()
    assert tuple(scales.shape) == want
    assert torch.all(scales >= 0)


def test_channel_scales_fit_each_row_on_its_own():
    torch.manual_seed(0)
    w = torch.randn(5, 7, 3) * torch.arange(1, 6).view(5, 1, 1)
    z = Quantization(bits=4, scale="channel").project(w)
    for o in range(5):
        assert torch.equal(z[o], Quantization(bits=4).project(w[o]))


def test_uniform_on_gaussian_data_beats_a_wide_grid():
    torch.manual_seed(0)
    for bits, v in itertools.product((3, 4, 5), (torch.randn(5000), torch.randn(3000) ** 3)):
        top = 2 ** (bits - 1) - 1
        ref = float(v.abs().max()) / top
        grid = min(objective(v, uniform_at(v, ref * t / 400, top)) for t in range(8, 481))
        assert objective(v, Quantization(bits=bits).project(v)) <= grid * (1 + 1e-6)


def test_bits_two_is_the_exact_ternary_fit():
    v = torch.tensor([3.0, 1.0, 0.9, -0.2])
    assert torch.equal(Quantization(bits=2).project(v), Quantization(levels="ternary").project(v))


# ---- binary and ternary (exact) -------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(v=vectors(max_size=30))
def test_binary_is_sign_times_mean_abs(v):
    for q in (Quantization(bits=1), Quantization(levels="binary")):
        z = q.project(v)
        alpha = float(v.abs().mean())
        assert torch.allclose(
            z, torch.where(v >= 0, 1.0, -1.0).double() * alpha, rtol=1e-12, atol=0
        )
        codes, scales = q.codes(v)
        assert set(codes.tolist()) <= {-1, 1}
        assert torch.equal(codes * scales, z)


def ternary_brute_force(v: torch.Tensor) -> float:
    best = float((v * v).sum())
    for q in itertools.product((-1.0, 0.0, 1.0), repeat=v.numel()):
        qt = torch.tensor(q, dtype=torch.float64)
        qq = float((qt * qt).sum())
        if qq == 0:
            continue
        alpha = max(0.0, float((v * qt).sum()) / qq)
        best = min(best, objective(v, alpha * qt))
    return best


@settings(max_examples=60, deadline=None)
@given(v=vectors(max_size=7))
def test_ternary_is_optimal_against_brute_force(v):
    z = Quantization(levels="ternary").project(v)
    codes, scales = Quantization(levels="ternary").codes(v)
    assert set(codes.tolist()) <= {-1, 0, 1}
    assert torch.equal(codes * scales, z)
    assert objective(v, z) == pytest.approx(ternary_brute_force(v), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(v=vectors(max_size=30))
def test_binary_and_ternary_are_idempotent(v):
    v = v.float()
    for q in (Quantization(levels="binary"), Quantization(levels="ternary", scale="channel")):
        z = q.project(v.view(2, -1) if v.numel() % 2 == 0 else v.view(1, -1))
        assert torch.equal(q.project(z), z)


def test_ternary_support_maximises_the_gain():
    v = torch.tensor([1.0, 2.0, 1.0, 1.0])  # gains (Σ top-j)²/j: 4, 4.5, 5.33, 6.25 → j = 4
    codes, _ = Quantization(levels="ternary").codes(v)
    assert codes.tolist() == [1, 1, 1, 1]
    v = torch.tensor([3.0, 1.0, 1.0])  # gains: 9, 8, 25/3 → j = 1
    codes, _ = Quantization(levels="ternary").codes(v)
    assert codes.tolist() == [1, 0, 0]


# ---- pow2, level lists, no scale -------------------------------------------------------


@pytest.mark.parametrize("levels", ["pow2", [-1.0, -0.25, 0.0, 0.5, 1.5], [0.0, 1.0, 2.0, 3.0]])
@settings(max_examples=40, deadline=None)
@given(v=vectors())
def test_level_sets_membership_and_grid(levels, v):
    q = Quantization(levels=levels)
    z = q.project(v)
    codes, scales = q.codes(v)
    lv = q.level_values()
    assert torch.equal(q.dequantize(codes, scales), z)
    assert torch.equal(z, lv.to(z.dtype)[codes.long()] * scales)
    ref = float(v.abs().max()) / float(lv.abs().max())
    mids = (lv[1:] + lv[:-1]) / 2

    def at(alpha):
        return alpha * lv[torch.searchsorted(mids, v / alpha, right=True)]

    tol = 1e-9 * (1 + float((v * v).sum()))
    if ref > 0:
        grid = min(objective(v, at(ref * (0.9 + 0.001 * i))) for i in range(201))
        assert objective(v, z) <= grid + tol


def test_pow2_levels():
    lv = Quantization(levels="pow2", bits=3).level_values()
    assert lv.tolist() == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    assert Quantization(levels="pow2").level_values().numel() == 15  # 4 bits by default


def test_scale_none_uses_levels_as_given():
    v = torch.tensor([0.1, 0.9, 1.6, -3.0, 7.0])
    q = Quantization(levels=[0, 1, 2], scale="none")
    assert q.project(v).tolist() == [0.0, 1.0, 2.0, 0.0, 2.0]
    assert Quantization(bits=3, scale="none").project(v).tolist() == [0.0, 1.0, 2.0, -3.0, 3.0]


def test_nearest_level_ties_go_up():
    q = Quantization(levels=[0, 1, 2], scale="none")
    assert q.project(torch.tensor([0.5, 1.5])).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "q",
    [
        Quantization(bits=4),
        Quantization(levels="ternary", scale="channel"),
        Quantization(levels="pow2"),
    ],
    ids=repr,
)
def test_dtype_kept_and_input_untouched(q, dtype):
    w = torch.randn(4, 6).to(dtype)
    before = w.clone()
    z = q.project(w)
    assert z.dtype == dtype and torch.equal(w, before)
    assert torch.allclose(q.project(z).double(), z.double(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    "q", [Quantization(bits=4), Quantization(levels="pow2"), Quantization(levels=[-1, 0, 2])]
)
def test_heuristic_fits_are_idempotent_up_to_rounding(q):
    torch.manual_seed(0)
    z = q.project(torch.randn(50, 20, dtype=torch.float64))
    assert torch.allclose(q.project(z), z, rtol=1e-12, atol=1e-15)


def test_all_zero_weight():
    for q in (Quantization(bits=4), Quantization(levels="binary"), Quantization(levels="pow2")):
        z = q.project(torch.zeros(3, 4))
        assert torch.equal(z, torch.zeros(3, 4))
    assert torch.equal(
        Quantization(bits=4, scale="channel").codes(torch.zeros(2, 2))[1], torch.zeros(2, 1)
    )
