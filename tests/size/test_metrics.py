import math

import pytest
import torch
from torch import nn

from dualprune import models
from dualprune.constraints import Quantization, Sparsity
from dualprune.errors import PlanError
from dualprune.report.report import layer_table
from dualprune.size.metrics import compression_ratio, layer_stats, model_totals, totals


def test_counts_macs_and_sparsity_of_conv_grouped_and_linear():
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),  # 8×4×3×3 = 288 weights, 6×6 positions
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 72 weights
        nn.Flatten(),
        nn.Linear(8 * 36, 5),
    )
    with torch.no_grad():
        net[0].weight[:4] = 0  # half the filters
    stats = layer_stats(net, torch.zeros(3, 4, 6, 6))
    conv, dw, fc = stats
    assert (conv.weights, conv.nonzero, conv.macs) == (288, 144, 36 * 288)
    assert conv.effective_macs == 36 * 144 and math.isclose(conv.sparsity, 0.5)
    assert (dw.weights, dw.macs) == (72, 36 * 72)
    assert (fc.weights, fc.macs) == (8 * 36 * 5, 8 * 36 * 5)
    t = totals(stats)
    assert t["weights"] == 288 + 72 + 1440 and t["nonzero"] == t["weights"] - 144
    assert math.isclose(t["compression"], t["weights"] / t["nonzero"])


def test_linear_on_sequences_counts_every_position():
    (fc,) = layer_stats(nn.Sequential(nn.Linear(16, 4)), torch.zeros(1, 10, 16))
    assert fc.macs == 10 * 64


def test_without_input_macs_are_zero_and_model_mode_is_kept():
    net = nn.Sequential(nn.Linear(3, 2))
    net.train()
    (fc,) = layer_stats(net)
    assert fc.macs == 0 and net.training
    layer_stats(net, torch.zeros(1, 3))
    assert net.training


def test_compression_ratio_of_an_empty_layer_is_infinite():
    assert compression_ratio(10, 0) == float("inf")


def test_table_has_a_total_row_and_markdown_form():
    stats = layer_stats(nn.Sequential(nn.Linear(3, 2)), torch.zeros(1, 3))
    text = layer_table(stats)
    assert text.splitlines()[0].split() == ["layer", "type", "shape", "weights", "nonzero",
                                            "sparsity", "MACs"]  # fmt: skip
    assert text.splitlines()[-1].startswith("total")
    assert layer_table(stats, markdown=True).startswith("| layer |")


# ---- FlopCounterMode against the analytic count ------------------------------------------


def analytic_macs(model: nn.Module, sizes: dict[str, int]) -> dict[str, int]:
    """Σ out·(in/groups)·kh·kw·H_out·W_out per conv, in·out per linear."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = m.weight.numel() * sizes[name] ** 2
        elif isinstance(m, nn.Linear):
            out[name] = m.in_features * m.out_features
    return out


def test_dense_macs_of_lenet5_match_the_analytic_count():
    net = models.create("lenet5")
    stats = {s.name: s.macs for s in layer_stats(net, torch.zeros(2, 1, 28, 28))}
    assert stats == analytic_macs(net, {"conv1": 24, "conv2": 8})
    assert stats == {"conv1": 288_000, "conv2": 1_600_000, "fc1": 400_000, "fc2": 5_000}


def test_dense_macs_of_resnet20_match_the_analytic_count():
    net = models.create("resnet20")
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    # output side: 32 for the stem and stage 1, 16 for stage 2, 8 for stage 3
    sizes = {n: {"layer2": 16, "layer3": 8}.get(n.split(".")[0], 32) for n in names}
    stats = layer_stats(net, torch.zeros(1, 3, 32, 32))
    assert {s.name: s.macs for s in stats} == analytic_macs(net, sizes)
    assert totals(stats)["macs"] == 40_813_184  # 40.8M, incl. the two 1×1 downsample convs


def test_effective_macs_skip_zero_weights_and_storage_follows_the_constraint():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 16, 3))
    with torch.no_grad():
        net[0].weight[:, :, 0] = 0  # a third of the conv weights
        net[2].weight[0] = 0
    cons = {"0": Sparsity(0.3) & Quantization(bits=4), "2": Quantization(levels="ternary")}
    conv, fc = layer_stats(net, torch.zeros(1, 2, 6, 6), cons)
    assert conv.macs == 72 * 16 and conv.effective_macs == 48 * 16
    assert fc.effective_macs == 2 * 64
    assert (conv.bits, conv.structure, fc.bits, fc.structure) == (4, "irregular", 2, "dense")
    assert conv.storage is not None and conv.storage.scale_bits == 32
    assert conv.as_dict()["storage"]["bits"] == 4


def test_unknown_constraint_layer_is_a_plan_error():
    with pytest.raises(PlanError, match="'fc9'.*did you mean 'fc.'"):
        layer_stats(models.create("lenet5"), None, {"fc9": Quantization(bits=4)})


def test_model_totals_add_the_other_parameters():
    net = nn.Sequential(nn.Linear(10, 4))  # 40 weights + 4 biases
    with torch.no_grad():
        net[0].weight[:, 5:] = 0
    t = model_totals(net, layer_stats(net, torch.zeros(1, 10)))
    assert (t["params_other"], t["params_all"], t["nonzero"]) == (4, 44, 20)
    assert t["compression"] == 2.0 and t["compression_all"] == 44 / 24
    assert t["storage_bytes_dense"] == 176
    assert t["storage_ratio"] == 176 / t["storage_bytes"]
