"""The compression report: exact numbers on a hand-built model, files, tables and plots."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dualprune import models
from dualprune.constraints import Quantization, Sparsity
from dualprune.errors import PlanError
from dualprune.report.plots import _hard_prune_x, plot_accuracy, plot_residuals, write_plots
from dualprune.report.report import build_report, layer_table, terminal_table, write_report
from dualprune.size.metrics import layer_stats

STAGES = {
    "pretrain": {"test_acc": 0.99, "test_loss": 0.03},
    "hard_prune": {"test_acc": 0.95, "test_loss": 0.2},
    "retrain": {"test_acc": 0.985, "test_loss": 0.04},
}
HISTORIES = {
    "pretrain": [{"epoch": 1, "test_acc": 0.9}, {"epoch": 2, "test_acc": 0.99}],
    "admm": [{"epoch": 1, "test_acc": 0.97, "train_loss": 0.1}],
    "retrain": [{"epoch": 1, "test_acc": 0.98}, {"epoch": 2}],  # a row without test_acc
}
UPDATES = [
    {"update": 1, "epoch": 1, "rho": 0.01, "layers": {"fc": {"residual": 0.5, "rho": 0.01}}},
    {
        "update": 2,
        "layers": {"fc": {"residual": 0.1}},
        "step_size": 0.009,
        "conditions": [True, False],
    },
    {"epoch": 3},  # missing keys are tolerated
]


def tiny() -> tuple[nn.Module, dict]:
    """Linear 10→4 (40 weights, 4 biases) with 6 nonzeros at flat 0, 1, 2, 3, 20, 39, 4-bit."""
    net = nn.Sequential()
    net.add_module("fc", nn.Linear(10, 4))
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.weight.view(-1)[[0, 1, 2, 3, 20, 39]] = torch.tensor([1, -2, 3, 7, -7, 1.0]) / 8
    return net, {"fc": Sparsity(0.85) & Quantization(bits=4)}


@pytest.fixture
def report() -> dict:
    net, cons = tiny()
    return build_report(net, torch.zeros(3, 10), cons, STAGES, {"model": "tiny"})


def test_numbers_are_exact_on_a_hand_built_model(report):
    (fc,) = report["layers"]
    assert fc["name"] == "fc" and fc["kind"] == "Linear" and fc["shape"] == [4, 10]
    assert (fc["structure"], fc["quantization"], fc["bits"]) == ("irregular", "uniform 4-bit", 4)
    assert (fc["weights"], fc["nonzeros"], fc["sparsity"]) == (40, 6, 0.85)
    # gaps 1,1,1,1,17,19: Rice r = 2 (q = 0,0,0,0,4,4): 6·4 + 8 + 6·3 = 50 bits + 32-bit scale;
    # relative indices would take 3 bits and 4 escapes: 6·4 + 10·3 = 54
    assert (fc["index_kind"], fc["index_bits_per_entry"], fc["padding"]) == ("rice", 2, 0)
    assert (fc["value_bits"], fc["index_bits"], fc["scale_bits"]) == (24, 26, 32)
    assert (fc["rice_parameter"], fc["rice_bits"], fc["relative_index_bits"]) == (2, 26, 3)
    assert (fc["storage_bytes"], fc["storage_bytes_dense"]) == (11, 160)
    assert fc["break_even"] == 1.75 and fc["above_break_even"] is True  # (4 + 3)/4
    assert (fc["macs_dense"], fc["macs_effective"], fc["macs"]) == (40, 6, 40)
    t = report["totals"]
    assert (t["weights"], t["nonzeros"], t["params_other"], t["params_all"]) == (40, 6, 4, 44)
    assert t["compression_prunable"] == 40 / 6 and t["compression_all_params"] == 44 / 10
    assert (t["storage_bytes_dense"], t["storage_bytes_compressed"]) == (176, 11 + 16)
    assert t["storage_ratio"] == 176 / 27 and t["indices_counted"] is True
    assert (t["storage_bytes_dense_prunable"], t["storage_bytes_compressed_prunable"]) == (160, 11)
    assert (t["macs_dense"], t["macs_effective"], t["macs_ratio"]) == (40, 6, 40 / 6)
    assert report["stages"] == STAGES and report["summary"] == {"model": "tiny"}


def test_report_is_plain_json_even_when_everything_is_pruned():
    net, _ = tiny()
    with torch.no_grad():
        net.fc.weight.zero_()
    rep = build_report(net, None, None)
    assert json.loads(json.dumps(rep, allow_nan=False)) == rep
    assert rep["totals"]["compression_prunable"] is None  # ∞ is written as null
    assert rep["layers"][0]["structure"] == "dense" and rep["layers"][0]["bits"] == 32
    assert rep["totals"]["macs_ratio"] is None and rep["stages"] == {}


def test_unknown_layer_in_constraints_is_reported():
    net, _ = tiny()
    with pytest.raises(PlanError, match="'fc2'"):
        build_report(net, None, {"fc2": Quantization(bits=4)})


def test_write_report_writes_markdown_json_and_all_plots(report, tmp_path):
    md = write_report(tmp_path / "run", report, histories=HISTORIES, updates=UPDATES, title="T")
    text = md.read_text()
    assert text.startswith("# T") and "- **model**: tiny" in text
    assert "| stage | test acc | test loss |" in text and "| hard_prune | 95.00% |" in text
    assert "| layer | type | shape | structure | bits |" in text and "| fc | Linear |" in text
    assert "indices ARE counted" in text and "storage of the model: 176 B → 27 B" in text
    for name in ("accuracy", "residuals", "sparsity"):
        png = md.parent / f"{name}.png"
        assert png.stat().st_size > 1000 and f"![{name}]({name}.png)" in text
    data = json.loads((md.parent / "report.json").read_text())
    assert data["title"] == "T" and data["plots"] == [
        "accuracy.png",
        "residuals.png",
        "sparsity.png",
    ]
    assert data["totals"] == report["totals"]


def test_plots_are_skipped_without_their_data(report, tmp_path):
    assert write_plots(tmp_path) == []
    assert write_plots(tmp_path, report) == [tmp_path / "sparsity.png"]
    assert plot_accuracy({"pretrain": [{"epoch": 1}]}, tmp_path / "a.png") is None
    no_residuals = [{"update": 1}, {"layers": {"fc": {"residual": 0.0}}}, {"layers": {"fc": 1}}]
    assert plot_residuals(no_residuals, tmp_path / "r.png") is None
    md = write_report(tmp_path / "run", report, title="T")
    assert "![accuracy]" not in md.read_text() and (md.parent / "sparsity.png").exists()
    assert plot_accuracy(None, tmp_path / "hp.png", hard_prune=0.9) is None


def test_hard_prune_is_marked_where_retraining_starts():
    ends = {"pretrain": 2.0, "admm": 3.0, "retrain": 5.0}
    assert _hard_prune_x(ends, list(STAGES)) == 3.0  # admm is not a report stage
    assert _hard_prune_x(ends, None) == 3.0
    assert _hard_prune_x({"pretrain": 2.0, "slr": 4.0}, ["pretrain", "hard_prune"]) == 4.0


def test_terminal_table_has_its_columns_a_total_row_and_the_totals(report):
    lines = terminal_table(report).splitlines()
    assert lines[0].split() == [
        "layer", "type", "shape", "structure", "bits", "weights", "nonzero", "sparsity",
        "index", "storage", "break-even", "MACs", "eff.", "MACs",
    ]  # fmt: skip
    assert lines[1].split()[:10] == ["fc", "Linear", "4×10", "irregular", "4", "40", "6",
                                     "85.0%", "rice", "r=2"]  # fmt: skip
    assert lines[2].startswith("total")
    text = "\n".join(lines)
    assert "6.67× over prunable weights" in text and "4.4× over all 44 parameters" in text
    assert "MACs per sample: 40 dense → 6 effective (6.67×)" in text


def test_the_earlier_call_with_layer_stats_still_works(tmp_path):
    net, _ = tiny()
    stats = layer_stats(net, torch.zeros(1, 10))
    md = write_report(tmp_path, stats, {"test accuracy": "99.00%"}, title="old")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["totals"]["weights"] == 40 and data["layers"][0]["macs"] == 40
    assert data["totals"]["params_all"] is None  # the model was not given
    assert "- **test accuracy**: 99.00%" in md.read_text()
    assert layer_table(stats).splitlines()[-1].split()[:3] == ["total", "40", "6"]


def test_totals_add_up_over_layers_and_other_parameters():
    torch.manual_seed(0)
    net = models.create("lenet5")
    cons = {"conv1": Quantization(bits=3), "fc1": Sparsity(0.95) & Quantization(levels="ternary")}
    with torch.no_grad():
        net.fc1.weight.copy_(cons["fc1"].project(net.fc1.weight))
    rep = build_report(net, None, cons)
    t, layers = rep["totals"], rep["layers"]
    assert t["storage_bytes_compressed_prunable"] == sum(la["storage_bytes"] for la in layers)
    assert t["storage_bytes_compressed"] == t["storage_bytes_compressed_prunable"] + 4 * 580
    assert t["storage_bytes_dense"] == 4 * 431_080 and t["params_all"] == 431_080
    fc1 = layers[2]
    assert (fc1["structure"], fc1["quantization"], fc1["bits"]) == ("irregular", "ternary", 2)
    assert fc1["index_kind"] == "rice" and layers[0]["index_kind"] == "none"
    assert fc1["nonzero_bits"] == 1 and fc1["value_bits"] == fc1["nonzeros"]  # the sign
    assert layers[1]["quantization"] == "fp32" and layers[1]["bits"] == 32
