"""Sparsity & Quantization, plain-data round trips and the Sparsity helpers other code uses."""

from __future__ import annotations

import json

import pytest
import torch
from structure_sets import families, in_set

from dualprune.constraints import (
    STRUCTURES,
    Constraint,
    Intersection,
    Quantization,
    Sparsity,
    from_dict,
)
from dualprune.constraints.registry import GROUPED

OPTS = {
    "block": {"block": (6, 4)},
    "tile_rows": {"block": (6, 4)},
    "tile_cols": {"block": (6, 4)},
    "nm": {"n": 2, "m": 4},
}
QUANT = [
    Quantization(bits=3),
    Quantization(bits=4, scale="channel"),
    Quantization(levels="binary"),
    Quantization(levels="ternary", scale="channel"),
    Quantization(levels="pow2"),
    Quantization(levels=[-1.0, 0.0, 0.5, 1.0]),
]


def sparsity(structure: str) -> Sparsity:
    return Sparsity(0.7 if structure == "pattern" else 0.5, structure, **OPTS.get(structure, {}))


@pytest.mark.parametrize("q", QUANT, ids=repr)
@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_zeros_stay_zero_and_survivors_are_quantized(structure, q):
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    s = sparsity(structure)
    both = s & q
    mask = s.mask(w)
    z = both.project(w)
    assert torch.equal(both.mask(w), mask)
    assert torch.all(z[~mask] == 0)
    codes, scales = both.codes(w)
    assert torch.equal(q.dequantize(codes, scales), z)
    assert torch.equal(z, q.project(w, mask=mask))
    close = {"rtol": 1e-12, "atol": 1e-14}  # sums in another order
    if q.scale == "tensor":  # the scale is fitted on the survivors alone
        assert torch.allclose(z[mask], q.project(w[mask]), **close)
    else:
        for o in range(w.shape[0]):
            if mask[o].any():
                assert torch.allclose(z[o][mask[o]], q.project(w[o][mask[o]][None])[0], **close)
    lv = q.level_values()
    scaled = (z / scales).masked_select(mask)
    assert all(torch.isclose(lv, x).any() for x in scaled.unique())


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_order_of_and_does_not_matter(structure):
    w = torch.randn(8, 4, 3, 3)
    s, q = sparsity(structure), Quantization(bits=4)
    assert torch.equal((s & q).project(w), (q & s).project(w))


def test_survivor_zeros_in_binary_codes_are_pruned_entries():
    w = torch.tensor([[3.0, -1.0, 2.0, 0.5]])
    both = Sparsity(0.5) & Quantization(levels="binary")
    codes, scales = both.codes(w)
    assert codes.tolist() == [[1, 0, 1, 0]] and float(scales) == 2.5
    assert both.project(w).tolist() == [[2.5, 0.0, 2.5, 0.0]]


def test_two_sparsity_parts_are_feasible_for_both():
    torch.manual_seed(0)
    w = torch.randn(6, 8, dtype=torch.float64)
    both = Sparsity(0.5, "filter") & Sparsity(0.5, "nm", m=4)
    z = both.project(w)
    assert torch.equal(Sparsity(0.5, "filter").project(z), z)
    assert torch.equal(Sparsity(0.5, "nm", m=4).project(z), z)
    m = both.mask(w)
    assert torch.equal(z, torch.where(m, w, 0.0))
    assert in_set(Sparsity(0.5, "filter").mask(z), families("filter", (6, 8), 0.5))


def test_intersection_ratio_and_with_ratio():
    c = Sparsity(0.5, "filter") & Quantization(bits=4)
    assert c.ratio == 0.5 and c.structure == "filter"
    d = c.with_ratio(0.8)
    assert isinstance(d, Intersection) and d.ratio == 0.8
    assert d.value == Quantization(bits=4)
    assert c.first == Sparsity(0.5, "filter") and c.second == Quantization(bits=4)


SPECS = [
    Sparsity(0.9),
    Sparsity(0.5, "filter"),
    Sparsity(0.25, "nm", n=2, m=4),
    Sparsity(0.6, "pattern", p=3, library=[[0, 4, 8], [2, 4, 6]], kernels=0.2),
    Sparsity(0.3, "block", block=(64, 32)),
    Sparsity(0.3, "tile_cols", block=2),
    Quantization(bits=4),
    Quantization(levels="ternary", scale="channel"),
    Quantization(levels=[0, 1, 2, 3], scale="none"),
    Sparsity(0.9) & Quantization(bits=3),
    Quantization(bits=3) & Sparsity(0.5, "filter") & Sparsity(0.5, "nm"),
]


@pytest.mark.parametrize("c", SPECS, ids=repr)
def test_to_dict_round_trip_through_json(c: Constraint):
    d = json.loads(json.dumps(c.to_dict()))
    back = from_dict(d)
    assert back == c and hash(back) == hash(c) and type(back) is type(c)
    assert back.to_dict() == c.to_dict()
    w = torch.randn(4, 8, 3, 3)
    if isinstance(c, Sparsity) and c.structure == "block":
        w = torch.randn(64, 64, 1, 1)
    assert torch.equal(back.project(w), c.project(w))


def test_to_dict_forms():
    assert Sparsity(0.5, "nm", n=2, m=4).to_dict() == {
        "type": "sparsity",
        "ratio": 0.5,
        "structure": "nm",
        "n": 2,
        "m": 4,
    }
    assert Sparsity(0.5, "block", block=(4, 2)).to_dict()["block"] == [4, 2]
    assert Quantization(bits=4).to_dict() == {"type": "quantization", "bits": 4, "scale": "tensor"}
    d = (Sparsity(0.5) & Quantization(levels="binary")).to_dict()
    assert d["type"] == "intersection" and len(d["parts"]) == 2


def test_with_ratio_copies_structure_and_options():
    c = Sparsity(0.5, "block", block=(4, 4))
    d = c.with_ratio(0.25)
    assert d.ratio == 0.25 and d.structure == "block" and d.options == {"block": (4, 4)}
    assert c.ratio == 0.5


@pytest.mark.parametrize("structure", GROUPED)
def test_group_scores_rank_like_the_projection(structure):
    torch.manual_seed(0)
    w = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    c = Sparsity(0.5, structure, **({"block": (9, 4)} if structure == "block" else {}))
    scores, sizes = c.group_scores(w), c.group_sizes(w)
    assert scores.shape == sizes.shape and int(sizes.sum()) == w.numel()
    k = round(0.5 * scores.numel())
    kept_energy = float((w[c.mask(w)] ** 2).sum())
    assert kept_energy == pytest.approx(float(scores.sort(descending=True).values[:k].pow(2).sum()))


def test_block_group_sizes_with_edge_tiles():
    c = Sparsity(0.5, "block", block=(4, 3))
    sizes = c.group_sizes((5, 2, 3))  # GEMM view 6 × 5: tiles 4×3, 4×2, 2×3, 2×2
    assert sizes.tolist() == [12, 8, 6, 4]


def test_quantization_mask_is_everything():
    w = torch.randn(3, 4)
    assert Quantization(bits=4).mask(w).all()


def test_repr_is_readable():
    assert repr(Sparsity(0.5, "filter")) == "Sparsity(ratio=0.5, structure='filter')"
    assert repr(Sparsity(0.5) & Quantization(bits=2)) == (
        "Sparsity(ratio=0.5, structure='irregular') & Quantization(bits=2, scale='tensor')"
    )


@pytest.mark.parametrize("q", QUANT, ids=repr)
def test_quantized_zeros_are_positive_zero(q):
    w = -torch.rand(6, 8, dtype=torch.float64)
    z = (Sparsity(0.5) & q).project(w)
    assert not torch.signbit(z[z == 0]).any()


def test_docstring_examples_run():
    import doctest

    import dualprune.constraints as package
    from dualprune.constraints import quantization, registry, sparsity

    for module in (package, quantization, registry, sparsity):
        assert doctest.testmod(module).failed == 0
