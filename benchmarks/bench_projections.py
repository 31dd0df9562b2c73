"""Time Π_S over every weight of a ResNet-50-sized parameter set, for every structure.

The 54 prunable weights of ResNet-50 (conv1, the 16 bottleneck blocks with their
4 downsample convs, fc: 25.5M weights, ~100 MB in float32) are generated with
their real shapes and random values; no torchvision needed. For each structure
the script times ``Sparsity.project`` over all layers the structure can apply to
(``check`` decides: pattern needs 3×3 kernels, N:M needs in % m == 0), best of
``--repeats`` runs after one warm-up, and writes

- benchmarks/results/projections.json (exact command, torch version, CPU count,
  threads, load average, date, every timing), and
- one row per structure in benchmarks/results/README.md (rows of other
  benchmarks in that table are left alone; this script's old rows are replaced).

Targets (docs/algorithms.md §3 projections): ≤ 0.2 s for irregular, filter,
channel and column; ≤ 1 s for the others.

Usage:
    python benchmarks/bench_projections.py [--repeats 7] [--threads N] [--quantization]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py

from dualprune.constraints import Quantization, Sparsity
from dualprune.errors import ConstraintError

ROW_TAG = "projection:"
FAST = ("irregular", "filter", "channel", "column")
CASES = [  # (structure, ratio, options)
    ("irregular", 0.7, {}),
    ("filter", 0.7, {}),
    ("channel", 0.7, {}),
    ("column", 0.7, {}),
    ("pattern", 0.7, {}),
    ("nm", 0.5, {"n": 2, "m": 4}),
    ("block", 0.7, {"block": (64, 64)}),
    ("tile_rows", 0.7, {"block": (64, 64)}),
    ("tile_cols", 0.7, {"block": (64, 64)}),
]


def resnet50_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of ResNet-50's conv and fc weights, in torchvision's order."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (64, 3, 7, 7))]
    cin = 64
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            shapes += [
                (f"{p}.conv1.weight", (width, cin, 1, 1)),
                (f"{p}.conv2.weight", (width, width, 3, 3)),
                (f"{p}.conv3.weight", (4 * width, width, 1, 1)),
            ]
            if b == 0:
                shapes.append((f"{p}.downsample.0.weight", (4 * width, cin, 1, 1)))
            cin = 4 * width
    shapes.append(("fc.weight", (1000, 2048)))
    return shapes


def time_all(project, weights: list[torch.Tensor], repeats: int) -> list[float]:
    """Seconds per pass over all weights, ``repeats`` passes after one warm-up."""
    for w in weights:
        project(w)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            project(w)
        times.append(time.perf_counter() - t0)
    return times


def covered(c, named: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for name, w in named.items():
        try:
            c.check(w, name)
        except ConstraintError:
            continue
        out.append(w)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantization", action="store_true", help="also time quantizers")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    named = {n: torch.randn(s, generator=gen) for n, s in resnet50_shapes()}
    total = sum(w.numel() for w in named.values())
    print(
        f"{len(named)} weights, {total:,} entries, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    results = []
    for structure, ratio, opts in CASES:
        c = Sparsity(ratio, structure, **opts)
        weights = covered(c, named)
        times = time_all(c.project, weights, args.repeats)
        target = 0.2 if structure in FAST else 1.0
        row = {
            "structure": structure,
            "constraint": c.to_dict(),
            "layers": len(weights),
            "weights": sum(w.numel() for w in weights),
            "best_s": min(times),
            "median_s": statistics.median(times),
            "times_s": times,
            "target_s": target,
            "meets_target": min(times) <= target,
        }
        results.append(row)
        print(
            f"{structure:10s} {row['layers']:3d} layers {row['weights'] / 1e6:6.2f}M  "
            f"best {row['best_s']:.3f} s  median {row['median_s']:.3f} s  (target {target} s)"
        )
    quant = []
    if args.quantization:
        for q in (
            Quantization(bits=4),
            Quantization(levels="ternary"),
            Quantization(bits=8, scale="channel"),
        ):
            times = time_all(q.project, list(named.values()), max(1, args.repeats // 3))
            quant.append({"constraint": q.to_dict(), "best_s": min(times), "times_s": times})
            print(f"{q!r:45s} best {min(times):.3f} s")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    record = {
        "benchmark": "projections over ResNet-50 weight shapes",
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "repeats": args.repeats,
        "seed": args.seed,
        "layers": len(named),
        "weights": total,
        "timing": "seconds per pass over all covered layers; best of repeats after a warm-up",
        "results": results,
        "quantization": quant,
    }
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "projections.json").write_text(json.dumps(record, indent=2) + "\n")
        write_table(results, command, record)
    return 0 if all(r["meets_target"] for r in results) else 1


def write_table(results: list[dict], command: str, record: dict) -> None:
    """Replace this benchmark's rows in results/README.md, keeping every other row."""
    where = f"{record['cpu_count']} CPUs, {record['threads']} threads, torch {record['torch']}"
    rows = []
    for r in results:
        opts = {k: v for k, v in r["constraint"].items() if k not in ("type", "structure")}
        setting = ", ".join(f"{k}={v}" for k, v in opts.items())
        rows.append(
            f"| {ROW_TAG} {r['structure']} | {setting}; {r['layers']} layers, "
            f"{r['weights'] / 1e6:.1f}M weights; {where} | {r['best_s']:.3f} s "
            f"(median {r['median_s']:.3f} s) | ≤ {r['target_s']:g} s | `{command}` |"
        )
    replace_rows(ROW_TAG, rows)


if __name__ == "__main__":
    raise SystemExit(main())
