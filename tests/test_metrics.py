import math

import torch
from torch import nn

from dualprune.metrics import compression_ratio, layer_stats, totals
from dualprune.report import layer_table


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
