"""Sparse execution on CPU: dense vs sparse latency of pruned LeNets, and break-even sparsity.

LeNet-300-100 and LeNet-5 (MNIST shapes), every Conv2d/Linear pruned per layer
to ``--sparsity`` by zeroing its smallest weights (random weights: latency does
not depend on their values), or the final model of a run directory
(``--lenet5 RUN_DIR``), used with the zeros it has. For each batch size:

- ``dense``: the model as it is (zeros multiplied like any weight);
- ``sparse-all``: every pruned layer swapped for its CSR version;
- ``sparse-tuned``: ``sparsify_for_inference`` at that batch size — only the
  layers that measured faster are swapped;

timed interleaved by ``compare_latency``, with the theoretical speedup (dense
MACs / MACs left after skipping zeros in the swapped layers) beside the measured
one. Then, per layer and batch size, ``break_even_sparsity``: the smallest
sparsity from which CSR beats dense for that layer's shape on this CPU.

Writes benchmarks/results/sparse.json (or ``--out``) with the command line; rows
go to benchmarks/results/README.md only when the output is inside
benchmarks/results/. Run on a quiet machine: the numbers are latencies.

Usage:
    python benchmarks/bench_sparse.py [--sparsity 0.95] [--batch-sizes 1 64] [--threads 1]
        [--repeats 30] [--min-time 0.02] [--lenet5 RUN_DIR] [--lenet300 RUN_DIR] [--out PATH]
Smoke run (seconds, no results files):
    python benchmarks/bench_sparse.py --repeats 2 --min-time 0.001 --sparsities 0.9 0.99 \\
        --out /tmp/sparse.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py
from torch import nn

from dualprune import models
from dualprune.constraints.structures import project_irregular
from dualprune.pipeline.runreport import load_run_model
from dualprune.size.metrics import layer_stats
from dualprune.speed.breakeven import DEFAULT_SPARSITIES, break_even_sparsity
from dualprune.speed.latency import compare_latency
from dualprune.speed.sparse import sparse_layer, unsupported_reason
from dualprune.speed.sparsify import layer_timer, sparsify_for_inference

ROW_TAG = "sparse:"
MODELS = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}


def pruned_model(name: str, sparsity: float, run_dir: str | None, seed: int) -> nn.Module:
    """The run's final model, or a random one with each layer's smallest weights zeroed."""
    if run_dir:
        model, info = load_run_model(run_dir)
        if info["model"] != name:
            sys.exit(f"--{name} {run_dir}: that run trained '{info['model']}', not '{name}'")
        return model.eval()
    torch.manual_seed(seed)
    model = models.create(name).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.copy_(project_irregular(m.weight, sparsity))
    return model


def swap_all(model: nn.Module) -> nn.Module:
    """A copy with every supported layer that has zeros swapped for its CSR version."""
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if unsupported_reason(m) is None and bool((m.weight == 0).any()):
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, sparse_layer(m).eval())
    return out


def macs_left(stats: list[Any], swapped: set[str]) -> int:
    """MACs per sample when the swapped layers skip their zeros and the others do not."""
    return sum(s.effective_macs if s.name in swapped else s.macs for s in stats)


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Latency of the three variants and per-layer break-even, per batch size."""
    model = pruned_model(name, args.sparsity, getattr(args, name), args.seed)
    x1 = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
    stats = layer_stats(model, x1)
    all_sparse = swap_all(model)
    swapped_all = {s.name for s in stats if s.nonzero < s.weights}
    timer = layer_timer(args.warmup, args.repeats, args.min_time)
    out: dict[str, Any] = {
        "layers": {s.name: {"shape": list(s.shape), "sparsity": s.sparsity} for s in stats},
        "batches": {},
    }
    for b in args.batch_sizes:
        x = x1.expand(b, -1, -1, -1).clone() + 0.01 * torch.randn(b, 1, 28, 28)
        tuned, report = sparsify_for_inference(model, x, threads=args.threads, timer=timer)
        macs = {
            "dense": float(macs_left(stats, set())),
            "sparse-all": float(macs_left(stats, swapped_all)),
            "sparse-tuned": float(macs_left(stats, set(report.swapped))),
        }
        comparison = compare_latency(
            {"dense": model, "sparse-all": all_sparse, "sparse-tuned": tuned},
            x,
            batch_sizes=(b,),
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            min_time=args.min_time,
            macs=macs,
        )
        print(f"\n{MODELS[name]}, batch {b}\n{report}\n\n{comparison}")
        breaks = {}
        for d in report.layers:
            if d.input_shape is None or d.reason.startswith(("no sparse", "Conv2d with")):
                continue
            be = break_even_sparsity(
                model.get_submodule(d.name),
                d.input_shape,
                sparsities=args.sparsities,
                threads=args.threads,
                timer=timer,
                seed=args.seed,
            )
            print(f"\n{d.name}: {be}")
            breaks[d.name] = be.as_dict()
        out["batches"][str(b)] = {
            "comparison": comparison.as_dict(),
            "sparsify": report.as_dict(),
            "break_even": breaks,
        }
    return out


def rows_for(name: str, result: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """One README row per batch size: tuned speedup vs MACs ratio, break-even per layer."""
    rows = []
    source = meta["sources"].get(name) or meta["random_note"]
    setting = (
        f"{source}; {meta['threads']} thread(s), median of {meta['repeats']}; "
        f"{meta['cpu']}, torch {meta['torch']}"
    )
    for b, r in result["batches"].items():
        v = r["comparison"]["variants"]
        tuned, every = v["sparse-tuned"], v["sparse-all"]
        be = ", ".join(
            f"{k} " + ("—" if e["sparsity"] is None else f"{e['sparsity']:g}")
            for k, e in r["break_even"].items()
        )
        rows.append(
            f"| {ROW_TAG} {MODELS[name]} batch {b} | {setting} | sparse-tuned "
            f"{tuned['speedup'][b]:.2f}× (MACs ratio {tuned['macs_ratio']:.1f}×), sparse-all "
            f"{every['speedup'][b]:.2f}× (MACs ratio {every['macs_ratio']:.1f}×); "
            f"break-even sparsity: {be} | — | `{meta['command']}` |"
        )
    return rows


def main() -> None:
    """Measure, print, and write the JSON (and README rows for outputs in results/)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.95, help="per-layer, random weights")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--min-time", type=float, default=0.02, help="seconds per repeat, at least")
    p.add_argument("--sparsities", type=float, nargs="+", default=list(DEFAULT_SPARSITIES))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--lenet5", metavar="RUN_DIR", help="use this run's final LeNet-5")
    p.add_argument("--lenet300", metavar="RUN_DIR", help="use this run's final LeNet-300-100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "sparse.json")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    command = "python " + shlex.join(sys.argv)
    results = {name: bench_model(name, args) for name in args.models}
    sources = [f"{n}: {getattr(args, n)}" for n in args.models if getattr(args, n)]
    meta = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "batch_sizes": args.batch_sizes,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "min_time": args.min_time,
        "sparsity_note": "; ".join(sources)
        or f"{args.sparsity:.0%} irregular per layer, random weights",
        "sources": {n: f"trained run {getattr(args, n)}" for n in args.models if getattr(args, n)},
        "random_note": f"{args.sparsity:.0%} irregular per layer, random weights",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**meta, "results": results}, indent=1))
    print(f"\nwrote {args.out}")
    if args.out.resolve().parent == RESULTS.resolve():
        replace_rows(ROW_TAG, [row for n, r in results.items() for row in rows_for(n, r, meta)])


if __name__ == "__main__":
    main()
