"""Crossbar mapping (docs/algorithms.md §6): counts, tiles, MVMs, crossbar-aware plans."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dualprune import Masks, Sparsity
from dualprune.errors import ConfigError, PlanError, UnknownNameError
from dualprune.hardware.crossbar import cell_levels, map_model, weight_levels
from dualprune.hardware.plan import crossbar_block, crossbar_plan
from dualprune.hardware.spec import CrossbarSpec

M1 = CrossbarSpec(weight_bits=2, cell_bits=2, mapping="offset")  # m = 1
M2 = CrossbarSpec(weight_bits=3, cell_bits=2, mapping="differential")  # m = 2


def conv(cin: int = 64, cout: int = 128, k: int = 3, seed: int = 0, **kw) -> nn.Conv2d:
    torch.manual_seed(seed)
    layer = nn.Conv2d(cin, cout, k, bias=False, **kw)
    with torch.no_grad():  # no exact zeros
        layer.weight.copy_(torch.rand_like(layer.weight) + 0.1)
    return layer


def gemm(layer: nn.Module) -> torch.Tensor:
    """The R × C GEMM view of the weight, writable (rows = inputs)."""
    return layer.weight.data.view(layer.weight.shape[0], -1).t()


# ---- dense counts ----------------------------------------------------------------------


def test_columns_per_weight():
    assert M1.columns_per_weight == 1 and M2.columns_per_weight == 2
    assert map_model(conv(), M2).columns_per_weight == 2


@pytest.mark.parametrize(("spec", "expected"), [(M1, 5), (M2, 10)])
def test_conv_64_to_128_on_128x128(spec, expected):
    layer = map_model(conv(), spec).layer("")
    assert (layer.rows, layer.cols) == (576, 128)
    assert layer.dense_crossbars == layer.crossbars == expected
    m = spec.columns_per_weight
    assert expected == math.ceil(576 / 128) * math.ceil(128 * m / 128)


@pytest.mark.parametrize("size", [32, 64, 256])
@pytest.mark.parametrize("bits", [(2, 2, "offset"), (3, 2, "differential"), (8, 2, "differential")])
def test_dense_count_formula(size, bits):
    spec = CrossbarSpec(
        rows=size, cols=size, weight_bits=bits[0], cell_bits=bits[1], mapping=bits[2]
    )
    layer = map_model(conv(16, 40), spec).layer("")
    m = spec.columns_per_weight
    assert layer.crossbars == math.ceil(144 / size) * math.ceil(40 * m / size)


def test_active_rows_cols_and_converters_of_dense_tiles():
    r = map_model(conv(), M2)
    tiles = r.layer("").tiles
    assert sorted({t.rows for t in tiles}) == [64, 128]  # 576 = 4·128 + 64
    assert all(t.cols == 64 and t.phys_cols == 128 for t in tiles)
    assert all(t.adcs == 128 // M2.adc_mux for t in tiles)
    assert {t.rows: t.adc_bits for t in tiles} == {128: 9, 64: 8}
    assert r.totals()["dacs"] == 576 * 2  # every row drives both tile columns


def test_offset_mapping_reads_a_reference_column():
    spec = CrossbarSpec(weight_bits=4, cell_bits=2, mapping="offset", adc_mux=1)
    tiles = map_model(conv(16, 8), spec).layer("").tiles
    assert [(t.cols, t.phys_cols, t.adcs) for t in tiles] == [(8, 8 * 2 + 1, 17)] * 2


def test_adc_bits_follow_active_rows():
    lin = nn.Linear(128, 4, bias=False)
    nn.init.constant_(lin.weight, 0.5)
    assert map_model(lin, M2).layer("").tiles[0].adc_bits == 9  # 128 rows, 1-bit DAC, 2-bit cells
    with torch.no_grad():
        lin.weight[:, 32:] = 0
    (tile,) = map_model(lin, M2).layer("").tiles
    assert (tile.rows, tile.adc_bits) == (32, 7)  # ceil(log2(32·3 + 1))


# ---- pruning -----------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.sets(st.integers(0, 19), max_size=20))
def test_zeroing_k_whole_tiles_removes_k_crossbars(zeroed):
    spec = CrossbarSpec(rows=32, cols=32, weight_bits=3, cell_bits=2)  # tiles 32 × 16
    layer = conv(16, 64, seed=1)  # R = 144 → 5 tile rows, C = 64 → 4 tile columns
    g = gemm(layer)
    for t in zeroed:
        i, j = divmod(t, 4)
        g[32 * i : 32 * (i + 1), 16 * j : 16 * (j + 1)] = 0
    assert map_model(layer, spec).layer("").crossbars == 20 - len(zeroed)


def test_zeroing_tile_rows_and_columns_is_exact_with_m2():
    layer = conv()
    g = gemm(layer)
    g[0:128, :] = 0  # a whole tile row: 2 crossbars
    g[256:384, 64:] = 0  # one more tile
    assert map_model(layer, M2).layer("").crossbars == 10 - 3


def test_irregular_90_percent_removes_no_crossbar():
    layer = conv()
    with torch.no_grad():
        layer.weight.copy_(Sparsity(0.9).project(layer.weight))
    assert float((layer.weight == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)
    for spec in (M1, M2):
        got = map_model(layer, spec).layer("")
        assert got.crossbars == got.dense_crossbars
        m = spec.columns_per_weight  # no row or column is empty either:
        assert got.packed == math.ceil(576 * 128 * m / 128**2)


def test_dropping_zero_rows_compacts_the_layout():
    lin = nn.Linear(256, 8, bias=False)
    nn.init.constant_(lin.weight, 1.0)
    with torch.no_grad():
        lin.weight[:, ::2] = 0  # every other input: 128 live rows spread over 2 tiles
    got = map_model(lin, M2).layer("")
    assert (got.dense_crossbars, got.crossbars) == (2, 1)
    assert got.tiles[0].rows == 128


@pytest.mark.parametrize("layout", ["best", "compact", "grid"])
def test_all_zero_layer_needs_no_crossbar(layout):
    lin = nn.Linear(300, 200, bias=False)
    nn.init.zeros_(lin.weight)
    got = map_model(lin, M2, layout=layout).layer("")
    assert (got.dense_crossbars, got.crossbars, got.packed, got.dacs) == (3 * 4, 0, 0, 0)


def test_packed_is_trimmed_area():
    lin = nn.Linear(200, 100, bias=False)
    nn.init.constant_(lin.weight, 1.0)
    got = map_model(lin, M2).layer("")
    assert got.packed == math.ceil(200 * 100 * 2 / 128**2)
    assert got.crossbars == 2 * 2  # ceil(200/128) · ceil(100/64)
    assert got.packed <= got.crossbars


def test_masks_decide_over_weights():
    layer = conv(16, 64, seed=2)
    keep = torch.zeros(layer.weight.shape, dtype=torch.bool)
    keep[:, :8] = True  # input channels 0..7: 72 of the 144 GEMM rows
    masks = Masks({"weight": keep})
    assert map_model(layer, M2).layer("").crossbars == 2  # the weights have no zeros
    got = map_model(layer, M2, masks).layer("")
    assert got.nonzero == int(keep.sum())
    assert got.crossbars == 1 and got.tiles[0].rows == 72
    assert map_model(layer, M2, masks, dense=True).layer("").crossbars == 2


def test_depthwise_conv_is_mapped_per_group():
    layer = conv(8, 8, groups=8)
    got = map_model(layer, M2).layer("")
    assert (got.groups, got.rows, got.cols) == (8, 9, 1)
    assert got.dense_crossbars == got.crossbars == 8
    assert {(t.group, t.rows, t.cols, t.phys_cols) for t in got.tiles} == {
        (g, 9, 1, 2) for g in range(8)
    }
    assert got.packed == 1  # 8·9·2 cells fit one crossbar
    with torch.no_grad():
        layer.weight[3] = 0
    assert map_model(layer, M2).layer("").crossbars == 7


def test_grouped_conv_per_group():
    layer = conv(8, 256, groups=2)  # per group: R = 36, C = 128 → 2 tiles with m = 2
    got = map_model(layer, M2).layer("")
    assert got.crossbars == 2 * 2
    with torch.no_grad():
        layer.weight[128:] = 0  # group 1
    assert map_model(layer, M2).layer("").crossbars == 2


# ---- levels ------------------------------------------------------------------------------


def test_weight_levels_use_the_full_range():
    q = weight_levels(torch.tensor([0.5, -1.0, 0.0, 0.26]), 3)  # L = 3, α = 1/3
    assert q.tolist() == [2, -3, 0, 1]
    assert weight_levels(torch.zeros(3), 8).tolist() == [0, 0, 0]


def test_cell_levels_split_into_slices():
    q = torch.tensor([-5, 5, 0, 7])
    diff = CrossbarSpec(weight_bits=4, cell_bits=2)  # |q| in 2 slices of 2 bits
    assert cell_levels(q, diff).tolist() == [1 + 1, 1 + 1, 0, 3 + 1]
    off = CrossbarSpec(weight_bits=4, cell_bits=2, mapping="offset")  # u = q + 8
    assert cell_levels(q, off).tolist() == [3 + 0, 1 + 3, 0 + 2, 3 + 3]


# ---- MVMs ----------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.seq = nn.Linear(8, 8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = self.conv(x)  # (B, 8, 8, 8)
        x = self.seq(x)  # applied at 8·8 positions
        return self.fc(x.flatten(1))


def test_mvm_counts_from_example_input():
    net = Net()
    net.train()
    r = map_model(net, M2, example_input=torch.zeros(2, 3, 16, 16))
    assert [(layer.name, layer.mvms) for layer in r.layers] == [
        ("conv", 64),
        ("seq", 64),
        ("fc", 1),
    ]
    assert net.training  # mode restored
    r = map_model(net, M2)
    assert [layer.mvms for layer in r.layers] == [None, 1, 1]


# ---- report ------------------------------------------------------------------------------


def test_report_as_dict_and_table():
    r = map_model(Net(), M2, example_input=torch.zeros(1, 3, 16, 16))
    d = json.loads(json.dumps(r.as_dict()))
    assert d["totals"]["crossbars"] == sum(layer["crossbars"] for layer in d["layers"])
    assert d["columns_per_weight"] == 2
    text = str(r)
    assert "conv" in text and "total" in text and "m = 2" in text


# ---- crossbar-aware plans -------------------------------------------------------------


def hard_prune(model: nn.Module, plan) -> Masks:
    masks = Masks.from_constraints(model, plan.resolve(model))
    masks.apply(model)
    return masks


@pytest.mark.parametrize("spec", [M1, M2, CrossbarSpec(rows=64, cols=64)])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_block_plan_removes_crossbars_as_the_ratio_says(spec, ratio):
    model = nn.Sequential(conv(seed=3))
    before = map_model(model, spec).layer("0").crossbars
    masks = hard_prune(model, crossbar_plan(model, spec, ratio))
    kept = round((1 - ratio) * before + 1e-9)
    assert map_model(model, spec, masks).layer("0").crossbars == kept
    assert map_model(model, spec).layer("0").crossbars == kept  # the weights' own zeros


def test_block_plan_aligns_with_tiles_and_quantizes():
    model = nn.Sequential(
        conv(seed=4), nn.Conv2d(128, 128, 3, groups=128), nn.Flatten(), nn.Linear(50, 7)
    )
    plan = crossbar_plan(model, M2, 0.5)
    c = plan.resolve(model)
    assert c["0"].supports[0].options["block"] == (128, 64)  # 128 rows × 128/2 columns
    assert c["1"].supports[0].options["block"] == (9, 1)  # one depthwise group per tile
    assert c["3"].supports[0].options["block"] == (50, 7)  # smaller than a crossbar
    assert c["0"].value.bits == M2.weight_bits
    hard_prune(model, plan)
    w = model[0].weight.detach()
    assert torch.unique(w[w != 0].abs()).numel() <= 2**M2.weight_bits // 2 - 1
    assert map_model(model, M2).layer("1").crossbars == 64


def test_tile_rows_plan_limits_rows_per_crossbar():
    model = nn.Sequential(conv(seed=5))
    masks = hard_prune(model, crossbar_plan(model, M2, 0.75, "tile_rows", quantize=False))
    grid = map_model(model, M2, masks, layout="grid").layer("0")
    assert grid.crossbars == 10
    assert [t.rows for t in grid.tiles] == [32] * 8 + [16] * 2  # round(0.25·128), round(0.25·64)
    assert all(t.adc_bits <= 7 for t in grid.tiles)
    compact = map_model(model, M2, masks, layout="compact").layer("0")
    best = map_model(model, M2, masks).layer("0")  # merges rows of different tiles
    assert best.crossbars == min(grid.crossbars, compact.crossbars) < 10


def test_tile_cols_plan_limits_columns_per_crossbar():
    model = nn.Sequential(conv(seed=6))
    masks = hard_prune(model, crossbar_plan(model, M2, 0.5, "tile_cols", quantize=False))
    r = map_model(model, M2, masks, layout="grid").layer("0")
    assert r.crossbars == 10 and all(t.cols == 32 and t.phys_cols == 64 for t in r.tiles)
    assert r.adcs == 10 * 64 // M2.adc_mux


def test_plan_layers_and_exclude():
    model = nn.Sequential(conv(seed=7), nn.Flatten(), nn.Linear(10, 2))
    assert list(crossbar_plan(model, M2, 0.5, layers="0").resolve(model)) == ["0"]
    assert list(crossbar_plan(model, M2, 0.5, exclude="0").resolve(model)) == ["2"]


# ---- errors ------------------------------------------------------------------------------


def test_errors():
    with pytest.raises(UnknownNameError, match="did you mean 'tile_rows'"):
        crossbar_plan(nn.Linear(4, 4), M2, 0.5, "tile_row")
    with pytest.raises(PlanError, match="groups of 96 outputs"):
        crossbar_block(nn.Conv2d(8, 192, 3, groups=2), M2)
    with pytest.raises(PlanError, match="matches no"):
        crossbar_plan(nn.Sequential(nn.Linear(4, 4)), M2, 0.5, layers="fc*")
    with pytest.raises(ConfigError, match="cols=4 cannot hold"):
        CrossbarSpec(rows=4, cols=4, weight_bits=8, cell_bits=1)
    with pytest.raises(ConfigError, match="rows must be a positive"):
        CrossbarSpec(rows=0)
    with pytest.raises(ConfigError, match="mask of 'weight'"):
        map_model(nn.Linear(4, 4), M2, Masks({"weight": torch.ones(4, 5, dtype=torch.bool)}))
    with pytest.raises(ConfigError, match="example_input"):
        map_model(nn.Linear(4, 4), M2, example_input=[torch.zeros(1, 4)])
    with pytest.raises(ConfigError, match="no Conv1d/Conv2d/Linear"):
        map_model(nn.ReLU(), M2)
    with pytest.raises(UnknownNameError, match="did you mean 'grid'"):
        map_model(nn.Linear(4, 4), M2, layout="gird")
    with pytest.raises(UnknownNameError, match="did you mean 'fc'"):
        map_model(Net(), M2).layer("fcc")


def test_map_does_not_change_the_model():
    net = Net()
    before = copy.deepcopy(net.state_dict())
    map_model(net, M2, example_input=torch.zeros(1, 3, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_crossbar_plan_excludes_and_uses_the_crossbar_tile():
    from dualprune import models
    from dualprune.hardware import CrossbarSpec, crossbar_plan

    model = models.create("lenet5")
    spec = CrossbarSpec(weight_bits=4)
    plan = crossbar_plan(model, spec, 0.5, exclude="conv1")
    resolved = plan.resolve(model)
    assert "conv1" not in resolved
    assert resolved["fc1"].to_dict()["parts"][0]["block"] == [128, 32]  # 128 × 128/m, m = 4
