"""Crossbar cost model (docs/algorithms.md §6): profiles, energy, area, latency, reductions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dualprune import Masks
from dualprune.errors import ConfigError, UnknownNameError
from dualprune.hardware.cost import cost, cost_vs_dense
from dualprune.hardware.crossbar import map_model
from dualprune.hardware.plan import crossbar_plan
from dualprune.hardware.profiles import PROFILES, get_profile
from dualprune.hardware.spec import CrossbarSpec

ISAAC, NEURO = PROFILES["isaac32"], PROFILES["neurosim22"]


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 10)
    )
    with torch.no_grad():  # no exact zeros: a dense model
        for p in net.parameters():
            p.copy_(torch.rand_like(p) + 0.05)
    return net


X = torch.zeros(1, 4, 6, 6)


# ---- profiles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "energy_pj", "area_um2"),
    [(4, 0.79, 361.04), (5, 0.99, 476.91), (8, 1.67, 1200.0), (9, 1.969078145, 1827.911647)],
)
def test_isaac_adc_table(bits, energy_pj, area_um2):
    assert ISAAC.adc.energy(bits) == pytest.approx(energy_pj * 1e-12, rel=1e-12)
    assert ISAAC.adc.area(bits) == pytest.approx(area_um2 * 1e-12, rel=1e-12)
    assert ISAAC.adc.time(bits) == pytest.approx(bits / 8 / 1.2e9, rel=1e-12)


def test_isaac_adc_outside_the_table():
    assert ISAAC.adc.resolve(2) == 4 and ISAAC.adc.energy(2) == ISAAC.adc.energy(4)
    with pytest.raises(ConfigError, match="11 bits"):
        ISAAC.adc.energy(11)


def test_isaac_periphery_constants():
    assert ISAAC.dac(1) == pytest.approx((0.41667e-12, 0.166015625e-12), rel=1e-12)
    assert ISAAC.dac(3)[0] == pytest.approx(4 * 0.41667e-12, rel=1e-12)  # 2^{d−1} scaling
    assert ISAAC.shift_add_energy.value == pytest.approx(0.021e-12, rel=1e-12)
    assert ISAAC.shift_add_area.value == pytest.approx(60e-12, rel=1e-12)


@pytest.mark.parametrize("bits", [1, 5, 9, 12])
def test_neurosim_adc_formula(bits):
    power = (0.538 * bits + 4.3753) * 1e-6
    assert NEURO.adc.time(bits) == pytest.approx((bits + 1) * 1e-9, rel=1e-12)
    assert NEURO.adc.energy(bits) == pytest.approx(power * (bits + 1) * 1e-9, rel=1e-12)
    unit = 28 * 7.6 * (22e-9) ** 2
    expected = unit * (269 + 109 * (bits - 1)) + unit * (209 + 73 * (bits - 1))
    assert NEURO.adc.area(bits) == pytest.approx(expected, rel=1e-12)


def test_cell_areas_and_read_conditions():
    assert NEURO.cell_area.value == pytest.approx(48 * (22e-9) ** 2, rel=1e-12)
    assert PROFILES["neurosim22-xbar"].cell_area.value == pytest.approx(4 * (22e-9) ** 2)
    assert (NEURO.read_voltage.value, NEURO.read_time.value) == (0.5, 10e-9)


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_constant_has_a_source(name):
    p = get_profile(name)
    assert p.adc.source
    for key, q in p.constants().items():
        assert q.source and q.unit, key
        assert q.value > 0, key
    json.dumps(p.as_dict())


def test_assumptions_are_marked():
    assert "assumption" in ISAAC.read_voltage.source
    assert "assumption" in NEURO.dac_energy.source
    assert "assumption" not in ISAAC.dac_energy.source


def test_unknown_profile():
    with pytest.raises(UnknownNameError, match="did you mean 'isaac32'"):
        get_profile("isac32")
    with pytest.raises(UnknownNameError, match="did you mean 'neurosim22'"):
        cost(map_model(nn.Linear(4, 2), CrossbarSpec()), "neurosim2")


# ---- the model, by hand -------------------------------------------------------------------


def test_one_crossbar_by_hand():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -0.5]]))
    spec = CrossbarSpec(rows=2, cols=2, weight_bits=3, cell_bits=2, input_bits=1, adc_mux=1)
    report = cost(map_model(lin, spec), "isaac32")
    # levels: α = 1/3 → q = (3, −2); differential, one slice: cell levels 3 and 2
    g_min = spec.g_max / spec.on_off
    g = 4 * g_min + 5 * (spec.g_max - g_min) / 3  # 2 rows × 2 physical columns
    adc_bits = math.ceil(math.log2(2 * 1 * 3 + 1))  # 3 → the 4-bit table entry
    e = report.energy
    assert e["dac"] == pytest.approx(2 * 0.41667e-12, rel=1e-12)
    assert e["array"] == pytest.approx(0.5**2 * 10e-9 * g, rel=1e-12)
    assert e["adc"] == pytest.approx(2 * ISAAC.adc.energy(adc_bits), rel=1e-12)
    assert e["adc"] == pytest.approx(2 * 0.79e-12, rel=1e-12)
    assert e["shift_add"] == pytest.approx(2 * 0.021e-12, rel=1e-12)
    assert e["total"] == pytest.approx(sum(e[k] for k in ("dac", "array", "adc", "shift_add")))
    a = report.area
    assert a["cells"] == pytest.approx(4 * ISAAC.cell_area.value, rel=1e-12)
    assert a["adc"] == pytest.approx(2 * 361.04e-12, rel=1e-12)
    assert a["dac"] == pytest.approx(2 * 0.166015625e-12, rel=1e-12)
    assert a["shift_add"] == pytest.approx(2 * 60e-12, rel=1e-12)
    assert report.latency == pytest.approx(10e-9 + 4 / 8 / 1.2e9, rel=1e-12)


def test_offset_reference_column_conducts():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
    spec = CrossbarSpec(rows=2, cols=2, weight_bits=2, cell_bits=2, mapping="offset", input_bits=1)
    # q = (1, −1) → u = q + 2 = (3, 1); reference cells hold 2: levels 3 + 1 + 2·2
    g_min = spec.g_max / spec.on_off
    g = 4 * g_min + 8 * (spec.g_max - g_min) / 3
    assert cost(map_model(lin, spec)).energy["array"] == pytest.approx(0.25 * 10e-9 * g)


# ---- scaling and reductions ------------------------------------------------------------


def test_energy_is_linear_in_input_slices():
    net = small_net()
    costs = [
        cost(map_model(net, CrossbarSpec(input_bits=b, dac_bits=1), example_input=X))
        for b in (4, 8)
    ]
    for part in ("dac", "array", "adc", "shift_add", "total"):
        assert costs[1].energy[part] == pytest.approx(2 * costs[0].energy[part], rel=1e-12)
    assert costs[1].latency == pytest.approx(2 * costs[0].latency, rel=1e-12)
    assert costs[1].area == costs[0].area


def test_energy_is_linear_in_mvms():
    net = small_net()
    spec = CrossbarSpec()
    one = cost(map_model(net, spec, example_input=torch.zeros(1, 4, 6, 6)))
    big = cost(map_model(net, spec, example_input=torch.zeros(3, 4, 6, 6)))
    assert big.energy["total"] == pytest.approx(one.energy["total"], rel=1e-12)  # per sample
    conv = one.layers[0]
    assert conv.mvms == 36


@pytest.mark.parametrize("profile", list(PROFILES))
def test_dense_model_has_no_reduction(profile):
    r = cost_vs_dense(small_net(), CrossbarSpec(profile=profile), example_input=X)
    assert r.reductions == dict.fromkeys(r.reductions, 0.0)
    assert r.energy == r.baseline.energy


def test_block_pruning_halves_crossbars_and_cuts_cost():
    net = small_net()
    spec = CrossbarSpec(rows=64, cols=64, weight_bits=4, cell_bits=2)  # m = 4, 16 columns a tile
    plan = crossbar_plan(net, spec, 0.5, layers="0", quantize=False)
    masks = Masks.from_constraints(net, plan.resolve(net))
    masks.apply(net)
    r = cost_vs_dense(net, spec, masks, X)
    conv = map_model(net, spec, masks, X).layer("0")
    assert conv.dense_crossbars == 2 and conv.crossbars == 1
    red = r.reductions
    dense_xbars = r.baseline.crossbars
    assert red["crossbars"] == pytest.approx(1 / dense_xbars, rel=1e-12)
    assert 0 < red["energy_j"] < 1 and 0 < red["area_m2"] < 1 and red["adcs"] > 0
    assert "vs dense" in str(r)
    json.dumps(r.as_dict())


def test_fewer_active_rows_need_smaller_adcs():
    lin = nn.Linear(128, 8, bias=False)
    nn.init.constant_(lin.weight, 1.0)
    spec = CrossbarSpec(input_bits=1)
    full = cost(map_model(lin, spec))
    with torch.no_grad():
        lin.weight[:, 16:] = 0  # 16 rows: ceil(log2(16·3 + 1)) = 6 bits instead of 9
    small = cost(map_model(lin, spec))
    assert small.energy["adc"] / full.energy["adc"] == pytest.approx(1.20 / 1.969078145)
    assert small.energy["dac"] / full.energy["dac"] == pytest.approx(16 / 128)


# ---- errors ------------------------------------------------------------------------------


def test_errors():
    with pytest.raises(ConfigError, match="no MVM count"):
        cost(map_model(small_net(), CrossbarSpec()))
    with pytest.raises(ConfigError, match="11 bits"):
        cost(map_model(nn.Linear(512, 2), CrossbarSpec(rows=512)), "isaac32")
    assert cost(map_model(nn.Linear(512, 2), CrossbarSpec(rows=512)), "neurosim22").latency > 0
    with pytest.raises(ConfigError, match="no dense baseline"):
        _ = cost(map_model(nn.Linear(4, 2), CrossbarSpec())).reductions
    with pytest.raises(ConfigError, match="CrossbarReport"):
        cost("report")  # type: ignore[arg-type]
