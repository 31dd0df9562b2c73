"""Measure, then swap: sparse layers only where this CPU runs them faster.

Fewer MACs do not make a layer faster by themselves: a sparse product pays for
reading indices and for scattered memory access, so below some sparsity dense
wins. ADMM-NN (Ren et al., ASPLOS 2019) calls the pruning ratio where sparse
starts to win the *break-even pruning ratio* (docs/algorithms.md §4) and keeps
layers below it dense. Here both are measured rather than assumed:

* :func:`sparsify_for_inference` times every Linear/Conv2d of a model dense and
  sparse (CSR, and BSR when the zeros form exact square blocks) on the input that
  layer actually sees, and swaps in the sparse layer only where it was at least
  ``min_speedup`` times faster;
* :func:`dualprune.speed.breakeven.break_even_sparsity` times one layer shape over a
  grid of random irregular masks and reports the smallest sparsity from which
  sparse wins.

Timing goes through a *timer*, ``timer(modules, x) -> {name: ms}``; the default
(:func:`layer_timer`) runs :func:`dualprune.speed.latency.time_calls` (warm-up,
calibration, interleaved repeats, median). Tests pass a fake one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TypeAlias

import torch
from torch import Tensor, nn

from dualprune.errors import ConfigError
from dualprune.speed.latency import quantile, thread_count, time_calls
from dualprune.speed.sparse import LAYOUTS, exact_block_size, sparse_layer, unsupported_reason

__all__ = [
    "LayerDecision",
    "SparsifyReport",
    "Timer",
    "layer_timer",
    "sparsify_for_inference",
]

Timer = Callable[[Mapping[str, nn.Module], Tensor], Mapping[str, float]]
"""``timer(modules, x)`` → median milliseconds of one ``module(x)`` for each name."""

WEIGHT_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
WeightLayer: TypeAlias = (
    nn.Linear
    | nn.Conv1d
    | nn.Conv2d
    | nn.Conv3d
    | nn.ConvTranspose1d
    | nn.ConvTranspose2d
    | nn.ConvTranspose3d
)
"""A module of :data:`WEIGHT_LAYERS`."""


def layer_timer(warmup: int = 3, repeats: int = 15, min_time: float = 0.005) -> Timer:
    """A timer running :func:`~dualprune.speed.latency.time_calls` (interleaved repeats, median)."""

    def timer(modules: Mapping[str, nn.Module], x: Tensor) -> dict[str, float]:
        calls = {name: (lambda m=m: m(x)) for name, m in modules.items()}
        res = time_calls(calls, warmup=warmup, repeats=repeats, min_time=min_time)
        return {name: 1e3 * quantile(samples, 0.5) for name, (samples, _) in res.items()}

    return timer


@dataclass(frozen=True)
class LayerDecision:
    """What :func:`sparsify_for_inference` found for one weight layer.

    ``sparse_ms``/``layout``/``block`` are those of the fastest sparse candidate;
    ``reason`` says why a layer was not timed or not swapped.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...] | None
    sparsity: float
    dense_ms: float | None = None
    sparse_ms: float | None = None
    layout: str | None = None
    block: int | None = None
    max_abs_diff: float | None = None
    swapped: bool = False
    reason: str = ""

    @property
    def speedup(self) -> float | None:
        """dense_ms / sparse_ms, or None when not timed."""
        if self.dense_ms is None or not self.sparse_ms:
            return None
        return self.dense_ms / self.sparse_ms

    def as_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready), speedup included."""
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        d["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        return {**d, "speedup": self.speedup}


@dataclass(frozen=True)
class SparsifyReport:
    """One :class:`LayerDecision` per weight layer, in ``named_modules()`` order."""

    layers: list[LayerDecision]
    threads: int
    min_speedup: float

    @property
    def swapped(self) -> list[str]:
        """Names of the layers now sparse."""
        return [d.name for d in self.layers if d.swapped]

    def as_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready)."""
        return {
            "threads": self.threads,
            "min_speedup": self.min_speedup,
            "swapped": self.swapped,
            "layers": [d.as_dict() for d in self.layers],
        }

    def __str__(self) -> str:
        head = (
            f"{'layer':<16} {'kind':<8} {'input':<16} {'sparsity':>8} {'dense ms':>9} "
            f"{'sparse ms':>9} {'speedup':>8}  {'layout':<7} swapped"
        )
        rows = [f"sparse execution, {self.threads} thread(s), min speedup {self.min_speedup}×"]
        rows.append(head)
        for d in self.layers:

            def ms(v: float | None) -> str:
                return "—" if v is None else f"{v:.4g}"

            shape = "—" if d.input_shape is None else "×".join(map(str, d.input_shape))
            layout = "—" if d.layout is None else d.layout + (f"{d.block}" if d.block else "")
            speed = "—" if d.speedup is None else f"{d.speedup:.2f}×"
            row = (
                f"{d.name:<16} {d.kind:<8} {shape:<16} {d.sparsity:>8.3f} {ms(d.dense_ms):>9} "
                f"{ms(d.sparse_ms):>9} {speed:>8}  {layout:<7} {'yes' if d.swapped else 'no'}"
            )
            rows.append(row + (f"  ({d.reason})" if d.reason else ""))
        return "\n".join(rows)


def _layer_inputs(model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
    """The first input each weight layer receives in one forward of ``example_input``."""
    seen: dict[str, Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):

            def hook(mod: nn.Module, args: tuple[object, ...], name: str = name) -> None:
                if name not in seen and args and isinstance(args[0], Tensor):
                    seen[name] = args[0].detach().clone()

            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def _candidates(module: WeightLayer, layouts: Sequence[str]) -> dict[str, nn.Module]:
    """Sparse versions of ``module`` to try: CSR, and BSR when the block structure is exact."""
    out: dict[str, nn.Module] = {}
    for layout in layouts:
        if layout == "csr":
            out["csr"] = sparse_layer(module, "csr").eval()
        else:
            w = module.weight.detach()
            block = exact_block_size(w.reshape(w.shape[0], -1))
            if block is not None:
                out["bsr"] = sparse_layer(module, "bsr", block).eval()
    return out


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _decide(
    name: str,
    module: WeightLayer,
    x: Tensor | None,
    layouts: Sequence[str],
    timer: Timer,
    min_speedup: float,
    tolerance: float,
) -> tuple[LayerDecision, nn.Module | None]:
    """Time one layer dense and sparse; the decision and the sparse module if it wins."""
    w = module.weight
    sparsity = float((w == 0).sum()) / w.numel() if w.numel() else 0.0
    base = partial(
        LayerDecision,
        name=name,
        kind=type(module).__name__,
        weight_shape=tuple(w.shape),
        input_shape=None if x is None else tuple(x.shape),
        sparsity=sparsity,
    )
    reason = unsupported_reason(module)
    if reason is None and x is None:
        reason = "not run by example_input"
    if reason is None and sparsity == 0.0:
        reason = "no zeros"
    if reason is not None or x is None:
        return base(reason=reason or ""), None
    candidates = _candidates(module, layouts)
    ref = module(x)
    diffs = {k: float((m(x) - ref).abs().max()) for k, m in candidates.items()}
    scale = max(1.0, float(ref.abs().max()))
    good = {k: m for k, m in candidates.items() if diffs[k] <= tolerance * scale}
    if not good:
        worst = max(diffs.values())
        return base(max_abs_diff=worst, reason="sparse output differs"), None
    times = timer({"dense": module, **good}, x)
    best = min(good, key=lambda k: times[k])
    dense_ms, sparse_ms = float(times["dense"]), float(times[best])
    swapped = sparse_ms < dense_ms and dense_ms >= min_speedup * sparse_ms
    decision = base(
        dense_ms=dense_ms,
        sparse_ms=sparse_ms,
        layout=best,
        block=getattr(good[best], "block", None),
        max_abs_diff=diffs[best],
        swapped=swapped,
        reason="" if swapped else f"speedup below {min_speedup:g}×",
    )
    return decision, good[best] if swapped else None


def sparsify_for_inference(
    model: nn.Module,
    example_input: Tensor,
    min_speedup: float = 1.0,
    threads: int | None = 1,
    layouts: Sequence[str] = LAYOUTS,
    timer: Timer | None = None,
    tolerance: float = 1e-4,
) -> tuple[nn.Module, SparsifyReport]:
    """A copy of ``model`` with sparse layers where they measured faster, and the report.

    For every Linear/Conv2d (other weight layers are reported as unsupported),
    the input it receives in one forward of ``example_input`` is recorded; the
    dense layer and its sparse candidates (CSR; BSR when the zeros form exact
    square blocks) are timed on that input with ``threads`` threads, and the
    fastest candidate replaces the layer if dense_ms ≥ ``min_speedup`` · sparse_ms
    (and sparse is strictly faster). A candidate whose output differs from the
    dense layer's by more than ``tolerance`` · max(1, max|y|) is not used.
    The decision holds for the batch size of ``example_input``: time with the
    batch the model will serve.

    Args:
        model: in eval mode (sparse layers are inference-only); not modified.
        example_input: one batch, as the model will receive it.
        min_speedup: required dense/sparse time ratio, > 0.
        threads: ``torch.set_num_threads`` while timing (restored); None keeps it.
        layouts: sparse formats to try, among ``("csr", "bsr")``.
        timer: ``timer(modules, x) -> {name: ms}``; default :func:`layer_timer`.
        tolerance: relative output tolerance of a sparse candidate.

    Returns:
        ``(sparse_model, report)``; ``report.swapped`` lists the swapped layers.

    Raises:
        ConfigError: ``model`` is in training mode, or an argument is out of range.

    Example:
        >>> fast, report = sparsify_for_inference(model.eval(), torch.zeros(1, 1, 28, 28))
        >>> print(report)  # per layer: sparsity, dense ms, sparse ms, swapped or not
    """
    if model.training:
        raise ConfigError(
            "sparsify_for_inference needs the model in eval mode (sparse layers are "
            "inference-only); call model.eval() first"
        )
    if isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float)):
        raise ConfigError(f"min_speedup={min_speedup!r} is not a number > 0")
    if not min_speedup > 0:
        raise ConfigError(f"min_speedup={min_speedup!r} is not a number > 0")
    for layout in layouts:
        if layout not in LAYOUTS:
            raise ConfigError(f"layout '{layout}' is unknown; use some of {', '.join(LAYOUTS)}")
    if not isinstance(example_input, Tensor):
        raise ConfigError(f"example_input is a {type(example_input).__name__}, not a tensor")
    timer = timer or layer_timer()
    result = copy.deepcopy(model)
    inputs = _layer_inputs(result, example_input)
    decisions = []
    with thread_count(threads) as used, torch.inference_mode():
        for name, module in list(result.named_modules()):
            if not isinstance(module, WEIGHT_LAYERS):
                continue
            d, new = _decide(name, module, inputs.get(name), layouts, timer, min_speedup, tolerance)
            decisions.append(d)
            if new is not None:
                _set_submodule(result, name, new)
    return result, SparsifyReport(decisions, used, float(min_speedup))
