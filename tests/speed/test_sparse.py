"""Sparse layers equal dense ones; sparsify swaps by measured speed; break-even on a curve.

Decisions are tested with fake timers (deterministic); real timing values are
never asserted.
"""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn

from dualprune.errors import ConfigError
from dualprune.speed.breakeven import BreakEven, break_even_sparsity
from dualprune.speed.sparse import (
    SparseConv2d,
    SparseLinear,
    dense_layer,
    exact_block_size,
    sparse_layer,
    unsupported_reason,
)
from dualprune.speed.sparsify import layer_timer, sparsify_for_inference


def pruned(layer: nn.Module, sparsity: float = 0.9, seed: int = 0) -> nn.Module:
    """``layer`` with random weights, a fraction ``sparsity`` of them zero (random mask)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = layer.weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype))
        w.mul_(torch.rand(w.shape, generator=g, dtype=w.dtype) >= sparsity)
        if getattr(layer, "bias", None) is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=w.dtype))
    return layer.eval()


def blocky(rows: int, cols: int, b: int, seed: int = 0) -> torch.Tensor:
    """A (rows, cols) weight whose zeros are whole b×b blocks (about half of them)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(rows // b, cols // b, generator=g) < 0.5
    keep[0, 0] = True
    keep[-1, -1] = False
    keep = keep.repeat_interleave(b, 0).repeat_interleave(b, 1)
    return (torch.rand(rows, cols, generator=g) + 0.5) * keep  # nonzero inside kept blocks


# --- layers --------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 16), (16,), (2, 3, 16), (1, 16)])
def test_sparse_linear_equals_dense(bias: bool, shape: tuple[int, ...]) -> None:
    dense = pruned(nn.Linear(16, 24, bias=bias))
    sparse = SparseLinear.from_dense(dense).eval()
    x = torch.randn(shape)
    with torch.inference_mode():
        y, ref = sparse(x), dense(x)
    assert y.shape == ref.shape and y.is_contiguous()
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    assert sparse.nnz == int((dense.weight != 0).sum())


def test_sparse_linear_float64_and_grad_mode() -> None:
    dense = pruned(nn.Linear(8, 6).double())
    sparse = sparse_layer(dense).eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(sparse(x), dense(x), atol=1e-10, rtol=1e-10)


CONVS = [
    {"kernel_size": 3},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 2), "dilation": (2, 1)},
    {"kernel_size": 4, "padding": "same", "dilation": 2},
    {"kernel_size": 3, "padding": "valid", "bias": False},
    {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": 2, "padding_mode": "circular"},
    {"kernel_size": 1},
]


@pytest.mark.parametrize("kwargs", CONVS)
@pytest.mark.parametrize("batch", [1, 3])
def test_sparse_conv_equals_dense(kwargs: dict, batch: int) -> None:
    dense = pruned(nn.Conv2d(4, 6, **kwargs))
    sparse = SparseConv2d.from_dense(dense).eval()
    x = torch.randn(batch, 4, 9, 8)
    with torch.inference_mode():
        y, ref = sparse(x), dense(x)
        y_cl = sparse(x.to(memory_format=torch.channels_last))
        y_un = sparse(x[0])  # unbatched (C, H, W)
    assert y.shape == ref.shape and y.is_contiguous()
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y_cl, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y_un, dense(x[0]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_bsr_equals_dense_when_blocks_are_exact(kind: str) -> None:
    w = blocky(8, 32, 4)
    if kind == "linear":
        dense = nn.Linear(32, 8).eval()
        dense.weight.data = w
        x = torch.randn(3, 32)
    else:
        dense = nn.Conv2d(2, 8, 4, padding=1).eval()
        dense.weight.data = w.view(8, 2, 4, 4)
        x = torch.randn(2, 2, 6, 6)
    sparse = sparse_layer(dense, "bsr").eval()
    assert sparse.layout == "bsr" and sparse.block == 4
    torch.testing.assert_close(sparse(x), dense(x), atol=1e-4, rtol=1e-4)


def test_bsr_refused_on_irregular_zeros() -> None:
    with pytest.raises(ConfigError, match="whole square blocks"):
        sparse_layer(pruned(nn.Linear(16, 8)), "bsr")
    with pytest.raises(ConfigError, match="unknown"):
        sparse_layer(nn.Linear(4, 4), "coo")


def test_exact_block_size() -> None:
    assert exact_block_size(blocky(16, 32, 8)) == 8
    assert exact_block_size(blocky(16, 32, 4, seed=3)) == 4
    assert exact_block_size(torch.ones(8, 8)) is None  # no zero block: dense
    w = blocky(8, 8, 4)
    w[0, 0] = 0.0  # a hole in a kept block: not exact
    assert exact_block_size(w) is None
    with pytest.raises(ConfigError, match="2-D"):
        exact_block_size(torch.zeros(2, 2, 2))


def test_inference_only() -> None:
    sparse = sparse_layer(pruned(nn.Linear(4, 3)))
    sparse.train()
    with pytest.raises(ConfigError, match="eval"):
        sparse(torch.randn(2, 4))


def test_copy_save_and_back_to_dense() -> None:
    dense = pruned(nn.Conv2d(3, 5, 3, stride=2, padding=1))
    sparse = sparse_layer(dense).eval()
    x = torch.randn(2, 3, 7, 7)
    y = sparse(x)
    twin = copy.deepcopy(sparse)
    torch.testing.assert_close(twin(x), y)
    buf = io.BytesIO()
    torch.save(sparse.state_dict(), buf)
    buf.seek(0)
    other = sparse_layer(dense).eval()
    other.values.zero_()
    other.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(other(x), y)
    back = dense_layer(sparse)
    assert type(back) is nn.Conv2d and back.stride == (2, 2)
    torch.testing.assert_close(back.weight, dense.weight)
    torch.testing.assert_close(back(x), dense(x))
    lin = pruned(nn.Linear(6, 4))
    torch.testing.assert_close(dense_layer(sparse_layer(lin)).weight, lin.weight)


def test_built_under_inference_mode_still_loads_state() -> None:
    dense = pruned(nn.Linear(6, 4))
    with torch.inference_mode():
        sparse = sparse_layer(dense).eval()
    assert not any(t.is_inference() for t in sparse.state_dict().values())
    sparse.load_state_dict(sparse_layer(dense).state_dict())  # in-place copies
    x = torch.randn(2, 6)
    torch.testing.assert_close(sparse(x), dense(x))


def test_in_place_buffer_changes_are_seen() -> None:
    sparse = sparse_layer(pruned(nn.Linear(6, 4))).eval()
    x = torch.randn(2, 6)
    y = sparse(x)
    sparse.values.mul_(2.0)
    b = sparse.bias
    torch.testing.assert_close(sparse(x), 2 * (y - b) + b)


class Sub(nn.Linear):
    pass


@pytest.mark.parametrize(
    "module, match",
    [
        (nn.Conv2d(4, 4, 3, groups=2), "groups=2"),
        (nn.Conv1d(2, 2, 3), "no sparse version"),
        (nn.ReLU(), "no sparse version"),
        (Sub(2, 2), "subclasses Linear"),
        (nn.Linear(2, 2).half(), "dtype"),
    ],
)
def test_unsupported_layers(module: nn.Module, match: str) -> None:
    assert match in (unsupported_reason(module) or "")
    with pytest.raises(ConfigError, match=match):
        sparse_layer(module)


# --- sparsify_for_inference ----------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = pruned(nn.Conv2d(1, 4, 3), 0.9, seed=1)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2)
        self.fc1 = pruned(nn.Linear(4 * 6 * 6, 16), 0.9, seed=2)
        self.fc2 = nn.Linear(16, 3)  # dense: no zeros
        self.unused = pruned(nn.Linear(3, 3))
        self.seq = nn.Conv1d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.conv(x))  # (B, 4, 6, 6)
        y = self.fc2(torch.relu(self.fc1(x.flatten(1))))  # (B, 3)
        return y + self.seq(y.unsqueeze(1)).squeeze(1)


def fake_timer(sparse_ms: dict[str, float], calls: list | None = None):
    """Dense takes 1 ms; a sparse version of the layer with weight shape key takes the given ms."""

    def timer(modules, x):
        if calls is not None:
            calls.append((sorted(modules), tuple(x.shape)))
        out = {"dense": 1.0}
        for k, m in modules.items():
            if k != "dense":
                out[k] = sparse_ms[type(m).__name__]
        return out

    return timer


def test_sparsify_swaps_where_measured_faster() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 1, 8, 8)
    calls: list = []
    timer = fake_timer({"SparseConv2d": 0.4, "SparseLinear": 0.8}, calls)
    fast, report = sparsify_for_inference(net, x, timer=timer)
    assert isinstance(fast.conv, SparseConv2d) and isinstance(fast.fc1, SparseLinear)
    assert type(net.conv) is nn.Conv2d and type(net.fc1) is nn.Linear  # original untouched
    assert report.swapped == ["conv", "fc1"]
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), net(x), atol=1e-4, rtol=1e-4)
    assert calls == [(["csr", "dense"], (2, 1, 8, 8)), (["csr", "dense"], (2, 144))]
    by = {d.name: d for d in report.layers}
    assert list(by) == ["conv", "grouped", "fc1", "fc2", "unused", "seq"]
    assert by["conv"].speedup == pytest.approx(2.5) and by["conv"].layout == "csr"
    assert by["fc1"].input_shape == (2, 144) and by["fc1"].max_abs_diff < 1e-4
    assert "groups=2" in by["grouped"].reason and not by["grouped"].swapped
    assert by["fc2"].reason == "no zeros"
    assert by["unused"].reason == "not run by example_input"
    assert "no sparse version" in by["seq"].reason
    assert 0.85 < by["conv"].sparsity < 0.95
    d = report.as_dict()
    json.dumps(d)
    assert d["swapped"] == ["conv", "fc1"]
    assert "swapped" in str(report) and "groups=2" in str(report)


def test_sparsify_respects_min_speedup() -> None:
    net = Net().eval()
    x = torch.randn(1, 1, 8, 8)
    timer = fake_timer({"SparseConv2d": 0.4, "SparseLinear": 0.8})
    fast, report = sparsify_for_inference(net, x, min_speedup=2.0, timer=timer)
    assert report.swapped == ["conv"]  # 2.5× ≥ 2, 1.25× < 2
    assert type(fast.fc1) is nn.Linear
    fc1 = next(d for d in report.layers if d.name == "fc1")
    assert fc1.sparse_ms == pytest.approx(0.8) and "below 2×" in fc1.reason
    slow = fake_timer({"SparseConv2d": 1.0, "SparseLinear": 1.5})
    _, report = sparsify_for_inference(net, x, timer=slow)
    assert report.swapped == []  # equal time is no win


def test_sparsify_tries_bsr_for_exact_blocks_and_picks_the_faster() -> None:
    lin = nn.Linear(32, 8).eval()
    lin.weight.data = blocky(8, 32, 4)
    model = nn.Sequential(lin).eval()

    def timer(modules, x):
        return {"dense": 1.0, "csr": 0.7, "bsr": 0.5}

    fast, report = sparsify_for_inference(model, torch.randn(2, 32), timer=timer)
    assert fast[0].layout == "bsr" and report.layers[0].block == 4
    fast, _ = sparsify_for_inference(model, torch.randn(2, 32), layouts=("csr",), timer=timer)
    assert fast[0].layout == "csr"


def test_sparsify_errors_and_threads_restored() -> None:
    net = Net()
    with pytest.raises(ConfigError, match="eval"):
        sparsify_for_inference(net, torch.randn(1, 1, 8, 8))
    net.eval()
    for bad in (0, -1.0, "2"):
        with pytest.raises(ConfigError, match="min_speedup"):
            sparsify_for_inference(net, torch.randn(1, 1, 8, 8), min_speedup=bad)
    with pytest.raises(ConfigError, match="layout 'ell'"):
        sparsify_for_inference(net, torch.randn(1, 1, 8, 8), layouts=("ell",))
    before = torch.get_num_threads()
    seen = []

    def timer(modules, x):
        seen.append(torch.get_num_threads())
        return dict.fromkeys(modules, 1.0)

    sparsify_for_inference(net, torch.randn(1, 1, 8, 8), threads=1, timer=timer)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before


def test_sparsify_with_the_real_timer_smoke() -> None:
    net = Net().eval()
    x = torch.randn(1, 1, 8, 8)
    fast, report = sparsify_for_inference(net, x, timer=layer_timer(1, 2, 0.0))
    timed = [d for d in report.layers if d.dense_ms is not None]
    assert [d.name for d in timed] == ["conv", "fc1"]
    assert all(d.dense_ms > 0 and d.sparse_ms > 0 for d in timed)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), net(x), atol=1e-4, rtol=1e-4)


# --- break-even ----------------------------------------------------------------------------


def sparsity_timer(curve, seen: list | None = None):
    """Dense 1 ms; sparse ms = curve(sparsity of the sparse module)."""

    def timer(modules, x):
        s = modules["sparse"]
        dense_zeros = float((modules["dense"].weight == 0).float().mean())
        if seen is not None:
            seen.append((dense_zeros, s.sparsity, tuple(x.shape)))
        return {"dense": 1.0, "sparse": curve(s.sparsity)}

    return timer


def test_break_even_on_a_known_curve() -> None:
    seen: list = []
    be = break_even_sparsity(
        (6, 50),
        (3, 50),
        sparsities=(0.5, 0.8, 0.9, 0.99),
        timer=sparsity_timer(lambda s: 8 * (1 - s), seen),
    )
    assert isinstance(be, BreakEven)
    assert be.sparsity == 0.9 and be.ratio == pytest.approx(10.0)
    assert be.dense_ms == (1.0,) * 4 and be.sparse_ms[0] == pytest.approx(4.0)
    assert be.speedups[-1] == pytest.approx(1 / 0.08)
    # exactly round(s·n) zeros, the same in the dense and the sparse layer
    assert [z for z, _, _ in seen] == pytest.approx([0.5, 0.8, 0.9, 0.99])
    assert [round(s, 6) for _, s, _ in seen] == [round(z, 6) for z, _, _ in seen]
    assert seen[0][2] == (3, 50) and be.kind == "Linear" and be.weight_shape == (6, 50)
    json.dumps(be.as_dict())
    assert "break-even sparsity 0.9" in str(be)


def test_break_even_needs_sparse_to_win_up_to_the_top() -> None:
    noisy = {0.5: 0.9, 0.7: 1.2, 0.9: 0.5, 0.95: 0.4}  # a lucky win at 0.5 does not count
    be = break_even_sparsity(
        (4, 2, 3, 3),
        (1, 2, 6, 6),
        sparsities=tuple(noisy),
        timer=sparsity_timer(lambda s: noisy[min(noisy, key=lambda k: abs(k - s))]),
    )
    assert be.kind == "Conv2d" and be.sparsity == 0.9
    never = break_even_sparsity(
        (4, 4), (1, 4), sparsities=(0.5, 0.9), timer=sparsity_timer(lambda s: 2.0)
    )
    assert never.sparsity is None and never.ratio is None
    assert "never faster" in str(never)


def test_break_even_uses_a_layers_hyperparameters() -> None:
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    w0 = conv.weight.detach().clone()
    seen: list = []
    be = break_even_sparsity(
        conv, (1, 2, 7, 7), sparsities=(0.5,), timer=sparsity_timer(lambda s: 0.5, seen)
    )
    assert be.sparsity == 0.5 and torch.equal(conv.weight, w0)  # the layer is not modified


def test_break_even_real_timer_smoke_and_threads() -> None:
    before = torch.get_num_threads()
    be = break_even_sparsity((8, 8), (1, 8), sparsities=(0.9,), timer=layer_timer(1, 2, 0.0))
    assert len(be.dense_ms) == 1 and be.dense_ms[0] > 0 and be.threads == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "args, match",
    [
        (((4, 4), (1, 4), (0.9, 0.5)), "increasing"),
        (((4, 4), (1, 4), (0.5, 1.0)), "increasing"),
        (((4, 4), (1, 4), ()), "increasing"),
        (((4, 4, 3), (1, 4), (0.5,)), "neither"),
        (((4, 0), (1, 4), (0.5,)), "neither"),
        (((4, 4), (1, 5), (0.5,)), "does not fit"),
        ((nn.Conv2d(4, 4, 3, groups=4), (1, 4, 5, 5), (0.5,)), "groups=4"),
    ],
)
def test_break_even_errors(args: tuple, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        break_even_sparsity(*args, timer=sparsity_timer(lambda s: 1.0))
