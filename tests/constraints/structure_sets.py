"""Reference definitions of the sparsity sets, written from docs/algorithms.md §3 alone.

A set is a list of *families*; a family is (groups, k): a list of groups of flat
weight indices, of which exactly k are kept whole. A support is feasible when, in
every family, every group is kept whole or dropped whole and exactly k are kept.
``pattern`` is not of this form and has its own reference. :func:`feasible`,
:func:`support_count` and :func:`best_kept` answer for any structure by name; a
structure of the table without a reference here fails the property tests with a
KeyError naming it.

Slow on purpose (plain Python over indices): only for tiny tensors.
"""

from __future__ import annotations

import itertools
import math

import torch

Family = tuple[list[list[int]], int]


def kept(ratio: float, count: int) -> int:
    """round((1 − ratio)·count), halves up."""
    return min(count, max(0, math.floor((1.0 - ratio) * count + 0.5)))


def kept_multiple(k: int, count: int, m: int) -> int:
    """The element of {m, 2m, …, ⌊count/m⌋·m} ∪ {count} nearest to k, ties to the larger.

    m = 1 leaves k alone (``multiple_of`` of filter, channel and coupled groups).
    """
    if m == 1:
        return k
    allowed = sorted({*range(m, count + 1, m), count})
    return min(allowed, key=lambda a: (abs(a - k), -a))


def _flat(shape: tuple[int, ...], o: int, r: int) -> int:
    """Flat index of weight entry (o, r) with r the flat (c, *k) input index."""
    return o * math.prod(shape[1:]) + r


def families(structure: str, shape: tuple[int, ...], ratio: float, **opt) -> list[Family]:
    """The families of ``structure`` on a weight of ``shape``."""
    out_, in_ = shape[0], shape[1]
    ks = math.prod(shape[2:])
    rows = in_ * ks  # GEMM view rows: inputs (c, *k) flattened; columns: outputs
    n = math.prod(shape)
    if structure == "irregular":
        return [([[i] for i in range(n)], kept(ratio, n))]
    if structure == "filter":
        groups = [[_flat(shape, o, r) for r in range(rows)] for o in range(out_)]
        return [(groups, kept_multiple(kept(ratio, out_), out_, opt.get("multiple_of", 1)))]
    if structure == "channel":
        groups = [
            [_flat(shape, o, c * ks + s) for o in range(out_) for s in range(ks)]
            for c in range(in_)
        ]
        return [(groups, kept_multiple(kept(ratio, in_), in_, opt.get("multiple_of", 1)))]
    if structure == "column":
        groups = [[_flat(shape, o, r) for o in range(out_)] for r in range(rows)]
        return [(groups, kept(ratio, rows))]
    if structure == "nm":
        m = opt.get("m", 4)
        n_eff = min(opt.get("n") or m, kept(ratio, m))
        fams = []
        for o in range(out_):
            for s in range(ks):
                for g in range(in_ // m):
                    idx = [_flat(shape, o, c * ks + s) for c in range(g * m, (g + 1) * m)]
                    fams.append(([[i] for i in idx], n_eff))
        return fams
    br, bc = opt.get("block", (128, 128))
    tiles = [
        (range(i, min(i + br, rows)), range(j, min(j + bc, out_)))
        for i in range(0, rows, br)
        for j in range(0, out_, bc)
    ]
    if structure == "block":
        groups = [[_flat(shape, o, r) for r in tr for o in tc] for tr, tc in tiles]
        return [(groups, kept(ratio, len(groups)))]
    if structure == "tile_rows":
        return [
            ([[_flat(shape, o, r) for o in tc] for r in tr], kept(ratio, len(tr)))
            for tr, tc in tiles
        ]
    if structure == "tile_cols":
        return [
            ([[_flat(shape, o, r) for r in tr] for o in tc], kept(ratio, len(tc)))
            for tr, tc in tiles
        ]
    raise KeyError(structure)


def in_set(mask: torch.Tensor, fams: list[Family]) -> bool:
    """True when ``mask`` (flattened) is a feasible support with exact counts."""
    flat = mask.reshape(-1).tolist()
    covered = set()
    for groups, k in fams:
        whole = 0
        for g in groups:
            vals = {flat[i] for i in g}
            if len(vals) != 1:
                return False
            whole += vals.pop()
            covered.update(g)
        if whole != k:
            return False
    return all(not v for i, v in enumerate(flat) if i not in covered)


def brute_best(w: torch.Tensor, fams: list[Family]) -> float:
    """max over feasible supports of the kept energy Σ_{i ∈ support} w_i² (float64)."""
    e = (w.double().reshape(-1) ** 2).tolist()
    total = 0.0
    for groups, k in fams:  # families are disjoint, so each is maximised on its own
        scores = [sum(e[i] for i in g) for g in groups]
        total += max(
            (
                sum(scores[i] for i in pick)
                for pick in itertools.combinations(range(len(groups)), k)
            ),
            default=0.0,
        )
    return total


def brute_best_joint(w: torch.Tensor, fams: list[Family]) -> float:
    """Like :func:`brute_best` but enumerating every combination of all families at once."""
    e = (w.double().reshape(-1) ** 2).tolist()
    choices = [list(itertools.combinations(range(len(g)), k)) for g, k in fams]
    best = 0.0
    for combo in itertools.product(*choices):
        s = 0.0
        for (groups, _), pick in zip(fams, combo, strict=True):
            s += sum(e[i] for j in pick for i in groups[j])
        best = max(best, s)
    return best


def pattern_in_set(mask: torch.Tensor, library: list[tuple[int, ...]], k_ker: int, p: int) -> bool:
    """Every kernel is empty or exactly one library pattern; exactly k_ker are nonempty."""
    kk = len(mask[0, 0].reshape(-1))
    pats = {frozenset(pt) for pt in library}
    nonempty = 0
    for row in mask.reshape(-1, kk).tolist():
        on = frozenset(i for i, v in enumerate(row) if v)
        if not on:
            continue
        if on not in pats or len(on) != p:
            return False
        nonempty += 1
    return nonempty == k_ker


def pattern_brute_best(w: torch.Tensor, library: list[tuple[int, ...]], k_ker: int) -> float:
    """max kept energy over every pattern choice per kernel and every kernel subset."""
    kk = math.prod(w.shape[2:])
    e = (w.double().reshape(-1, kk) ** 2).tolist()
    best = 0.0
    for choice in itertools.product(range(len(library)), repeat=len(e)):
        per = [sum(e[k][i] for i in library[c]) for k, c in enumerate(choice)]
        for pick in itertools.combinations(range(len(e)), k_ker):
            best = max(best, sum(per[k] for k in pick))
    return best


def centre_library(kernel: tuple[int, ...], p: int) -> list[tuple[int, ...]]:
    """Every p-entry set of flat kernel positions that holds the centre (odd sizes)."""
    centre = 0
    for size in kernel:
        centre = centre * size + size // 2
    return [pat for pat in itertools.combinations(range(math.prod(kernel)), p) if centre in pat]


def pattern_set(shape: tuple[int, ...], ratio: float, **opt) -> tuple[list[tuple[int, ...]], int]:
    """(library, k_ker): k_ker = min(kept(kernels, K), kept(ratio, K·kk) // p)."""
    kernel = tuple(opt.get("kernel", (3, 3)))
    lib = opt.get("library") or centre_library(kernel, opt.get("p", 4))
    lib = [tuple(pat) for pat in lib]
    n_kernels, kk, p = shape[0] * shape[1], math.prod(kernel), len(lib[0])
    return lib, min(kept(opt.get("kernels", 0.0), n_kernels), kept(ratio, n_kernels * kk) // p)


def feasible(structure: str, mask: torch.Tensor, ratio: float, **opt) -> bool:
    """True when ``mask`` is a support of ``structure``'s set with exact counts."""
    if structure == "pattern":
        lib, k_ker = pattern_set(tuple(mask.shape), ratio, **opt)
        return pattern_in_set(mask, lib, k_ker, len(lib[0]))
    return in_set(mask, families(structure, tuple(mask.shape), ratio, **opt))


def support_count(structure: str, shape: tuple[int, ...], ratio: float, **opt) -> int:
    """How many candidates :func:`best_kept` enumerates (to skip examples too large)."""
    if structure == "pattern":
        lib, k_ker = pattern_set(shape, ratio, **opt)
        return len(lib) ** (shape[0] * shape[1]) * math.comb(shape[0] * shape[1], k_ker)
    return math.prod(math.comb(len(g), k) for g, k in families(structure, shape, ratio, **opt))


def best_kept(structure: str, w: torch.Tensor, ratio: float, **opt) -> float:
    """max Σ_{i ∈ support} w_i² over every feasible support, by enumeration (float64)."""
    if structure == "pattern":
        lib, k_ker = pattern_set(tuple(w.shape), ratio, **opt)
        return pattern_brute_best(w, lib, k_ker)
    return brute_best_joint(w, families(structure, tuple(w.shape), ratio, **opt))
