"""SLR's central claim: accuracy right after hard pruning, with no retraining.

From ONE pretrained model, each method trains for the same number of epochs
with the same optimizer, data order and plan; after every epoch a copy of the
model is hard-pruned (W ← Π_S(W)) and evaluated. Methods:

- ``slr``: dualprune.SLR at the given ρ (released default 0.1, M 300, r 0.1, s0 0.01)
- ``admm``: dualprune.ADMM at the given ρ and growth (NEU code: 1e-3, ×1.3 per update)
- ``admm-same-rho``: ADMM at SLR's ρ (isolates the multiplier rule from ρ)
- ``agp``: dualprune.Magnitude, automated gradual pruning over all epochs

The loop is written here with the solver hooks (what a user's own loop does).
Writes benchmarks/results/retrain_free_<model>.json, a plot
benchmarks/results/retrain_free_<model>.png, and rows in results/README.md.

Usage:
    python benchmarks/bench_retrain_free.py --model lenet5 --dataset mnist \\
        --pretrain-epochs 10 --epochs 10 --data-dir ../shared/data
    python benchmarks/bench_retrain_free.py --model resnet20 --dataset cifar10 \\
        --pretrain-epochs 10 --epochs 4 --train-samples 20000 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py

import dualprune as dp
from dualprune import data, models
from dualprune.solvers import ADMM, SLR, Magnitude, RhoSchedule
from dualprune.train import TrainConfig, evaluate, fit, flush_denormals

PLANS = {
    # ECCV'18 per-layer ratios: 71.2× fewer weights
    "lenet5": dp.Plan(
        {
            "conv1": dp.Sparsity(0.8),
            "conv2": dp.Sparsity(0.92),
            "fc1": dp.Sparsity(0.991),
            "fc2": dp.Sparsity(0.93),
        }
    ),
    # the ResNet-20 recipe's plan: 60% of the columns of every residual 3×3 conv
    "resnet20": dp.Plan({"re:layer.*conv.*": dp.Sparsity(0.6, "column")}),
}


def hard_pruned_accuracy(solver: dp.solvers.Solver, loader) -> float:
    """Accuracy after ``solver.hard_prune()`` on a copy (the solver and its model are untouched)."""
    twin = copy.deepcopy(solver)  # copies its model with it
    twin.hard_prune()
    return evaluate(twin.model, loader)["acc"]


def make_solver(method: str, model: torch.nn.Module, plan: dp.Plan, args: argparse.Namespace):
    if method == "slr":
        return SLR(
            model, plan, rho=args.rho_slr, M=args.M, r=args.r, s0=args.s0,
            schedule=RhoSchedule(growth=args.rho_growth_slr),
        )  # fmt: skip
    if method == "admm":
        return ADMM(model, plan, rho=args.rho_admm, schedule=RhoSchedule(growth=args.rho_growth))
    if method == "admm-same-rho":
        return ADMM(model, plan, rho=args.rho_slr)
    if method == "agp":
        return Magnitude(model, plan, schedule="agp", steps=args.epochs)
    raise SystemExit(f"unknown method {method}")


def main() -> None:
    """Pretrain once, run each method, write results and the plot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5", choices=sorted(PLANS))
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="default: 0.01 (LeNet), 0.1/0.01")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--methods", default="slr,admm,admm-same-rho,agp")
    p.add_argument("--rho-slr", type=float, default=0.1)
    p.add_argument("--M", type=float, default=300)
    p.add_argument("--r", type=float, default=0.1)
    p.add_argument("--s0", type=float, default=0.01)
    p.add_argument("--rho-growth-slr", type=float, default=1.0, help="SLR's ρ ← γ·ρ per update")
    p.add_argument("--rho-admm", type=float, default=1e-3)
    p.add_argument("--rho-growth", type=float, default=1.3)
    p.add_argument("--out", default="runs/bench-retrain-free")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    cifar = args.model != "lenet5"
    bs = args.batch_size or (128 if cifar else 64)
    pre_lr = args.lr or (0.1 if cifar else 0.01)
    ds = data.load(args.dataset, root=args.data_dir)
    n = args.train_samples
    # a fixed random subset: image folders list the training set class by class
    pick = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(0))[:n]
    train_x, train_y = (ds.train_x[pick], ds.train_y[pick]) if n else (ds.train_x, ds.train_y)

    def train_loader(seed: int) -> data.Loader:
        return data.Loader(
            train_x, train_y, batch_size=bs, mean=ds.mean, std=ds.std,
            shuffle=True, augment=ds.augment, seed=seed,
        )  # fmt: skip

    test_loader = data.Loader(
        ds.test_x,
        ds.test_y,
        batch_size=1000,
        mean=ds.mean,
        std=ds.std,
        shuffle=False,
        augment=False,
    )
    out = Path(args.out) / args.model
    torch.manual_seed(0)
    model = models.create(args.model, num_classes=ds.num_classes)
    pre = out / "pretrain"
    cfg = TrainConfig(
        epochs=args.pretrain_epochs, batch_size=bs, lr=pre_lr, nesterov=True, schedule="cosine"
    )
    t0 = time.perf_counter()
    fit(model, train_loader(0), test_loader, cfg, pre, meta={"model_name": args.model}, resume=True)
    pretrained_state = copy.deepcopy(model.state_dict())
    base_acc = evaluate(model, test_loader)["acc"]
    print(f"pretrained: {100 * base_acc:.2f}% ({time.perf_counter() - t0:.0f} s)")

    plan = PLANS[args.model]
    lr = 0.01
    results: dict[str, dict] = {}
    for method in args.methods.split(","):
        model.load_state_dict(pretrained_state)
        solver = make_solver(method, model, plan, args)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        loader = train_loader(1)
        curve, soft, seconds = [hard_pruned_accuracy(solver, test_loader)], [base_acc], 0.0
        with flush_denormals():
            for epoch in range(args.epochs):
                loader.set_epoch(epoch)
                model.train()
                t0 = time.perf_counter()
                total, count = 0.0, 0
                for x, y in loader:
                    loss = F.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    solver.regularize()
                    opt.step()
                    solver.step(loss.detach())
                    total, count = total + float(loss.detach()) * len(y), count + len(y)
                solver.update(train_loss=total / count)
                seconds += time.perf_counter() - t0
                soft.append(evaluate(model, test_loader)["acc"])
                curve.append(hard_pruned_accuracy(solver, test_loader))
                print(
                    f"{method:>14} epoch {epoch + 1}: soft {100 * soft[-1]:.2f}%  "
                    f"hard-pruned {100 * curve[-1]:.2f}%  "
                    f"{solver.diagnostics.get('conditions', '')}"
                )
        results[method] = {
            "hard_pruned_acc": curve,
            "soft_acc": soft,
            "train_seconds": seconds,
            "settings": getattr(solver, "settings", dict)(),
            "history": solver.history,
        }

    command = "python " + shlex.join(sys.argv)
    meta = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "dataset": args.dataset,
        "train_samples": n or len(ds.train_y),
        "pretrain_epochs": args.pretrain_epochs,
        "pretrained_acc": base_acc,
        "epochs": args.epochs,
        "optimizer": f"SGD nesterov momentum 0.9, lr {lr} constant, batch {bs}",
        "plan": plan.to_dict(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"retrain_free_{args.model}{args.tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps({**meta, "results": results}, indent=1))

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, r in results.items():
        ax.plot(range(len(r["hard_pruned_acc"])), [100 * a for a in r["hard_pruned_acc"]],
                marker="o", label=method)  # fmt: skip
    ax.axhline(100 * base_acc, color="grey", ls="--", lw=1, label="dense (pretrained)")
    ax.set_xlabel("epochs of training under the solver")
    ax.set_ylabel("test accuracy after hard prune (%)")
    ax.set_title(f"{args.model}/{args.dataset}: retrain-free accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png")

    tag = f"retrain-free: {args.model}{args.tag}"
    rows = []
    for method, r in results.items():
        curve = " → ".join(f"{100 * a:.1f}" for a in r["hard_pruned_acc"][1:])
        rows.append(
            f"| {tag} {method} | {n or len(ds.train_y)} train samples, pretrained "
            f"{args.pretrain_epochs} ep ({100 * base_acc:.2f}%), {args.epochs} ep under the "
            f"solver, {json.dumps(r['settings'])} | hard-pruned acc per epoch: {curve}% | "
            f"SLR > ADMM | `{command}` |"
        )
    replace_rows(tag, rows)
    print(json.dumps({m: r["hard_pruned_acc"][-1] for m, r in results.items()}))
    os.sync()


if __name__ == "__main__":
    main()
