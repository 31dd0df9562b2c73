"""Every line of the structure table through the same property checks on small tensors.

Each test runs over :data:`~dualprune.constraints.STRUCTURES`, so a new line of
the table gets the suite once its options can be drawn (``DRAW`` below; defaults
otherwise) and its reference set exists in structure_sets.py (written from the
docs, not from the implementation). Checked: the record is complete; the support
is feasible with exact counts; Π_S is the weight on that support, idempotent,
leaves points of S alone, beats every other feasible point and is optimal against
brute force on tiny tensors, breaks ties toward the lower index, keeps shape,
dtype and device and never mutates its input. Last, the rounding rule of
``multiple_of`` (coupled channel groups: test_coupled.py).
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from structure_sets import best_kept, families, feasible, kept, kept_multiple, support_count

from dualprune import Plan
from dualprune.constraints import STRUCTURES, Sparsity, Structure, from_dict, kept_count
from dualprune.constraints import structures as st_mod
from dualprune.constraints.base import round_to_multiple
from dualprune.errors import ConstraintError

NAMES = list(STRUCTURES)
MULTIPLE_OF = [name for name, s in STRUCTURES.items() if "multiple_of" in s.options]
RATIOS = st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9, 0.99])
MULTIPLES = st.sampled_from([1, 1, 2, 3, 4, 8])
VALUES = st.one_of(
    st.integers(-3, 3).map(float),  # ties and zeros
    st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32),
)
DTYPES = st.sampled_from([torch.float32, torch.float64])
ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
PROPERTY = settings(deadline=None)  # max_examples: the hypothesis profile's
Shape = tuple[int, ...]


# ---- drawing a valid (shape, options) for each structure ---------------------------------


def _counted(dim: int):
    """filter (dim 0) / channel (dim 1): up to 9 groups, so counts fall below and above m."""

    def draw_case(draw, shape: Shape, tiny: bool) -> tuple[Shape, dict[str, Any]]:
        n, other = draw(st.integers(1 + dim, 7 if tiny else 9)), draw(st.integers(1, 2))
        shape = (n, other, *shape[2:]) if dim == 0 else (other, n, *shape[2:])
        return shape, {"multiple_of": draw(MULTIPLES)}

    return draw_case


def _nm(draw, shape: Shape, tiny: bool) -> tuple[Shape, dict[str, Any]]:
    m = draw(st.sampled_from([1, 2, 3, 4]))
    opts: dict[str, Any] = {"m": m}
    if draw(st.booleans()):
        opts["n"] = draw(st.integers(1, m))
    return (shape[0], m * draw(st.integers(1, 1 if tiny else 2)), *shape[2:]), opts


def _tiled(draw, shape: Shape, tiny: bool) -> tuple[Shape, dict[str, Any]]:
    rows = math.prod(shape[1:])
    return shape, {"block": (draw(st.integers(1, rows)), draw(st.integers(1, shape[0])))}


LIB_3 = [(0, 4, 8), (1, 4, 7), (2, 4, 6), (3, 4, 5)]  # p = 3 lines through the centre
PATTERNS = [  # small libraries, so that brute force stays cheap
    {"library": LIB_3},
    {"p": 2},
    {"kernel": (3,), "p": 2},
    {"kernel": (3,), "p": 1},
    {"kernel": (1, 3), "p": 2},
    {"kernel": (5,), "p": 2},
    {"kernel": (2, 2), "library": [(0, 3), (1, 2)]},
]


def _pattern(draw, shape: Shape, tiny: bool) -> tuple[Shape, dict[str, Any]]:
    opts = dict(draw(st.sampled_from(PATTERNS if tiny else [*PATTERNS, {}])))  # {}: 56 patterns
    kernels = draw(st.sampled_from([None, 0.3, 0.5]))
    if kernels is not None:
        opts["kernels"] = kernels
    out, cin = (min(shape[0], 2), min(shape[1], 2)) if tiny else shape[:2]
    return (out, cin, *opts.get("kernel", (3, 3))), opts


DRAW = {
    "irregular": lambda _, shape, tiny: ((2, 3) if tiny and math.prod(shape) > 10 else shape, {}),
    "filter": _counted(0),
    "channel": _counted(1),
    "nm": _nm,
    "block": _tiled,
    "tile_rows": _tiled,
    "tile_cols": _tiled,
    "pattern": _pattern,
}


@st.composite
def case(draw, structure: str, tiny: bool = False) -> tuple[Shape, dict[str, Any]]:
    """(shape, options) that ``structure`` accepts; tiny shapes keep brute force cheap."""
    kernels = [(), (1,), (2,), (1, 1), (1, 2)] if tiny else [(), (1,), (2,), (1, 1), (2, 2), (3, 3)]
    hi = 3 if tiny else 5
    shape = (draw(st.integers(1, hi)), draw(st.integers(1, hi)), *draw(st.sampled_from(kernels)))
    shape, opts = DRAW.get(structure, lambda draw, shape, tiny: (shape, {}))(draw, shape, tiny)
    try:
        Sparsity(0.5, structure, **opts).check(shape)
    except ConstraintError:
        assume(False)  # a structure without a DRAW entry: only the shapes its defaults fit
    return shape, opts


def tensor(draw, shape: Shape, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    vals = draw(st.lists(VALUES, min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(vals, dtype=dtype).reshape(shape)


# ---- the table ---------------------------------------------------------------------------


def example(structure: str, ratio: float = 0.7, block: tuple[int, int] = (4, 2)) -> Sparsity:
    """A Sparsity that applies to an (8, 8, 3, 3) weight (``block`` where it has the option)."""
    opts = {"block": block} if "block" in STRUCTURES[structure].options else {}
    return Sparsity(ratio, structure, **opts)


@pytest.mark.parametrize("structure", NAMES)
def test_record_is_complete(structure):
    """Every option is a parameter of both functions; project is mask applied; groups add up."""
    s = STRUCTURES[structure]
    for fn in (s.project, s.mask):
        assert set(s.options) <= set(inspect.signature(fn).parameters), fn.__name__
    for shape in [(16, 8, 3, 3), (16, 8), (256, 128, 3, 3)]:  # the first its defaults fit
        try:
            Sparsity(0.5, structure).check(shape)
            break
        except ConstraintError:
            continue
    else:
        pytest.fail(f"{structure}: no test shape fits its default options")
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=torch.float64)
    for ratio in (0.0, 0.5, 0.9):
        z, mask = s.project(w, ratio, **s.options), s.mask(w, ratio, **s.options)
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert torch.equal(z, torch.where(mask, w, 0.0))
        if s.group_scores is None or s.group_sizes is None:
            continue
        scores, sizes = s.group_scores(w, **s.options), s.group_sizes(shape, **s.options)
        assert scores.shape == sizes.shape and sizes.dtype == torch.int64
        assert int(sizes.sum()) == w.numel()  # the groups cover w ...
        assert float(scores.pow(2).sum()) == pytest.approx(float(w.pow(2).sum()))  # ... once
        top = scores.sort(descending=True).values[: kept_count(ratio, scores.numel())]
        assert float(w[mask].pow(2).sum()) == pytest.approx(float(top.pow(2).sum()))


@pytest.mark.parametrize("structure", NAMES)
@PROPERTY
@given(data=st.data())
def test_group_scores_and_sizes_follow_the_reference_order(structure, data):
    s = STRUCTURES[structure]
    if s.group_scores is None or s.group_sizes is None:
        pytest.skip("ranks locally: no global groups")
    shape, opts = data.draw(case(structure))
    w = tensor(data.draw, shape, data.draw(DTYPES))
    c = Sparsity(0.5, structure, **opts)
    scores, sizes = c.group_scores(w), c.group_sizes(shape)
    ((groups, _),) = families(structure, shape, 0.5, **opts)  # one global family
    flat = w.double().reshape(-1)
    want = torch.stack([flat[g].pow(2).sum().sqrt() for g in groups])
    assert torch.allclose(scores.double(), want, rtol=1e-6, atol=1e-6)
    assert sizes.tolist() == [len(g) for g in groups]


def test_group_functions_come_in_pairs():
    with pytest.raises(TypeError, match="group_scores and group_sizes go together"):
        Structure(st_mod.project_filter, st_mod.filter_mask, group_scores=lambda w: w)


@pytest.mark.parametrize("structure", NAMES)
def test_options_of_other_structures_are_refused_by_name(structure):
    allowed = STRUCTURES[structure].options
    listed = ", ".join(allowed) if allowed else "none"
    others = {key for s in STRUCTURES.values() for key in s.options} - set(allowed)
    for key in [*sorted(others), "bogus"]:
        want = f"Sparsity({structure}) has no option '{key}'"
        with pytest.raises(ConstraintError, match=rf"{re.escape(want)}.*allowed options: {listed}"):
            Sparsity(0.5, structure, **{key: 8})
        with pytest.raises(ConstraintError, match=re.escape(want)):
            from_dict({"type": "sparsity", "ratio": 0.5, "structure": structure, key: 8})


# ---- properties of Π_S -------------------------------------------------------------------


@pytest.mark.parametrize("structure", NAMES)
@PROPERTY
@given(data=st.data())
def test_support_is_feasible_with_exact_counts(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    w = tensor(data.draw, shape, data.draw(DTYPES))
    c = Sparsity(ratio, structure, **opts)
    mask = c.mask(w)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert feasible(structure, mask, ratio, **opts)
    assert torch.equal(c.project(w), torch.where(mask, w, torch.zeros((), dtype=w.dtype)))


@pytest.mark.parametrize("structure", NAMES)
@PROPERTY
@given(data=st.data())
def test_idempotent_and_input_untouched(structure, data):
    shape, opts = data.draw(case(structure))
    ratio, dtype = data.draw(RATIOS), data.draw(DTYPES)
    w = tensor(data.draw, shape, dtype)
    before = w.clone()
    c = Sparsity(ratio, structure, **opts)
    z = c.project(w)
    assert torch.equal(w, before)
    assert z.dtype == dtype and z.device == w.device and z.shape == w.shape
    assert z.data_ptr() != w.data_ptr()
    assert torch.equal(c.project(z), z)


@pytest.mark.parametrize("structure", NAMES)
@PROPERTY
@given(data=st.data())
def test_points_of_the_set_are_fixed_and_no_closer_than_the_projection(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    w, v = tensor(data.draw, shape), tensor(data.draw, shape)
    c = Sparsity(ratio, structure, **opts)
    z = torch.where(c.mask(v), w, 0.0)  # in S: w on another feasible support
    # Exact, unless the ranked energies tie in float64: a pattern that misses an entry
    # of z whose square is below the rounding of ||kernel||² (e.g. 1e-12 beside 7.0).
    tol = 4 * torch.finfo(torch.float64).eps * float(w.pow(2).sum())
    pz = c.project(z)
    assert torch.equal(pz, z) or float((pz - z).pow(2).sum()) <= tol
    assert float((w - c.project(w)).pow(2).sum()) <= float((w - z).pow(2).sum()) + tol


@pytest.mark.parametrize("structure", NAMES)
@PROPERTY
@given(data=st.data())
def test_optimal_against_brute_force(structure, data):
    shape, opts = data.draw(case(structure, tiny=True))
    ratio = data.draw(RATIOS)
    w = tensor(data.draw, shape)
    assume(support_count(structure, shape, ratio, **opts) <= 3000)
    best = best_kept(structure, w, ratio, **opts)
    c = Sparsity(ratio, structure, **opts)
    assert float((w[c.mask(w)] ** 2).sum()) == pytest.approx(best, rel=1e-12, abs=1e-12)
    z = c.project(w)
    assert float(((w - z) ** 2).sum()) == pytest.approx(float((w**2).sum()) - best, abs=1e-9)


@pytest.mark.parametrize("structure", NAMES)
@PROPERTY
@given(data=st.data())
def test_ties_keep_the_lower_index(structure, data):
    if structure == "pattern":
        pytest.skip("pattern ties (library, then kernel index): test_sparsity_patterns.py")
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


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("structure", NAMES)
def test_dtypes_are_kept(structure, dtype):
    w = torch.randn(8, 8, 3, 3).to(dtype)
    z, mask = example(structure, 0.75).project(w), example(structure, 0.75).mask(w)
    assert z.dtype == dtype and z.shape == w.shape
    assert torch.equal(z, torch.where(mask, w, torch.zeros((), dtype=dtype)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("structure", NAMES)
@PROPERTY
@given(data=st.data())
def test_cuda_keeps_the_device_and_matches_cpu(structure, data):
    shape, opts = data.draw(case(structure))
    ratio = data.draw(RATIOS)
    dtype = data.draw(st.sampled_from(ALL_DTYPES))
    ints = st.lists(st.integers(-3, 3), min_size=math.prod(shape), max_size=math.prod(shape))
    w = torch.tensor(data.draw(ints), dtype=dtype).reshape(shape)  # exact scores, many ties
    c = Sparsity(ratio, structure, **opts)
    z, mask = c.project(w.cuda()), c.mask(w.cuda())
    assert z.device.type == "cuda" and mask.device.type == "cuda" and z.dtype == dtype
    assert torch.equal(z.cpu(), c.project(w)) and torch.equal(mask.cpu(), c.mask(w))


@pytest.mark.parametrize(
    "shape",
    [(6, 8), (6, 8, 3), (6, 8, 3, 3), (6, 1, 3, 3), (12, 4, 3, 3)],
    ids=["linear", "conv1d", "conv2d", "depthwise", "grouped"],
)
@pytest.mark.parametrize("structure", NAMES)
def test_layer_kinds(structure, shape):
    if structure == "pattern" and len(shape) != 4:
        pytest.skip("patterns need 3×3 kernels")
    if structure in ("channel", "nm") and shape[1] == 1:
        pytest.skip("one input channel: channel is an error, N:M needs in >= m")
    w = torch.randn(shape, dtype=torch.float64)
    c = example(structure, 0.6, block=(2, 2))
    z = c.project(w)
    assert torch.equal(c.project(z), z)
    assert 0 < int(c.mask(w).sum()) < w.numel() or structure == "nm"


def test_ratio_zero_changes_nothing():
    w = torch.randn(8, 8, 3, 3)
    for structure in NAMES:
        if structure not in ("pattern", "nm"):  # their own structure applies at ratio 0
            assert torch.equal(example(structure, 0.0).project(w), w), structure
    assert torch.equal(Sparsity(0.0, "nm").project(w), w)  # n defaults to m


def test_rounding_of_k_is_half_up():
    w = torch.arange(1.0, 6.0)[None, :]  # 5 weights
    assert int(Sparsity(0.5).mask(w).sum()) == 3
    assert int(Sparsity(0.3).mask(w).sum()) == 4  # 3.5 → 4
    assert int(Sparsity(0.99).mask(w).sum()) == 0


@pytest.mark.parametrize("structure", NAMES)
def test_non_contiguous_grad_and_negative_inputs(structure):
    c = example(structure)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float64).transpose(0, 1)  # non-contiguous
    z, mask = c.project(w), c.mask(w)
    assert torch.equal(z, c.project(w.contiguous()))
    assert torch.equal(z, torch.where(mask, w, 0.0))
    assert z.is_contiguous() and mask.is_contiguous()
    p = torch.nn.Parameter(torch.randn(8, 8, 3, 3))
    before = p.detach().clone()
    assert torch.equal(c.project(p).detach(), c.project(before))
    assert torch.equal(p.detach(), before) and c.mask(p).dtype == torch.bool
    z = c.project(-torch.rand(8, 8, 3, 3) - 0.1)  # all negative
    assert (z == 0).any() and not torch.signbit(z[z == 0]).any()  # pruned entries are +0


# ---- multiple_of: kept filter/channel counts that channel-blocked kernels like -----------


def kept_groups(mask: torch.Tensor, structure: str) -> torch.Tensor:
    """Which filters (dim 0) or channels (dim 1) the mask keeps."""
    dim = 0 if structure == "filter" else 1
    return mask.transpose(0, dim).reshape(mask.shape[dim], -1).any(1)


@PROPERTY
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
    torch.manual_seed(0)
    for c, want in ((16, 8), (32, 24), (64, 48)):
        w = torch.randn(c, 4, 3, 3)
        mask = Sparsity(0.3, "filter", multiple_of=8).mask(w)
        assert int(kept_groups(mask, "filter").sum()) == want
        mask = Sparsity(0.3, "channel", multiple_of=8).mask(w.transpose(0, 1))
        assert int(kept_groups(mask, "channel").sum()) == want


@pytest.mark.parametrize("structure", MULTIPLE_OF)
@PROPERTY
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
    s = STRUCTURES[structure]
    for fn in (s.mask, s.project):
        assert torch.equal(fn(w, ratio, multiple_of=1), fn(w, ratio))


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
