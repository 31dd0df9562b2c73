"""Fitting the scale α of a quantization set, one row at a time (docs/algorithms.md §3).

Every function takes V as a float64 (rows, n) tensor and an optional bool ``keep``
of the same shape (the survivors of a sparsity set; the other entries are ignored),
and returns one α ≥ 0 per row (0 for a row with nothing to fit). The objective is
f(α) = min_Q ||V − α·Q||² over the survivors, Q's entries in the levels ℓ.

- :func:`binary_scale`, :func:`ternary_fit`: exact closed forms.
- :func:`alternate`: the alternation of the spec, Q = clip(round(V/α)), α = ⟨V,Q⟩/⟨Q,Q⟩.
- :func:`grid_fit`: sorts each row once; prefix sums then give f(α) for any α in
  O(|ℓ| log n), so a dense grid and many alternation steps cost little.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["alternate", "binary_scale", "fit_scale", "grid_fit", "ternary_fit"]

_CHUNK = 1 << 22  # searchsorted queries per step of grid_fit
_STARTS = 4  # alternations started from the best few grid points
_GRID_ITERS = 30
_MIN_BUDGET = 1 << 21  # searchsorted queries always allowed (small tensors: the full grid)
_BUDGET_PER_ENTRY = 2  # otherwise about 2 queries per entry of V (~ a pass over V)
_SPEC_ITERS = 10


def _mask(x: Tensor, keep: Tensor | None, fill: float) -> Tensor:
    return x if keep is None else torch.where(keep, x, fill)


def binary_scale(x: Tensor, keep: Tensor | None) -> Tensor:
    """α = mean|V| over the survivors (exact for ℓ ∈ {−1, +1})."""
    count = x.new_full((x.shape[0],), x.shape[1]) if keep is None else keep.sum(1).double()
    return _mask(x.abs(), keep, 0.0).sum(1) / count.clamp(min=1)


def ternary_fit(x: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """Exact ternary fit: (α (rows,), Q (rows, n) in {−1, 0, 1}).

    With |V| sorted descending (ties: lower index first) and S_j the sum of the
    top j, keeping those j at α_j = S_j / j costs ||V||² − S_j²/j; the first j
    maximising S_j²/j wins.
    """
    order = torch.sort(_mask(x.abs(), keep, -1.0), dim=1, descending=True, stable=True)
    valid = order.values >= 0
    s = torch.cumsum(torch.where(valid, order.values, 0.0), dim=1)
    j = torch.arange(1, x.shape[1] + 1, dtype=torch.float64, device=x.device)
    gain = torch.where(valid, s * s / j, -1.0)
    best = gain.argmax(dim=1, keepdim=True)  # first maximum
    alpha = (s.gather(1, best) / (best + 1)).squeeze(1)
    top = (j <= best + 1).expand_as(valid)
    support = torch.zeros_like(valid).scatter_(1, order.indices, top)
    return alpha, torch.sign(x) * (support & (x != 0))


def _uniform_q(x: Tensor, alpha: Tensor, top: float) -> Tensor:
    safe = torch.where(alpha > 0, alpha, 1.0).unsqueeze(1)
    return torch.clamp(torch.round(x / safe), -top, top)


def direct_objective(x: Tensor, keep: Tensor | None, alpha: Tensor, top: float) -> Tensor:
    """||V − α·clip(round(V/α))||² per row over the survivors (uniform levels)."""
    r = x - alpha.unsqueeze(1) * _uniform_q(x, alpha, top)
    return _mask(r * r, keep, 0.0).sum(1)


def alternate(
    x: Tensor, keep: Tensor | None, top: float, iters: int = _SPEC_ITERS
) -> tuple[Tensor, Tensor]:
    """The spec's alternation for uniform levels {−top, …, top}: (best α, its objective).

    α_0 = mean|V≠0| / (top/2); then Q = clip(round(V/α)) and α = ⟨V,Q⟩/⟨Q,Q⟩,
    ``iters`` times, keeping the best α seen.
    """
    v = _mask(x, keep, 0.0)
    nz = (v != 0).sum(1).clamp(min=1)
    alpha = v.abs().sum(1) / nz / (top / 2)
    best_a = alpha.clone()
    best_f = torch.full_like(alpha, math.inf)
    for _ in range(iters):
        q = _uniform_q(v, alpha, top)
        r = v - alpha.unsqueeze(1) * q
        f = (r * r).sum(1)
        better = f < best_f
        best_a, best_f = torch.where(better, alpha, best_a), torch.where(better, f, best_f)
        qq, vq = (q * q).sum(1), (v * q).sum(1)
        ok = (qq > 0) & (vq > 0)
        new = torch.where(ok, vq / torch.where(ok, qq, 1.0), alpha)
        if torch.equal(new, alpha):
            break
        alpha = new
    return best_a, best_f


def grid_fit(
    x: Tensor, keep: Tensor | None, levels: Tensor, uniform: bool
) -> tuple[Tensor, Tensor]:
    """Best of a dense grid refined by alternation, for any sorted levels: (α, objective).

    Candidates per row: the spec's start α_0, ADMM-NN's grid [0.9, 1.1]·max|V|/max|ℓ|
    in steps of 0.001, and 64 log-spaced scales from 1.25× down to 1/128× of
    max|V|/max|ℓ|. When rows × levels is large against the entries (per-channel
    scales with many levels) the grid and the alternation are cut to a budget of
    about two searchsorted queries per entry. Each step of the
    alternation assigns every entry to its nearest level (ties to the larger).
    A symmetric level set is fitted on |V| against its nonnegative levels, which
    gives the same objective with half the boundaries.
    """
    rows = x.shape[0]
    if torch.equal(levels, -levels.flip(0)):
        x, levels = x.abs(), levels[levels >= 0]
    xs = _mask(x, keep, math.inf).sort(dim=1).values  # survivors ascending, others +inf last
    n_valid = torch.isfinite(xs).sum(1)
    finite = torch.where(torch.isfinite(xs), xs, 0.0)
    p1 = F.pad(finite.cumsum(1), (1, 0))  # (rows, n + 1)
    p2 = (finite * finite).sum(1)
    mids = (levels[1:] + levels[:-1]) / 2
    n_end = n_valid.view(rows, 1, 1)

    def objective(alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(f, A, B) at scales alpha (rows, c): f = Σv² − 2αA + α²B, A = ⟨V,Q⟩, B = ⟨Q,Q⟩."""
        out_a, out_b = [], []
        step = max(1, _CHUNK // max(1, rows * mids.numel()))
        for c0 in range(0, alpha.shape[1], step):
            a = alpha[:, c0 : c0 + step]
            bounds = (a.unsqueeze(2) * mids).reshape(rows, -1).contiguous()
            idx = torch.searchsorted(xs, bounds).view(rows, a.shape[1], -1)  # entries < bound
            idx = torch.minimum(idx, n_end)
            edges = torch.cat(
                [torch.zeros_like(idx[..., :1]), idx, n_end.expand_as(idx[..., :1])], 2
            )
            sums = p1.gather(1, edges.reshape(rows, -1)).view(edges.shape).diff(dim=2)
            counts = edges.diff(dim=2).to(torch.float64)
            out_a.append((sums * levels).sum(2))
            out_b.append((counts * levels * levels).sum(2))
        big_a, big_b = torch.cat(out_a, 1), torch.cat(out_b, 1)
        return p2.unsqueeze(1) - 2 * alpha * big_a + alpha * alpha * big_b, big_a, big_b

    mag = finite.abs()
    top = levels.abs().max()
    ref = mag.amax(1) / top  # max|V| / max|ℓ|
    nonzero_level = levels[levels != 0].abs().mean()
    start = mag.sum(1) / (mag > 0).sum(1).clamp(min=1) / (top / 2 if uniform else nonzero_level)
    f64, dev = torch.float64, x.device
    rel = torch.cat(
        [
            torch.ones(1, dtype=f64, device=dev),
            torch.linspace(0.9, 1.1, 201, dtype=f64, device=dev),
            2.0 ** -torch.linspace(-0.32, 7.0, 64, dtype=f64, device=dev),
        ]
    )
    per_alpha = max(1, rows * mids.numel())  # queries to score one α for every row
    budget = max(_MIN_BUDGET, _BUDGET_PER_ENTRY * x.numel()) // 2 // per_alpha
    if rel.numel() > budget:  # many rows × levels (per-channel, 8 bits): thin the grid
        rel = rel[torch.linspace(0, rel.numel() - 1, max(budget, 4), device=x.device).long()]
    iters = min(_GRID_ITERS, max(2, budget // _STARTS))
    cands = torch.cat([start.unsqueeze(1), ref.unsqueeze(1) * rel], 1)  # (rows, C)
    f, _, _ = objective(cands)
    order = torch.sort(f, dim=1, stable=True).indices[:, :_STARTS]
    alpha = cands.gather(1, order)
    best_f, best_a = f.gather(1, order[:, :1]).squeeze(1), alpha[:, 0].clone()
    for _ in range(iters):
        f, big_a, big_b = objective(alpha)
        f_min, i = f.min(1)
        better = f_min < best_f
        best_a = torch.where(better, alpha.gather(1, i[:, None]).squeeze(1), best_a)
        best_f = torch.where(better, f_min, best_f)
        ok = (big_b > 0) & (big_a > 0)
        new = torch.where(ok, big_a / torch.where(ok, big_b, 1.0), alpha)
        if torch.equal(new, alpha):
            break
        alpha = new
    empty = n_valid == 0
    return torch.where(empty, 0.0, best_a), torch.where(empty, 0.0, best_f)


def fit_scale(x: Tensor, keep: Tensor | None, levels: Tensor, uniform: bool) -> Tensor:
    """α per row: :func:`grid_fit`, and for uniform levels also :func:`alternate`; the better."""
    alpha, f = grid_fit(x, keep, levels, uniform)
    if not uniform:
        return alpha
    top = float(levels[-1])
    spec_a, spec_f = alternate(x, keep, top)
    f = direct_objective(x, keep, alpha, top)  # the grid's α under the final rounding rule
    return torch.where(spec_f <= f, spec_a, alpha)
