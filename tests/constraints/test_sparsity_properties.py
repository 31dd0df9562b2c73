"""Every sparsity structure through the same property checks on small tensors.

Checked against the reference sets in structure_sets.py (written from the docs,
not from the implementation): the support is feasible with exact counts, the
projection is the weight on that support, idempotent, leaves points of S alone,
is optimal against brute force over every feasible support, breaks ties toward
the lower index, keeps dtype and never mutates its input.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from structure_sets import brute_best_joint, families, in_set

from dualprune.constraints import STRUCTURES, SUPPORTS, Sparsity

GROUPED = ["irregular", "filter", "channel", "column", "nm", "block", "tile_rows", "tile_cols"]
RATIOS = st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9, 0.99])
VALUES = st.one_of(
    st.integers(-3, 3).map(float),  # ties and zeros
    st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32),
)


@st.composite
def case(draw, structure: str, tiny: bool = False):
    """(shape, options) valid for ``structure``; tiny shapes keep brute force cheap."""
    kernel = draw(st.sampled_from([(), (1,), (2,), (1, 1), (2, 2), (3, 3), (1, 2)]))
    if tiny:
        kernel = draw(st.sampled_from([(), (1,), (2,), (1, 1), (1, 2)]))
    hi = 3 if tiny else 5
    out = draw(st.integers(1, hi))
    cin = draw(st.integers(2 if structure == "channel" else 1, hi))
    opts: dict = {}
    if structure == "nm":
        m = draw(st.sampled_from([1, 2, 3, 4]))
        cin = m * draw(st.integers(1, 1 if tiny else 2))
        opts["m"] = m
        if draw(st.booleans()):
            opts["n"] = draw(st.integers(1, m))
    shape = (out, cin, *kernel)
    if structure in ("block", "tile_rows", "tile_cols"):
        rows = cin * math.prod(kernel)
        opts["block"] = (draw(st.integers(1, rows)), draw(st.integers(1, out)))
    if tiny and structure == "irregular":
        shape = shape if math.prod(shape) <= 10 else (2, 3)
    return shape, opts


def tensor(draw, shape, dtype=torch.float64):
    vals = draw(st.lists(VALUES, min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(vals, dtype=dtype).reshape(shape)


@pytest.mark.parametrize("structure", GROUPED)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_support_is_feasible_with_exact_counts(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    w = tensor(data.draw, shape, data.draw(st.sampled_from([torch.float32, torch.float64])))
    c = Sparsity(ratio, structure, **opts)
    mask = c.mask(w)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert in_set(mask, families(structure, shape, ratio, **opts))
    z = c.project(w)
    assert torch.equal(z, torch.where(mask, w, torch.zeros((), dtype=w.dtype)))


@pytest.mark.parametrize("structure", GROUPED)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_idempotent_and_input_untouched(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    w = tensor(data.draw, shape, dtype)
    before = w.clone()
    c = Sparsity(ratio, structure, **opts)
    z = c.project(w)
    assert torch.equal(w, before)
    assert z.dtype == dtype and z.device == w.device and z.shape == w.shape
    assert z.data_ptr() != w.data_ptr()
    assert torch.equal(c.project(z), z)


@pytest.mark.parametrize("structure", GROUPED)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_points_of_the_set_are_fixed(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    w = tensor(data.draw, shape)
    support = torch.zeros(math.prod(shape), dtype=torch.bool)
    for groups, k in families(structure, shape, ratio, **opts):
        for j in data.draw(st.permutations(range(len(groups))))[:k]:
            support[groups[j]] = True
    z = torch.where(support.view(shape), w, 0.0)
    assert torch.equal(Sparsity(ratio, structure, **opts).project(z), z)


@pytest.mark.parametrize("structure", GROUPED)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_optimal_against_brute_force(structure, data):
    shape, opts = data.draw(case(structure, tiny=True))
    ratio = data.draw(RATIOS)
    w = tensor(data.draw, shape)
    fams = families(structure, shape, ratio, **opts)
    if math.prod(math.comb(len(g), k) for g, k in fams) > 3000:
        return  # too many supports to enumerate; other examples cover it
    best = brute_best_joint(w, fams)
    mask = Sparsity(ratio, structure, **opts).mask(w)
    ours = float((w[mask] ** 2).sum())
    assert ours == pytest.approx(best, rel=1e-12, abs=1e-12)
    z = Sparsity(ratio, structure, **opts).project(w)
    assert float(((w - z) ** 2).sum()) == pytest.approx(float((w**2).sum()) - best, abs=1e-9)


@pytest.mark.parametrize("structure", GROUPED)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_ties_keep_the_lower_index(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    ints = st.lists(st.integers(-2, 2), min_size=math.prod(shape), max_size=math.prod(shape))
    w = torch.tensor(data.draw(ints), dtype=torch.float32).reshape(shape)  # exact scores
    e = (w.double().reshape(-1) ** 2).tolist()
    expected = torch.zeros(w.numel(), dtype=torch.bool)
    for groups, k in families(structure, shape, ratio, **opts):
        scores = [sum(e[i] for i in g) for g in groups]
        for j in sorted(range(len(groups)), key=lambda j: (-scores[j], j))[:k]:
            expected[groups[j]] = True
    assert torch.equal(Sparsity(ratio, structure, **opts).mask(w).reshape(-1), expected)


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_tables_cover_every_structure(structure):
    assert structure in SUPPORTS
    w = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    opts = {"block": (4, 2)} if structure in ("block", "tile_rows", "tile_cols") else {}
    ratio = 0.7 if structure == "pattern" else 0.5
    z = STRUCTURES[structure](w, ratio, **opts)
    assert torch.equal(z, torch.where(SUPPORTS[structure](w, ratio, **opts), w, 0.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_dtypes_are_kept(structure, dtype):
    w = torch.randn(8, 4, 3, 3).to(dtype)
    opts = {"block": (4, 2)} if structure in ("block", "tile_rows", "tile_cols") else {}
    z = Sparsity(0.75, structure, **opts).project(w)
    assert z.dtype == dtype and z.shape == w.shape


@pytest.mark.parametrize(
    "shape",
    [(6, 8), (6, 8, 3), (6, 8, 3, 3), (6, 1, 3, 3), (12, 4, 3, 3)],
    ids=["linear", "conv1d", "conv2d", "depthwise", "grouped"],
)
@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_layer_kinds(structure, shape):
    if structure == "pattern" and len(shape) != 4:
        pytest.skip("patterns need 3×3 kernels")
    if structure in ("channel", "nm") and shape[1] == 1:
        pytest.skip("one input channel: channel is an error, N:M needs in >= m")
    opts = {"block": (2, 2)} if structure in ("block", "tile_rows", "tile_cols") else {}
    w = torch.randn(shape, dtype=torch.float64)
    c = Sparsity(0.6, structure, **opts)
    z = c.project(w)
    assert torch.equal(c.project(z), z)
    assert 0 < int(c.mask(w).sum()) < w.numel() or structure == "nm"


def test_ratio_zero_changes_nothing():
    w = torch.randn(6, 8, 3, 3)
    for structure in STRUCTURES:
        if structure in ("pattern", "nm"):
            continue
        opts = {"block": (3, 2)} if structure in ("block", "tile_rows", "tile_cols") else {}
        assert torch.equal(Sparsity(0.0, structure, **opts).project(w), w), structure
    assert torch.equal(Sparsity(0.0, "nm").project(w), w)  # n defaults to m


def test_rounding_of_k_is_half_up():
    w = torch.arange(1.0, 6.0)[None, :]  # 5 weights
    assert int(Sparsity(0.5).mask(w).sum()) == 3
    assert int(Sparsity(0.3).mask(w).sum()) == 4  # 3.5 → 4
    assert int(Sparsity(0.99).mask(w).sum()) == 0


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_non_contiguous_input_and_contiguous_output(structure):
    base = torch.randn(8, 8, 3, 3, dtype=torch.float64)
    w = base.transpose(0, 1)  # a non-contiguous (8, 8, 3, 3) view
    opts = {"block": (4, 2)} if structure in ("block", "tile_rows", "tile_cols") else {}
    c = Sparsity(0.7, structure, **opts)
    z, mask = c.project(w), c.mask(w)
    assert torch.equal(z, c.project(w.contiguous()))
    assert torch.equal(z, torch.where(mask, w, 0.0))
    assert z.is_contiguous() and mask.is_contiguous()


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_parameters_that_require_grad(structure):
    p = torch.nn.Parameter(torch.randn(8, 8, 3, 3))
    opts = {"block": (4, 2)} if structure in ("block", "tile_rows", "tile_cols") else {}
    c = Sparsity(0.7, structure, **opts)
    before = p.detach().clone()
    z = c.project(p)
    assert torch.equal(p.detach(), before)
    assert torch.equal(z.detach(), c.project(before))
    assert c.mask(p).dtype == torch.bool


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_pruned_entries_are_positive_zero(structure):
    w = -torch.rand(8, 8, 3, 3) - 0.1  # all negative
    opts = {"block": (4, 2)} if structure in ("block", "tile_rows", "tile_cols") else {}
    z = Sparsity(0.7, structure, **opts).project(w)
    assert (z == 0).any() and not torch.signbit(z[z == 0]).any()
