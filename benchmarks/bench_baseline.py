"""Baseline training benchmarks on this machine's CPU.

1. LeNet-5 on MNIST until >= 99.2% test accuracy: epochs needed and wall time.
2. ResNet-20 on CIFAR-10: seconds per training epoch.

Each run is the real CLI command (recorded verbatim in the results), run in a
subprocess; per-epoch figures come from its ``metrics.jsonl``.

Usage:
    python benchmarks/bench_baseline.py --data-dir ../shared/data [--only lenet5|resnet20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py

ROW_TAG = "baseline:"


def run_cli(args: list[str]) -> tuple[list[dict], float, str]:
    """Run ``dualprune ARGS``; return its per-epoch metrics, wall seconds and the command."""
    cmd = ["dualprune", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    out = Path(args[args.index("--out") + 1])
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, wall, shlex.join(cmd)


def machine() -> dict:
    """What the figures were measured on."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def lenet5(data_dir: str, epochs: int) -> dict:
    """LeNet-5 / MNIST: the first epoch reaching 99.2%, and the time it took."""
    metrics, wall, cmd = run_cli(
        [
            "train",
            "--model",
            "lenet5",
            "--dataset",
            "mnist",
            "--epochs",
            str(epochs),
            "--lr",
            "0.01",
            "--nesterov",
            "--schedule",
            "cosine",
            "--batch-size",
            "64",
            "--out",
            "runs/bench-lenet5",
            "--data-dir",
            data_dir,
            "--no-progress",
        ]
    )
    hit = next((m for m in metrics if m["test_acc"] >= 0.992), None)
    return {
        "benchmark": "lenet5-mnist-baseline",
        "command": cmd,
        "epochs": epochs,
        "final_test_acc": metrics[-1]["test_acc"],
        "best_test_acc": max(m["test_acc"] for m in metrics),
        "first_epoch_at_99.2": hit["epoch"] if hit else None,
        "train_seconds_to_99.2": sum(m["seconds"] for m in metrics[: hit["epoch"]])
        if hit
        else None,
        "wall_seconds": wall,
        "seconds_per_epoch": sum(m["seconds"] for m in metrics) / len(metrics),
        "per_epoch_test_acc": [m["test_acc"] for m in metrics],
    }


def resnet20(data_dir: str, epochs: int) -> dict:
    """ResNet-20 / CIFAR-10: seconds per training epoch (augmentation included)."""
    metrics, wall, cmd = run_cli(
        [
            "train",
            "--model",
            "resnet20",
            "--dataset",
            "cifar10",
            "--epochs",
            str(epochs),
            "--lr",
            "0.1",
            "--batch-size",
            "128",
            "--out",
            "runs/bench-resnet20",
            "--data-dir",
            data_dir,
            "--no-progress",
        ]
    )
    return {
        "benchmark": "resnet20-cifar10-epoch-time",
        "command": cmd,
        "epochs": epochs,
        "seconds_per_epoch": sum(m["seconds"] for m in metrics) / len(metrics),
        "samples_per_s": sum(m["samples_per_s"] for m in metrics) / len(metrics),
        "test_acc_after": metrics[-1]["test_acc"],
        "wall_seconds": wall,
    }


def main() -> None:
    """Run the benchmarks and write benchmarks/results/baseline.json + table rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--only", choices=["lenet5", "resnet20"])
    p.add_argument("--lenet-epochs", type=int, default=12)
    p.add_argument("--resnet-epochs", type=int, default=1)
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "baseline.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    info = {"date": str(date.today()), "machine": machine(), "script": shlex.join(sys.argv)}
    if args.only in (None, "lenet5"):
        results["lenet5"] = {**lenet5(args.data_dir, args.lenet_epochs), **info}
    if args.only in (None, "resnet20"):
        results["resnet20"] = {**resnet20(args.data_dir, args.resnet_epochs), **info}
    path.write_text(json.dumps(results, indent=2) + "\n")
    write_table(results)
    print(json.dumps(results, indent=2))


def write_table(results: dict) -> None:
    """One row per baseline in results/README.md."""
    rows = []
    if "lenet5" in results:
        r = results["lenet5"]
        first = r["first_epoch_at_99.2"]
        reached = (
            f"99.2% first at epoch {first} ({r['train_seconds_to_99.2']:.0f} s of training)"
            if first
            else "99.2% not reached"
        )
        rows.append(
            f"| {ROW_TAG} LeNet-5 / MNIST | SGD Nesterov, lr 0.01 cosine, batch 64, "
            f"{r['epochs']} epochs; {_where(r)} | {100 * r['final_test_acc']:.2f}% final "
            f"(best {100 * r['best_test_acc']:.2f}%); {reached}; "
            f"{r['seconds_per_epoch']:.1f} s/epoch, {r['wall_seconds']:.0f} s wall "
            f"| ≥ 99.2% | `{r['command']}` |"
        )
    if "resnet20" in results:
        r = results["resnet20"]
        rows.append(
            f"| {ROW_TAG} ResNet-20 / CIFAR-10 epoch time | batch 128, crop + flip, "
            f"{r['epochs']} epoch(s); {_where(r)} | {r['seconds_per_epoch']:.0f} s/epoch "
            f"({r['samples_per_s']:.0f} samples/s); test {100 * r['test_acc_after']:.1f}% "
            f"after | — | `{r['command']}` |"
        )
    replace_rows(ROW_TAG, rows)


def _where(r: dict) -> str:
    m = r["machine"]
    return f"{m['cpu_count']} CPUs, {m['torch_threads']} threads, torch {m['torch']}"


if __name__ == "__main__":
    main()
