"""Device model: weight ↔ conductance mapping, non-idealities, programmed chips, faults.

Exact checks where the math is exact (round trips, zero noise, pinning); binomial or
sampling tolerances where it is random, on tensors large enough to be tight.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dualprune as dp
from dualprune.errors import ConfigError, ConstraintError, PlanError
from dualprune.hardware.chips import built_cells, chip_layers, evaluate_on_chips, program_chip
from dualprune.hardware.conductance import (
    built_weights,
    cell_shape,
    conductances_to_levels,
    conductances_to_weights,
    level_offset,
    to_levels,
    weights_to_conductances,
)
from dualprune.hardware.crossbar import map_model
from dualprune.hardware.devices import (
    DeviceNoise,
    Faults,
    cell_generator,
    program,
    read,
    read_sigma,
    sample_faults,
)
from dualprune.hardware.faults import (
    fault_levels,
    fault_masks,
    pin_faults,
    pinned_values,
    read_faults,
)
from dualprune.hardware.spec import CrossbarSpec

# ---- helpers ------------------------------------------------------------------------------


class Tiny(nn.Module):
    """conv (4×2×3×3) → BN → ReLU → fc (3×36)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))  # (B, 36) → (B, 3)


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def quantized(model: nn.Module, bits: int) -> nn.Module:
    """The model with every Conv/Linear weight on Quantization(bits)'s grid."""
    out = Tiny()
    out.load_state_dict(model.state_dict())
    for m in (out.conv, out.fc):
        with torch.no_grad():
            m.weight.copy_(dp.Quantization(bits=bits).project(m.weight))
    return out.eval()


X = torch.randn(5, 2, 5, 5, generator=torch.Generator().manual_seed(1))


@st.composite
def specs(draw: st.DrawFn) -> CrossbarSpec:
    """Any cell and weight bits, either mapping, a few crossbars wide (cols ≥ one column)."""
    kw = {
        "cell_bits": draw(st.integers(1, 6)),
        "weight_bits": draw(st.integers(2, 12)),
        "mapping": draw(st.sampled_from(["differential", "offset"])),
    }
    need = CrossbarSpec(cols=1024, **kw).columns_per_weight
    return CrossbarSpec(cols=need * draw(st.integers(1, 3)) + draw(st.integers(0, 1)), **kw)


# ---- mapping: exact round trips ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    spec=specs(),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    channel=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_exact(
    spec: CrossbarSpec, shape: tuple[int, ...], channel: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    top = 2 ** (spec.weight_bits - 1) - 1
    q = torch.randint(-top, top + 1, shape, generator=g)
    a_shape = (shape[0], *[1] * (len(shape) - 1)) if channel else ()
    alpha = torch.rand(a_shape, generator=g) + 1e-3
    cond = weights_to_conductances(q, spec, alpha=alpha)
    assert cond.G.shape == (spec.slices, 2 if spec.mapping == "differential" else 1, *shape)
    assert cond.G.min() >= spec.g_min and cond.G.max() <= spec.g_max * (1 + 1e-12)
    expected = q.to(torch.float32) * alpha
    assert torch.equal(conductances_to_weights(cond), expected)
    # float weights on the grid, with α given, come back the same
    again = weights_to_conductances(expected, spec, alpha=alpha)
    assert torch.equal(conductances_to_weights(again), expected)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize(("bits", "cells"), [(2, 1), (4, 2), (8, 2), (8, 3), (5, 4)])
def test_round_trip_of_float_weights_equals_quantization(
    mapping: str, bits: int, cells: int
) -> None:
    w = torch.randn(7, 3, 2, 2, generator=torch.Generator().manual_seed(bits))
    spec = CrossbarSpec(weight_bits=bits, cell_bits=cells, mapping=mapping, cols=8)
    back = conductances_to_weights(weights_to_conductances(w, spec))
    assert torch.equal(back, dp.Quantization(bits=bits).project(w))
    q, alpha = to_levels(w, bits)
    assert torch.equal(q.to(w.dtype) * alpha, back)


def test_differential_slices_hold_the_magnitude_on_the_sign_device() -> None:
    spec = CrossbarSpec(weight_bits=5, cell_bits=2)  # L = 15, S = 2, Δg over 3 levels
    dg = (spec.g_max - spec.g_min) / 3
    cond = weights_to_conductances(torch.tensor([-11, 6]), spec)
    levels = torch.round((cond.G - spec.g_min) / dg).long()  # (S, P, 2)
    assert levels[:, 1, 0].tolist() == [3, 2]  # 11 = 3 + 2·4 on the negative device
    assert levels[:, 0, 0].tolist() == [0, 0]
    assert levels[:, 0, 1].tolist() == [2, 1] and levels[:, 1, 1].tolist() == [0, 0]


def test_offset_uses_a_reference_cell_per_row_and_crossbar() -> None:
    spec = CrossbarSpec(weight_bits=4, cell_bits=2, mapping="offset", cols=4)  # S = 2, o = 8
    assert level_offset(spec) == 8
    cond = weights_to_conductances(torch.full((5, 3), -3), spec)  # u = 5 = 1 + 1·4
    dg = (spec.g_max - spec.g_min) / 3
    assert torch.round((cond.G - spec.g_min) / dg).long()[:, 0, 0, 0].tolist() == [1, 1]
    assert cond.ref is not None and cond.ref.shape == (3, 3)  # ⌈5 / (4 // 2)⌉ crossbars
    assert torch.allclose(cond.ref, torch.full((3, 3), spec.g_min + 2 * dg, dtype=torch.float64))


def test_masked_mapping_leaves_pruned_cells_unprogrammed() -> None:
    spec = CrossbarSpec(weight_bits=4, cell_bits=3)
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    keep = torch.rand(6, 10, generator=torch.Generator().manual_seed(1)) > 0.5
    cond = weights_to_conductances(w, spec, mask=keep)
    noisy = program(cond, DeviceNoise(sigma=0.05, beta=0.05, nu=0.05, t=100.0), seed=3)
    assert bool((noisy.G[:, :, ~keep] == spec.g_min).all())
    assert bool((noisy.G[:, :, keep] != spec.g_min).all())
    back = conductances_to_weights(noisy)
    assert bool((back[~keep] == 0).all())
    q, alpha = to_levels(w, 4, mask=keep)  # the mask is honoured in the levels too
    assert torch.equal(conductances_to_weights(cond), q.float() * alpha)
    # offset: a pruned weight is an ordinary zero held at the offset
    off = CrossbarSpec(weight_bits=4, cell_bits=3, mapping="offset")
    cond = weights_to_conductances(w, off, mask=keep)
    assert cond.programmed is None and bool((conductances_to_weights(cond)[~keep] == 0).all())


# ---- non-idealities -----------------------------------------------------------------------


def test_fault_rates_match_the_binomial() -> None:
    n, p_min, p_max = 400_000, 0.01, 0.05
    noise = DeviceNoise(stuck_min=p_min, stuck_max=p_max)
    faults = sample_faults((n,), noise, cell_generator(0, "w", "faults"))
    for p, mask in ((p_min, faults.stuck_min), (p_max, faults.stuck_max)):
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(mask.double().mean().item() - p) < 3 * sigma
    assert not bool((faults.stuck_min & faults.stuck_max).any())
    more = sample_faults((n,), replace_noise(noise, 0.02), cell_generator(0, "w", "faults"))
    assert bool(more.stuck_min[faults.stuck_min].all())  # a larger rate only adds cells


def replace_noise(noise: DeviceNoise, stuck_min: float) -> DeviceNoise:
    return DeviceNoise(**{**noise.as_dict(), "stuck_min": stuck_min})


def test_programmed_chip_applies_faults_at_the_fault_masks() -> None:
    spec = CrossbarSpec(weight_bits=6, cell_bits=2)
    noise = DeviceNoise(stuck_min=0.1, stuck_max=0.1)
    model = tiny()
    faults = fault_masks(model, spec, noise, seed=4)
    cond = weights_to_conductances(model.fc.weight.detach(), spec)
    cells = program(cond, noise, seed=4, name="fc.weight")
    f = faults["fc.weight"]
    assert bool((cells.G[f.stuck_min] == spec.g_min).all())
    assert bool((cells.G[f.stuck_max] == spec.g_max).all())
    healthy = ~(f.stuck_min | f.stuck_max)
    assert torch.equal(cells.G[healthy], cond.G[healthy])


@pytest.mark.parametrize("kind", ["beta", "sigma"])
def test_programming_variation_has_the_expected_std(kind: str) -> None:
    spec = CrossbarSpec(weight_bits=3, cell_bits=2)  # level 1 = g_min + Δg, far from the clip
    cond = weights_to_conductances(torch.ones(100_000, dtype=torch.int64), spec)
    noise = DeviceNoise(**{kind: 0.05})
    g = program(cond, noise, seed=0).G[0, 0]
    target = cond.G[0, 0]
    rel = (g / target - 1) if kind == "beta" else (g - target) / (spec.g_max - spec.g_min)
    assert abs(rel.std().item() - 0.05) < 0.05 * 0.02
    assert abs(rel.mean().item()) < 0.001


def test_drift_and_clipping() -> None:
    spec = CrossbarSpec(weight_bits=4, cell_bits=3)
    cond = weights_to_conductances(torch.arange(-7, 8), spec)
    for noise in (DeviceNoise(nu=0.0, t=1000.0), DeviceNoise(nu=0.1, t=5.0, t0=5.0)):
        assert torch.equal(program(cond, noise).G, cond.G)
    drifted = program(cond, DeviceNoise(nu=0.1, t=100.0, t0=1.0)).G
    assert torch.allclose(drifted, cond.G * 100.0**-0.1, rtol=1e-12, atol=0)
    wild = program(cond, DeviceNoise(sigma=2.0, margin=0.1), seed=1).G
    assert wild.min().item() == 0.0 and wild.max().item() == pytest.approx(spec.g_max * 1.1)


def test_seeds_give_reproducible_independent_chips() -> None:
    spec, model = CrossbarSpec(weight_bits=6, cell_bits=2), tiny()
    noise = DeviceNoise(sigma=0.03, stuck_min=0.02, stuck_max=0.02)
    a, b, c = (program_chip(model, spec, noise, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.fc.weight, b.fc.weight) and torch.equal(a.conv.weight, b.conv.weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)
    # faults come from their own stream: changing the variation does not move them
    f1 = fault_masks(model, spec, noise, seed=7)["conv.weight"]
    f2 = fault_masks(model, spec, DeviceNoise(stuck_min=0.02, stuck_max=0.02), seed=7)
    assert torch.equal(f1.stuck_max, f2["conv.weight"].stuck_max)


def test_read_sigma_matches_cell_level_reads() -> None:
    for mapping in ("differential", "offset"):
        spec = CrossbarSpec(weight_bits=5, cell_bits=2, mapping=mapping, cols=4)
        noise = DeviceNoise(read=0.02)
        cond = weights_to_conductances(torch.arange(-15, 16).view(31, 1), spec)
        gen = torch.Generator().manual_seed(0)
        reads = torch.stack([conductances_to_weights(read(cond, noise, gen)) for _ in range(2000)])
        per, ref = read_sigma(cond, noise)
        total = per.square()
        if ref is not None:  # one reference cell per row, shared by its crossbar's weights
            total = total + ref.square().index_select(0, torch.arange(31) // 2)
        assert torch.allclose(reads.std(0).double(), total.sqrt(), rtol=0.08)


# ---- chips -------------------------------------------------------------------------------


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_zero_noise_chip_is_the_quantized_model(mapping: str) -> None:
    model, spec = tiny(), CrossbarSpec(weight_bits=4, cell_bits=2, mapping=mapping)
    chip = program_chip(model, spec, DeviceNoise(), seed=3)
    assert torch.equal(chip(X), quantized(model, 4)(X))
    assert torch.equal(chip.fc.bias, model.fc.bias)  # biases stay digital
    assert chip is not model and not torch.equal(chip.fc.weight, model.fc.weight)


def test_layers_and_masks_select_what_goes_on_the_chip() -> None:
    model, spec = tiny(), CrossbarSpec(weight_bits=4, cell_bits=2)
    noise = DeviceNoise(sigma=0.05)
    chip = program_chip(model, spec, noise, layers=["fc"])
    assert torch.equal(chip.conv.weight, model.conv.weight)
    assert list(chip_layers(model, "re:c.*")) == ["conv"]
    masks = dp.Masks({"fc.weight": model.fc.weight.abs() > 0.1})
    chip = program_chip(model, spec, noise, masks=masks, seed=1)
    assert bool((chip.fc.weight[~masks["fc.weight"]] == 0).all())
    with pytest.raises(PlanError, match="'nope'"):
        program_chip(model, spec, noise, layers="nope")
    with pytest.raises(ConfigError, match="'fc.wieght'"):
        program_chip(model, spec, noise, masks={"fc.wieght": masks["fc.weight"]})


def test_read_noise_is_drawn_at_every_forward_reproducibly() -> None:
    model, spec = tiny(), CrossbarSpec(weight_bits=6, cell_bits=2)
    noise = DeviceNoise(read=0.02)
    a, b = program_chip(model, spec, noise, seed=2), program_chip(model, spec, noise, seed=2)
    ya1, ya2 = a(X), a(X)
    assert not torch.equal(ya1, ya2)
    assert torch.equal(ya1, b(X)) and torch.equal(ya2, b(X))
    ideal = quantized(model, 6)(X)
    assert (ya1 - ideal).abs().max() < 0.2 * ideal.abs().max()


def test_evaluate_on_chips() -> None:
    model, spec = tiny(), CrossbarSpec(weight_bits=4, cell_bits=2)
    y = quantized(model, 4)(X).argmax(1)
    loader = [(X, y)]
    clean = evaluate_on_chips(model, spec, DeviceNoise(), loader, n_chips=3, progress=False)
    assert clean.accs == [1.0, 1.0, 1.0] and clean.ideal == 1.0 and clean.std == 0.0
    noisy = evaluate_on_chips(
        model,
        spec,
        DeviceNoise(sigma=0.3),
        lambda m: {"acc": float((m(X).argmax(1) == y).float().mean())},
        n_chips=4,
        seed=10,
        progress=False,
    )
    assert noisy.seeds == [10, 11, 12, 13] and noisy.ideal == 1.0
    one = program_chip(model, spec, DeviceNoise(sigma=0.3), seed=12)
    assert noisy.accs[2] == float((one(X).argmax(1) == y).float().mean())
    assert noisy.as_dict()["n_chips"] == 4 and "±" in str(noisy)
    with pytest.raises(ConfigError, match="n_chips"):
        evaluate_on_chips(model, spec, DeviceNoise(), loader, n_chips=0)


# ---- built crossbars ---------------------------------------------------------------------


def test_built_weights_are_whole_tiles_with_a_kept_weight() -> None:
    spec = CrossbarSpec(rows=4, cols=4, weight_bits=3, cell_bits=2)  # tiles of 4 rows × 2 columns
    keep = torch.zeros(5, 9, dtype=torch.bool)  # GEMM view 9 × 5: tiles 3 × 3 (last ones cut)
    keep[0, 1] = True  # tile (rows 0-3, columns 0-1)
    keep[4, 8] = True  # tile (row 8, column 4)
    expected = torch.zeros(5, 9, dtype=torch.bool)
    expected[0:2, 0:4] = True
    expected[4:5, 8:9] = True
    assert torch.equal(built_weights(keep, spec), expected)
    # a grouped conv tiles every group on its own: 2 groups of 2 outputs × 4 inputs
    conv = torch.zeros(4, 1, 2, 2, dtype=torch.bool)
    conv[3, 0, 1, 1] = True
    built = built_weights(conv, spec, groups=2)
    assert built[2:].all() and not built[:2].any()
    with pytest.raises(ConstraintError, match="groups"):
        built_weights(conv, spec, groups=3)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_built_cells_count_the_crossbars_of_the_grid_layout(mapping: str) -> None:
    spec = CrossbarSpec(rows=6, cols=8, weight_bits=4, cell_bits=2, mapping=mapping)
    spec = dataclasses.replace(spec, cols=2 * spec.columns_per_weight)  # tiles of 6 × 2
    # GEMM views: conv 2 groups of 18 × 4, fc 12 × 4 (whole tiles only)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(12, 4))
    g = torch.Generator().manual_seed(0)
    masks = dp.Masks(
        {
            n: torch.rand(p.shape, generator=g) < 0.06
            for n, p in model.named_parameters()
            if p.dim() > 1
        }
    )
    built = built_cells(model, spec, masks)
    report = map_model(model, spec, masks, layout="grid")
    for layer in report.layers:
        b, keep = built[f"{layer.name}.weight"], masks[f"{layer.name}.weight"]
        assert bool(b[keep].all()) and int(b.sum()) == layer.crossbars * 12
    totals = report.totals()
    assert 0 < totals["crossbars"] < totals["dense_crossbars"]


def _tiled() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """fc (4×8) whose tiles of 4 rows × 2 columns: columns 0-1 × rows 0-3 and 4-7 are empty."""
    model = nn.Sequential(nn.Linear(8, 4))
    keep = torch.ones(4, 8, dtype=torch.bool)
    keep[0:2, :] = False  # outputs 0-1: both of their tiles hold no kept weight
    keep[2, 0] = False
    return model, {"0.weight": keep}


def test_unbuilt_tiles_read_zero_on_every_chip() -> None:
    spec = CrossbarSpec(rows=4, cols=4, weight_bits=4, cell_bits=2, mapping="offset")  # S = 2
    model, keep = _tiled()
    built = built_weights(keep["0.weight"], spec)
    assert not built[0:2].any() and built[2:].all()
    # every cell stuck at g_max, references too: a built weight reads 15 − 3·4 = 3 levels...
    stuck = DeviceNoise(stuck_max=1.0)
    chip = program_chip(model, spec, stuck, masks=keep, seed=1)
    alpha = to_levels(model[0].weight.detach(), 4, mask=keep["0.weight"])[1]
    w = chip[0].weight.detach()
    assert bool((w[0:2] == 0).all()) and torch.equal(w[2:], torch.full((2, 8), 3.0) * alpha)
    # ...and without built_only every cell exists, pruned tiles included (the old model)
    everywhere = program_chip(model, spec, stuck, masks=keep, seed=1, built_only=False)
    assert torch.equal(everywhere[0].weight.detach(), torch.full((4, 8), 3.0) * alpha)
    # faults: the same draws, dropped outside built tiles
    f = fault_masks(model, spec, stuck, masks=keep)["0.weight"]
    f_all = fault_masks(model, spec, stuck, masks=keep, built_only=False)["0.weight"]
    assert not f.stuck_max[:, :, 0:2].any() and torch.equal(
        f.stuck_max[:, :, 2:], f_all.stuck_max[:, :, 2:]
    )
    # variation and read noise do not reach unbuilt tiles either (differential)
    noisy = DeviceNoise(sigma=0.05, read=0.05, stuck_min=0.1, stuck_max=0.1)
    chip = program_chip(
        model, CrossbarSpec(rows=4, cols=4, weight_bits=3, cell_bits=2), noisy, masks=keep, seed=2
    )
    seen = []
    chip[0].register_forward_pre_hook(lambda m, a: seen.append(m.weight.detach().clone()))
    chip(torch.ones(1, 8))
    chip(torch.ones(1, 8))
    assert not torch.equal(seen[0], seen[1])
    assert all(bool((s[0:2] == 0).all()) and bool((s[2:] != 0).any()) for s in seen)


# ---- fault-aware retraining --------------------------------------------------------------


@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize(("bits", "cells"), [(3, 2), (5, 1), (8, 3)])
def test_fault_levels_are_what_the_stuck_cells_read(mapping: str, bits: int, cells: int) -> None:
    spec = CrossbarSpec(weight_bits=bits, cell_bits=cells, mapping=mapping, cols=16)
    top = 2 ** (bits - 1) - 1
    q = torch.randint(-top, top + 1, (9, 7), generator=torch.Generator().manual_seed(bits))
    noise = DeviceNoise(stuck_min=0.2, stuck_max=0.2)
    f = sample_faults(cell_shape(spec, (9, 7)), noise, cell_generator(0, "w", "faults"))
    cond = weights_to_conductances(q, spec)  # healthy reference cells
    stuck = cond.G.masked_fill(f.stuck_min, spec.g_min).masked_fill(f.stuck_max, spec.g_max)
    expected = conductances_to_levels(dataclasses.replace(cond, G=stuck))
    assert torch.equal(fault_levels(q, f, spec).double(), expected)
    none = torch.zeros_like(f.stuck_min)
    assert torch.equal(fault_levels(q, Faults(none, none), spec), q)
    with pytest.raises(ConstraintError, match="faults"):
        fault_levels(q[:3], f, spec)


@pytest.mark.parametrize(("bits", "cells"), [(3, 2), (8, 2)])
def test_read_faults_forward_is_the_faulty_chip(bits: int, cells: int) -> None:
    spec = CrossbarSpec(rows=8, cols=8, weight_bits=bits, cell_bits=cells)
    noise = DeviceNoise(stuck_min=0.05, stuck_max=0.05)
    model = tiny()
    q = dp.Sparsity(0.5) & dp.Quantization(bits=bits)
    masks = dp.Masks.from_constraints(model, {"conv": q, "fc": q})
    masks.apply(model)
    chip = program_chip(model, spec, noise, masks=masks, scales=masks.scales, seed=5)
    faults = fault_masks(model, spec, noise, seed=5, masks=masks)
    plain = copy.deepcopy(model)
    masks.attach(model)
    reads = read_faults(model, faults, spec, masks=masks)
    assert 0 < reads.counts["fc.weight"] < model.fc.weight.numel()
    before = model.fc.weight.detach().clone()
    y = model(X)
    assert torch.equal(y, chip(X))  # exactly what the chip computes
    assert torch.equal(model.fc.weight, before) and model.fc.weight.is_leaf  # W not written
    y.square().mean().backward()
    chip(X).square().mean().backward()  # straight-through: dL/dW = dL/dW_chip (kept W)
    keep = masks["fc.weight"]
    assert torch.allclose(model.fc.weight.grad[keep], chip.fc.weight.grad[keep], rtol=1e-5)
    reads.detach()
    masks.detach()
    reads.detach()  # idempotent
    assert torch.equal(model(X), plain(X))
    with pytest.raises(ConfigError, match="'nope.weight'"):
        read_faults(model, {"nope.weight": faults["fc.weight"]}, spec)


def test_read_faults_follow_the_weights_while_they_train() -> None:
    spec = CrossbarSpec(weight_bits=8, cell_bits=2)  # 4 slices: pinning would be far off
    noise = DeviceNoise(stuck_min=0.03, stuck_max=0.03)
    model = tiny()
    masks = dp.Masks.from_constraints(model, {"fc": dp.Quantization(bits=8)}).attach(model)
    faults = fault_masks(model, spec, noise, seed=2, layers="fc")
    reads = read_faults(model, faults, spec, scales=masks.scales)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        model(X).square().mean().backward()
        faulty = (
            (faults["fc.weight"].stuck_min | faults["fc.weight"].stuck_max).flatten(0, 1).any(0)
        )
        assert bool((model.fc.weight.grad[faulty] != 0).any())  # faulty weights still train
        opt.step()
    reads.detach()
    masks.detach()
    chip = program_chip(
        model,
        spec,
        DeviceNoise(stuck_min=0.03, stuck_max=0.03),
        layers="fc",
        scales=masks.scales,
        seed=2,
    )
    reads = read_faults(model, faults, spec, scales=masks.scales)
    assert torch.equal(model(X), chip(X))  # still the chip after the weights moved
    reads.detach()


def test_pinned_values_follow_the_stuck_cells() -> None:
    spec = CrossbarSpec(weight_bits=3, cell_bits=2)  # one slice, L = 3
    lo = torch.zeros(1, 2, 4, dtype=torch.bool)
    hi = torch.zeros(1, 2, 4, dtype=torch.bool)
    hi[0, 0, 0] = True  # positive device at g_max: +L
    hi[0, 1, 1] = True  # negative device at g_max: −L
    lo[0, 0, 2] = True  # positive device at g_min: 0
    pinned, value = pinned_values(Faults(lo, hi), spec, alpha=0.5)
    assert pinned.tolist() == [True, True, True, False]
    assert value.tolist() == [1.5, -1.5, 0.0, 0.0]


def test_pinned_faults_survive_sgd_with_momentum() -> None:
    model, spec = tiny(), CrossbarSpec(weight_bits=4, cell_bits=3)
    faults = fault_masks(model, spec, DeviceNoise(stuck_min=0.1, stuck_max=0.1), seed=0)
    pins = pin_faults(model, faults, spec)
    pinned, value = pins.values("fc.weight")
    assert 0 < pinned.sum() < pinned.numel() and torch.equal(model.fc.weight[pinned], value[pinned])
    before = model.fc.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(X).square().mean().backward()
        assert bool((model.fc.weight.grad[pinned] == 0).all())
        opt.step()
        assert torch.equal(model.fc.weight[pinned], value[pinned])
    assert not torch.equal(model.fc.weight[~pinned], before[~pinned])
    pins.detach()
    opt.step()  # hooks gone: momentum moves the pinned weights again
    assert not torch.equal(model.fc.weight[pinned], value[pinned])


def test_pins_win_over_attached_quantization_masks() -> None:
    model, spec = tiny(), CrossbarSpec(weight_bits=4, cell_bits=2)  # 2 slices: pins off-grid
    masks = dp.Masks.from_constraints(model, {"fc": dp.Quantization(bits=4)}).attach(model)
    faults = fault_masks(model, spec, DeviceNoise(stuck_max=0.1), seed=1, layers="fc")
    pins = pin_faults(model, faults, spec, scales=masks.scales)
    pinned, value = pins.values("fc.weight")
    alpha = masks.scales["fc.weight"]
    assert bool((value[pinned].abs() > 7 * alpha).any())  # beyond the 4-bit grid
    seen = []
    model.fc.register_forward_pre_hook(lambda m, a: seen.append(m.weight.detach().clone()))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
    model(X)
    for w in seen:  # every forward saw the pinned values, the rest on the grid
        assert torch.equal(w[pinned], value[pinned])
        assert torch.equal(w[~pinned], torch.round(w[~pinned] / alpha).clamp(-7, 7) * alpha)
    pins.detach()
    masks.detach()


def test_a_pinned_model_reads_back_exactly_on_its_faulty_chip() -> None:
    spec = CrossbarSpec(weight_bits=3, cell_bits=2)  # differential, one slice
    noise = DeviceNoise(stuck_min=0.05, stuck_max=0.05)
    model = quantized(tiny(), 3)
    scales = {f"{n}.weight": to_levels(getattr(model, n).weight, 3)[1] for n in ("conv", "fc")}
    faults = fault_masks(model, spec, noise, seed=5)
    pins = pin_faults(model, faults, spec, scales=scales)
    pins.detach()
    chip = program_chip(model, spec, noise, scales=scales, seed=5)
    assert torch.equal(chip.fc.weight, model.fc.weight)
    assert torch.equal(chip.conv.weight, model.conv.weight)
    unaware = program_chip(quantized(tiny(), 3), spec, noise, scales=scales, seed=5)
    assert not torch.equal(unaware.fc.weight, quantized(tiny(), 3).fc.weight)


# ---- errors ------------------------------------------------------------------------------


def test_errors_name_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="sigma"):
        DeviceNoise(sigma=-0.1)
    with pytest.raises(ConfigError, match="<= 1"):
        DeviceNoise(stuck_min=0.6, stuck_max=0.6)
    with pytest.raises(ConfigError, match="t0"):
        DeviceNoise(t0=0.0)
    with pytest.raises(ConfigError, match="'sigm'"):
        DeviceNoise.parse("sigm=0.1")
    assert DeviceNoise.parse("sigma=0.02, read=0.01") == DeviceNoise(sigma=0.02, read=0.01)
    with pytest.raises(ConfigError, match="weight_bits"):
        weights_to_conductances(torch.ones(2), CrossbarSpec(weight_bits=1, mapping="offset"))
    spec = CrossbarSpec(weight_bits=4, cell_bits=2)
    with pytest.raises(ConstraintError, match="-16..16|allowed"):
        weights_to_conductances(torch.tensor([99]), spec)
    with pytest.raises(ConstraintError, match="mask"):
        weights_to_conductances(torch.ones(3), spec, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ConstraintError, match="alpha"):
        weights_to_conductances(torch.ones(3), spec, alpha=-1.0)
    with pytest.raises(ConstraintError, match="faults"):
        bad = torch.zeros(3, 2, 4, dtype=torch.bool)
        pinned_values(Faults(bad, bad), spec, alpha=1.0)
    with pytest.raises(ConfigError, match="'nope.weight'"):
        pin_faults(tiny(), {"nope.weight": Faults(bad, bad)}, spec)
