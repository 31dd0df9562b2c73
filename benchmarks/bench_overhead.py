"""Time per training step with each solver attached, as a ratio to plain training.

ResNet-20 (CIFAR-10 shapes, random data: the step time does not depend on the
pixels), batch 128, SGD with momentum. Every variant runs the same loop:

    forward, loss, zero_grad, backward, [solver.regularize()], step, [solver.step(loss)]

plus the per-epoch ``solver.update()`` cost amortised over an epoch of
``--steps-per-epoch`` batches (391 for CIFAR-10 at batch 128). The variants are
interleaved round by round (plain, ADMM, SLR, Magnitude, masked retraining,
plain, ...) so that machine noise hits all alike; the median step time of each
is divided by the plain median measured in the same run. Target: ≤ 1.05×.

Writes benchmarks/results/overhead.json and rows in benchmarks/results/README.md.

Usage:
    python benchmarks/bench_overhead.py [--rounds 15] [--steps 4] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py

import dualprune as dp
from dualprune import models
from dualprune.solvers import ADMM, SLR, Magnitude

ROW_TAG = "overhead:"


def make_plan() -> dp.Plan:
    """Column pruning of the residual 3×3 convs (the ResNet-20 recipe's plan)."""
    return dp.Plan({"re:layer.*conv.*": dp.Sparsity(0.6, "column")})


def variant(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[int], float]:
    """A closure running n steps of one variant, returning seconds per step."""
    torch.manual_seed(0)
    model = models.create("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    solver = None
    if name == "admm":
        solver = ADMM(model, make_plan(), rho=1e-3)
    elif name == "slr":
        solver = SLR(model, make_plan(), rho=0.1)
    elif name == "magnitude":
        solver = Magnitude(model, make_plan(), schedule="agp", steps=10)
        solver.update()  # a first pruning step, so masks are live
    elif name == "masked retrain":
        masks = SLR(model, make_plan()).hard_prune()
        masks.attach(model)
    x, y = batch

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if solver is not None:
                solver.regularize()
            opt.step()
            if solver is not None:
                solver.step(loss.detach())
        return (time.perf_counter() - t0) / n

    def update_cost() -> float:
        if solver is None or name == "magnitude":
            return 0.0
        t0 = time.perf_counter()
        solver.update(train_loss=1.0)
        return time.perf_counter() - t0

    run.update_cost = update_cost  # type: ignore[attr-defined]
    return run


def main() -> None:
    """Measure and write the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps-per-epoch", type=int, default=391)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(args.batch_size, 3, 32, 32, generator=g),
        torch.randint(0, 10, (args.batch_size,), generator=g),
    )
    names = ["plain", "admm", "slr", "magnitude", "masked retrain"]
    runs = {n: variant(n, batch) for n in names}
    for r in runs.values():  # warm-up
        r(2)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.rounds):
        for n in names:
            times[n].append(runs[n](args.steps))
        print(
            f"round {i + 1}/{args.rounds}: "
            + ", ".join(f"{n} {1e3 * times[n][-1]:.0f} ms" for n in names)
        )
    updates = {n: min(runs[n].update_cost() for _ in range(3)) for n in names}  # type: ignore[attr-defined]
    plain = statistics.median(times["plain"])
    results = {}
    for n in names:
        med = statistics.median(times[n])
        per_step = med + updates[n] / args.steps_per_epoch
        results[n] = {
            "median_step_s": med,
            "update_s": updates[n],
            "step_with_update_s": per_step,
            "ratio": per_step / plain,
            "all_step_s": times[n],
        }
    command = "python " + shlex.join(sys.argv)
    meta = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "steps_per_epoch": args.steps_per_epoch,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps({**meta, "results": results}, indent=1))
    rows = []
    for n in names[1:]:
        r = results[n]
        rows.append(
            f"| {ROW_TAG} {n} vs plain training | ResNet-20, batch {args.batch_size}, "
            f"{torch.get_num_threads()} threads, median of {args.rounds}×{args.steps} steps, "
            f"update amortised over {args.steps_per_epoch} steps | {r['ratio']:.3f}× "
            f"({1e3 * r['step_with_update_s']:.0f} vs {1e3 * plain:.0f} ms/step; "
            f"update {1e3 * r['update_s']:.0f} ms) | ≤ 1.05× | `{command}` |"
        )
    replace_rows(ROW_TAG, rows)
    for n in names:
        r = results[n]
        print(f"{n:>15}: {1e3 * r['step_with_update_s']:.1f} ms/step, ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
