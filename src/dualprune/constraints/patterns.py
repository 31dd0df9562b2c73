"""Kernel-pattern pruning with connectivity pruning (PatDNN, ClickTrain).

Let a Conv weight hold K = out·in kernels of kk = Πkernel entries and let the
library L = {P_1, …, P_|L|} hold patterns, each a set of p kernel positions
(flat indices into the row-major kernel). The set is

    S = {W : every kernel W[o, c] is zero outside one pattern P ∈ L,
             and at most k_ker kernels are nonzero},
    k_ker = min(round((1 − kernels)·K), ⌊round((1 − ratio)·K·kk) / p⌋)

so ``ratio`` bounds the fraction of *weights* removed from below (the patterns
alone already remove 1 − p/kk of them; a larger ratio removes whole kernels,
which is connectivity pruning) and ``kernels`` bounds the fraction of *kernels*
removed from below. Its Euclidean projection is exact:

    e_{o,c}(P) = Σ_{i ∈ P} W[o, c]_i²              (energy a pattern keeps)
    P*_{o,c}   = argmax_P e_{o,c}(P)               (ties: lower library index)
    keep the k_ker kernels with the largest e_{o,c}(P*) (ties: lower kernel index),
    each restricted to its P*; zero the others.

The default library is every p-entry pattern of the kernel that contains its
centre (56 patterns for p = 4 in 3×3), ordered lexicographically by the
positions; :func:`select_patterns` picks a smaller library from a trained
weight, as PatDNN does (docs/algorithms.md §3).

References:
    Niu et al., "PatDNN: Achieving Real-Time DNN Execution on Mobile Devices with
    Pattern-based Weight Pruning", ASPLOS 2020.
    Zhang et al., "ClickTrain: Efficient and Accurate End-to-End Deep Learning
    Training via Fine-Grained Architecture-Preserving Pruning", ICS 2021.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dualprune.constraints.base import kept_count
from dualprune.constraints.selection import topk_mask
from dualprune.constraints.structures import apply_mask

__all__ = [
    "default_library",
    "library_tensor",
    "pattern_mask",
    "pattern_scores",
    "project_pattern",
    "select_patterns",
]

Pattern = tuple[int, ...]
_CHUNK = 4096  # kernels scored at once, so the (chunk, |L|) scores stay in cache


def default_library(kernel: Sequence[int] = (3, 3), p: int = 4) -> list[Pattern]:
    """Every p-entry pattern of a ``kernel``-shaped kernel that contains its centre.

    The centre is the middle entry (every kernel dimension must be odd). Patterns
    are tuples of sorted flat positions, in lexicographic order.
    """
    kk = math.prod(kernel)
    centre = 0
    for size in kernel:
        centre = centre * size + size // 2
    others = [i for i in range(kk) if i != centre]
    return [tuple(sorted((centre, *rest))) for rest in itertools.combinations(others, p - 1)]


def library_tensor(
    library: Sequence[Sequence[int]], kk: int, device: torch.device | str | None = None
) -> Tensor:
    """The library as a (|L|, kk) bool tensor, one row per pattern."""
    lib = torch.zeros(len(library), kk, dtype=torch.bool, device=device)
    for i, pattern in enumerate(library):
        lib[i, list(pattern)] = True
    return lib


def _kernels(w: Tensor, kernel: Sequence[int]) -> tuple[Tensor, int]:
    """(squared entries as (K, kk) in the scoring dtype, kk)."""
    kk = math.prod(kernel)
    e = w.detach().reshape(-1, kk)
    e = e.to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    return e * e, kk


def pattern_scores(
    w: Tensor,
    p: int = 4,
    kernel: Sequence[int] = (3, 3),
    library: Sequence[Sequence[int]] | None = None,
) -> Tensor:
    """e_{o,c}(P) for every kernel and pattern, as a (K, |L|) tensor (K = out·in)."""
    library = default_library(kernel, p) if library is None else library
    e, kk = _kernels(w, kernel)
    return e @ library_tensor(library, kk, w.device).to(e.dtype).t()


def _best_patterns(e: Tensor, lib: Tensor) -> tuple[Tensor, Tensor]:
    """max_P e(P) and the first argmax for every kernel, in cache-sized chunks of kernels."""
    values = torch.empty(e.shape[0], dtype=e.dtype, device=e.device)
    index = torch.empty(e.shape[0], dtype=torch.long, device=e.device)
    for c in range(0, e.shape[0], _CHUNK):
        torch.max(
            e[c : c + _CHUNK] @ lib.t(), dim=1, out=(values[c : c + _CHUNK], index[c : c + _CHUNK])
        )
    return values, index


def pattern_mask(
    w: Tensor,
    ratio: float,
    p: int = 4,
    kernel: Sequence[int] = (3, 3),
    library: Sequence[Sequence[int]] | None = None,
    kernels: float = 0.0,
) -> Tensor:
    """Support of Π_S for the pattern set in the module docstring (p is the library's)."""
    library = default_library(kernel, p) if library is None else library
    p = len(library[0])
    e, kk = _kernels(w, kernel)
    lib = library_tensor(library, kk, w.device)
    best_energy, best = _best_patterns(e, lib.to(e.dtype))
    n_kernels = e.shape[0]
    k_ker = min(kept_count(kernels, n_kernels), kept_count(ratio, n_kernels * kk) // p)
    keep = lib[best] & topk_mask(best_energy, k_ker).unsqueeze(1)  # (K, kk)
    return keep.view(w.shape)


def project_pattern(
    w: Tensor,
    ratio: float,
    p: int = 4,
    kernel: Sequence[int] = (3, 3),
    library: Sequence[Sequence[int]] | None = None,
    kernels: float = 0.0,
) -> Tensor:
    """Π_S(w) for the pattern set in the module docstring (exact)."""
    return apply_mask(w, pattern_mask(w, ratio, p, kernel, library, kernels))


def select_patterns(
    w: Tensor | Sequence[Tensor],
    size: int,
    p: int = 4,
    kernel: Sequence[int] = (3, 3),
) -> list[Pattern]:
    """The ``size`` patterns that are most often a kernel's best, for a smaller library.

    PatDNN's pattern-set selection: score every kernel of the given trained
    weight(s) against :func:`default_library`, count how often each pattern
    wins, keep the ``size`` most frequent (ties: lower library index). Pass the
    result as ``Sparsity(..., "pattern", library=...)``.

    Args:
        w: One Conv weight or several (all with ``kernel``-shaped kernels).
        size: Library size wanted (at most the default library's size).
        p: Entries per pattern.
        kernel: Kernel shape.
    """
    library = default_library(kernel, p)
    weights = [w] if isinstance(w, Tensor) else list(w)
    counts = torch.zeros(len(library), dtype=torch.float64)
    for t in weights:
        best = pattern_scores(t, p, kernel, library).argmax(dim=1)
        counts += torch.bincount(best.cpu(), minlength=len(library)).double()
    chosen = topk_mask(counts, min(size, len(library)))
    order = torch.sort(torch.where(chosen, counts, -1.0), descending=True, stable=True)
    return [library[i] for i in order.indices[: int(chosen.sum())].tolist()]
