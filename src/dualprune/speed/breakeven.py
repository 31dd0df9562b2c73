"""Break-even sparsity: from which sparsity a sparse layer beats the dense one on this CPU.

ADMM-NN (Ren et al., ASPLOS 2019) defines the *break-even pruning ratio* as the
smallest pruning ratio at which an irregularly sparse layer is no slower than
dense once index storage and decoding are paid (docs/algorithms.md §4); layers
below it stay dense. It depends on the layer's shape, the batch size, the
kernel library and the machine, so it is measured here, not assumed: a grid of
random irregular masks, dense and CSR timed at each (through a timer, see
:mod:`dualprune.speed.sparsify`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dualprune.errors import ConfigError
from dualprune.speed.latency import thread_count
from dualprune.speed.sparse import sparse_layer, supported_layer
from dualprune.speed.sparsify import Timer, layer_timer

__all__ = ["DEFAULT_SPARSITIES", "BreakEven", "break_even_sparsity"]

DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@dataclass(frozen=True)
class BreakEven:
    """Measured dense and sparse (CSR) times of one layer over a grid of sparsities.

    ``sparsity`` is the break-even sparsity: the smallest grid sparsity s from
    which sparse beat dense at s and at every larger grid point (None if sparse
    never won at the top of the grid). ``ratio`` = 1 / (1 − s) is the same point
    as ADMM-NN's break-even pruning ratio (docs/algorithms.md §4).
    """

    kind: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    threads: int
    sparsities: tuple[float, ...]
    dense_ms: tuple[float, ...]
    sparse_ms: tuple[float, ...]
    sparsity: float | None

    @property
    def ratio(self) -> float | None:
        """Break-even pruning ratio 1 / (1 − s) (weights / nonzeros), or None."""
        return None if self.sparsity is None else 1.0 / (1.0 - self.sparsity)

    @property
    def speedups(self) -> tuple[float, ...]:
        """dense_ms / sparse_ms at every grid sparsity."""
        return tuple(d / s for d, s in zip(self.dense_ms, self.sparse_ms, strict=True))

    def as_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready), ratio and speedups included."""
        d = asdict(self)
        for k in ("weight_shape", "input_shape", "sparsities", "dense_ms", "sparse_ms"):
            d[k] = list(d[k])
        return {**d, "ratio": self.ratio, "speedups": list(self.speedups)}

    def __str__(self) -> str:
        shape = "×".join(map(str, self.weight_shape))
        inp = "×".join(map(str, self.input_shape))
        if self.sparsity is None:
            verdict = "sparse never faster on this grid"
        else:
            verdict = f"break-even sparsity {self.sparsity:g} (ratio {self.ratio:.3g}×)"
        rows = [f"{self.kind} {shape} on {inp}, {self.threads} thread(s): {verdict}"]
        rows.append(f"{'sparsity':>8} {'ratio':>7} {'dense ms':>9} {'sparse ms':>9} {'speedup':>8}")
        for s, d, sp, r in zip(
            self.sparsities, self.dense_ms, self.sparse_ms, self.speedups, strict=True
        ):
            rows.append(f"{s:>8g} {1 / (1 - s):>6.3g}× {d:>9.4g} {sp:>9.4g} {r:>7.2f}×")
        return "\n".join(rows)


def _layer_from(
    layer_or_shape: nn.Module | Sequence[int], generator: torch.Generator
) -> nn.Linear | nn.Conv2d:
    """A fresh dense layer of the given shape (or like the given layer), random normal weights."""
    layer: nn.Linear | nn.Conv2d
    if isinstance(layer_or_shape, nn.Module):
        layer = copy.deepcopy(supported_layer(layer_or_shape)).eval()
    else:
        shape = tuple(layer_or_shape)
        if len(shape) not in (2, 4) or any(not isinstance(n, int) or n < 1 for n in shape):
            raise ConfigError(
                f"weight shape {shape!r} is neither (out, in) of a Linear nor "
                "(out, in, kh, kw) of a Conv2d with positive sizes"
            )
        if len(shape) == 2:
            layer = nn.Linear(shape[1], shape[0]).eval()
        else:
            layer = nn.Conv2d(shape[1], shape[0], (shape[2], shape[3])).eval()
    with torch.no_grad():
        w = layer.weight
        w.copy_(torch.randn(w.shape, generator=generator, dtype=w.dtype) / w[0].numel() ** 0.5)
    return layer


def break_even_sparsity(
    layer_or_shape: nn.Module | Sequence[int],
    input_shape: Sequence[int],
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    threads: int | None = 1,
    timer: Timer | None = None,
    seed: int = 0,
) -> BreakEven:
    """Measure on this CPU the smallest sparsity from which a CSR layer beats the dense one.

    At each sparsity s of the grid, a random irregular mask zeroes exactly
    round(s · n) of the n weights (random normal values: latency does not depend
    on them), and the dense layer and its :func:`~dualprune.speed.sparse.sparse_layer`
    are timed on one random input of ``input_shape``.

    Args:
        layer_or_shape: an ``nn.Linear``/``nn.Conv2d`` (its shape, stride,
            padding... are used, not its weights) or a weight shape: (out, in)
            for a Linear, (out, in, kh, kw) for a Conv2d with stride 1, no padding.
        input_shape: the full input shape, batch included, e.g. (1, 784).
        sparsities: increasing grid in [0, 1).
        threads: ``torch.set_num_threads`` while timing (restored); None keeps it.
        timer: ``timer(modules, x) -> {name: ms}``; default :func:`layer_timer`.
        seed: seed of the masks, weights and input.

    Returns:
        :class:`BreakEven` with the measured curve; ``.sparsity`` None if never.

    Raises:
        ConfigError: an unsupported layer, a bad shape, a grid not increasing in
            [0, 1), or an input shape the layer cannot take.

    Example:
        >>> print(break_even_sparsity((300, 784), (1, 784)))
    """
    grid = tuple(float(s) for s in sparsities)
    if not grid or any(not 0 <= s < 1 for s in grid) or list(grid) != sorted(set(grid)):
        raise ConfigError(f"sparsities={tuple(sparsities)!r} must be increasing, in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    layer = _layer_from(layer_or_shape, g)
    dense_w = layer.weight.detach().clone()
    x = torch.randn(tuple(input_shape), generator=g, dtype=dense_w.dtype)
    timer = timer or layer_timer()
    dense_ms, sparse_ms = [], []
    with thread_count(threads) as used, torch.inference_mode():
        try:
            layer(x)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise ConfigError(
                f"input shape {tuple(input_shape)} does not fit {layer}: {first}"
            ) from None
        n = dense_w.numel()
        for s in grid:
            keep = torch.ones(n, dtype=torch.bool)
            keep[torch.randperm(n, generator=g)[: round(s * n)]] = False
            layer.weight.copy_(dense_w * keep.view_as(dense_w))
            times = timer({"dense": layer, "sparse": sparse_layer(layer).eval()}, x)
            dense_ms.append(float(times["dense"]))
            sparse_ms.append(float(times["sparse"]))
    wins = [s < d for d, s in zip(dense_ms, sparse_ms, strict=True)]
    point = None
    for i in range(len(grid) - 1, -1, -1):
        if not wins[i]:
            break
        point = grid[i]
    return BreakEven(
        kind=type(layer).__name__,
        weight_shape=tuple(dense_w.shape),
        input_shape=tuple(x.shape),
        threads=used,
        sparsities=grid,
        dense_ms=tuple(dense_ms),
        sparse_ms=tuple(sparse_ms),
        sparsity=point,
    )
