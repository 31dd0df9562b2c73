"""Settings for the quickstart recipe, chosen on a validation split (never on the test set).

The quickstart (``dualprune run``) spends 10 LeNet-5 epochs in all (pretrain + compress +
retrain) and prunes with SLR to the ECCV'18 per-layer ratios (conv1 80%, conv2 92%,
fc1 99.1%, fc2 93%: 71.2x fewer weights). This script trains each candidate setting
the way the pipeline does (same seeds, loaders, optimizer, schedules, solver
construction, hard prune and masked retraining) but on the first 55,000 MNIST
training images, and evaluates on the last 5,000 (the validation split). The test
split is never read.

For each candidate it records the validation accuracy after every epoch, right after
the hard prune (retrain-free) and after masked retraining. Results accumulate in
``benchmarks/results/quickstart_search.json`` (with the command that produced each);
a candidate already there is skipped, so the search can be stopped and resumed.

A candidate is the recipe's four sections (``pretrain``, ``solver``, ``compress``,
``retrain``) written as dotted overrides of :data:`BASE`; the chosen one is copied into
``src/dualprune/recipes/quickstart.yaml`` as it is. ``solver.update_every_batches`` is
counted in batches of the real run (938 per epoch: 60,000 images at batch 64); on the
55,000-image split the script scales it by 860/938 (at batch 64) so that a candidate
runs the same number of Z/dual steps per epoch here as in the recipe.

Usage:
    python benchmarks/bench_quickstart.py --data-dir ../shared/data [--only A,B] [--list]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, cpu_model  # benchmarks/common.py

import dualprune as dp
from dualprune import data, models, solvers
from dualprune.pipeline.stages import augmentation
from dualprune.plan import weight_key
from dualprune.train import TrainConfig, evaluate, fit

OUT = Path("runs/bench-quickstart")
RESULT_FILE = RESULTS / "quickstart_search.json"
VAL = 5000  # the last VAL training images are the validation split
FULL_TRAIN = 60000  # training images of the real run

PLAN = dp.Plan(
    {
        "conv1": dp.Sparsity(0.8),
        "conv2": dp.Sparsity(0.92),
        "fc1": dp.Sparsity(0.991),
        "fc2": dp.Sparsity(0.93),
    }
)

#: The recipe as it was before this search (README: 87.09% after the hard prune, 97.96%).
OLD: dict[str, dict[str, Any]] = {
    "pretrain": {"epochs": 4, "lr": 0.01, "nesterov": True, "schedule": "cosine"},
    "solver": {"name": "slr", "rho": 0.1, "M": 300, "r": 0.1, "s0": 0.01, "update_every": 1},
    "compress": {
        "epochs": 4, "lr": 0.01, "nesterov": True, "schedule": "constant", "weight_decay": 0.0,
    },
    "retrain": {
        "epochs": 2, "lr": 0.005, "nesterov": True, "schedule": "cosine", "weight_decay": 0.0,
    },
}  # fmt: skip

SHIFT = {"augment": "shift", "pad": 2}

#: The starting point: the benchmarks' known-good SLR settings (ρ 0.01 ×1.2 per
#: update, shift augmentation in every stage), with Z/dual steps every 200 batches
#: so that ρ grows within the few epochs the quickstart has.
BASE: dict[str, dict[str, Any]] = {
    "pretrain": {**OLD["pretrain"], "epochs": 3, **SHIFT},
    "solver": {
        "name": "slr", "rho": 0.01, "rho_growth": 1.2, "M": 300, "r": 0.1, "s0": 0.01,
        "update_every_batches": 200,
    },
    "compress": {**OLD["compress"], "epochs": 5, **SHIFT},
    "retrain": {**OLD["retrain"], "epochs": 2, **SHIFT},
}  # fmt: skip

#: Candidate I's changes to B: batches of 32 and a Z-step every 400 of them (23 steps).
_SMALL_BATCH: dict[str, Any] = {
    "compress.schedule": "cosine",
    "pretrain.batch_size": 32,
    "compress.batch_size": 32,
    "retrain.batch_size": 32,
    "solver.update_every_batches": 400,
}

#: name -> (starting sections, dotted overrides; a value None removes the key)
CANDIDATES: dict[str, tuple[dict[str, dict[str, Any]], dict[str, Any]]] = {
    "old-recipe": (OLD, {}),
    "A": (BASE, {}),
    "B": (BASE, {"compress.schedule": "cosine"}),
    "C": (
        BASE,
        {"pretrain.augment": "none", "compress.augment": "none", "retrain.augment": "none"},
    ),
    "D": (BASE, {"retrain.lr": 0.01}),
    # round 2: from B (a cosine compress schedule)
    "E": (BASE, {"compress.schedule": "cosine", "pretrain.epochs": 2, "compress.epochs": 6}),
    "F": (BASE, {"compress.schedule": "cosine", "compress.epochs": 6, "retrain.epochs": 1}),
    "G": (BASE, {"compress.schedule": "cosine", "solver.rho_growth": 1.3}),
    "H": (BASE, {"compress.schedule": "cosine", "solver.rho": 0.03}),
    # round 3: more learning per epoch (B with smaller batches, or a larger learning rate)
    "I": (BASE, _SMALL_BATCH),
    "J": (
        BASE,
        {
            "compress.schedule": "cosine",
            "pretrain.lr": 0.02,
            "compress.lr": 0.02,
            "retrain.lr": 0.01,
        },
    ),
    # round 4: from I (batch 32); a gentler retrain, a longer compress stage, and the
    # per-epoch cadence of the released code for comparison
    "K": (BASE, {**_SMALL_BATCH, "retrain.lr": 0.002}),
    "L": (BASE, {**_SMALL_BATCH, "retrain.lr": 0.002, "compress.epochs": 6, "retrain.epochs": 1}),
    "M": (
        BASE,
        {
            **_SMALL_BATCH,
            "solver.update_every_batches": None,
            "solver.update_every": 1,
            "solver.rho_growth": 1.3,
        },
    ),
}


def sections(name: str) -> dict[str, dict[str, Any]]:
    """The candidate's recipe sections (pretrain, solver, compress, retrain)."""
    start, overrides = CANDIDATES[name]
    out = copy.deepcopy(start)
    for key, value in overrides.items():
        section, field = key.split(".", 1)
        if value is None:
            out[section].pop(field, None)
        else:
            out[section][field] = value
    return out


def train_config(section: dict[str, Any]) -> TrainConfig:
    """A stage's settings as the pipeline validates them."""
    return TrainConfig(**section)


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def run_candidate(name: str, ds: data.Dataset, split: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Train one candidate as the pipeline would; return its validation accuracies."""
    spec = sections(name)
    pre_cfg, com_cfg, re_cfg = (train_config(spec[s]) for s in ("pretrain", "compress", "retrain"))
    val_loader = data.Loader(
        split["val_x"], split["val_y"], batch_size=pre_cfg.eval_batch_size,
        mean=ds.mean, std=ds.std, shuffle=False, augment=False,
    )  # fmt: skip

    def train_loader(cfg: TrainConfig) -> data.Loader:
        return data.Loader(
            split["train_x"], split["train_y"], batch_size=cfg.batch_size, mean=ds.mean,
            std=ds.std, shuffle=True, seed=cfg.seed, **augmentation(cfg, ds),
        )  # fmt: skip

    meta = {"model_name": "lenet5", "num_classes": 10, "dataset": ds.name}
    t_start = time.perf_counter()
    torch.manual_seed(pre_cfg.seed)  # the pipeline seeds from the first stage, then builds
    model = models.create("lenet5", num_classes=10)
    # the dense model depends on the pretrain section only: shared between candidates
    pre_dir = OUT / f"pretrain-{_digest(spec['pretrain'])}"
    t0 = time.perf_counter()
    pre_hist = fit(model, train_loader(pre_cfg), val_loader, pre_cfg, pre_dir, meta=meta,
                   resume=True, progress=False)  # fmt: skip
    pre_seconds = time.perf_counter() - t0
    pretrained = evaluate(model, val_loader)["acc"]
    print(f"[{name}] pretrained: val {100 * pretrained:.2f}% ({pre_seconds:.0f} s)")

    options = dict(spec["solver"])
    solver_name = options.pop("name")
    batches = math.ceil(len(split["train_y"]) / com_cfg.batch_size)
    if options.get("update_every_batches"):  # the same Z/dual steps per epoch as on 60,000
        full = math.ceil(FULL_TRAIN / com_cfg.batch_size)
        options["update_every_batches"] = max(
            1, round(options["update_every_batches"] * batches / full)
        )
    solver = solvers.create(solver_name, model, PLAN, **options)
    solver.expect_updates(solver.cadence.updates(com_cfg.epochs, batches))
    t0 = time.perf_counter()
    com_hist = fit(model, train_loader(com_cfg), val_loader, com_cfg, OUT / name / "compress",
                   meta=meta, resume=False, progress=False, solver=solver)  # fmt: skip
    masks = solver.hard_prune()
    hard = evaluate(model, val_loader)
    print(f"[{name}] hard prune: val {100 * hard['acc']:.2f}% (retrain-free)")
    re_hist: list[dict[str, Any]] = []
    if re_cfg.epochs > 0:
        masks.attach(model)
        try:
            re_dir = OUT / name / "retrain"
            re_hist = fit(
                model, train_loader(re_cfg), val_loader, re_cfg, re_dir,
                meta=meta, resume=False, progress=False,
            )  # fmt: skip
        finally:
            masks.detach(model)
    final = evaluate(model, val_loader)
    seconds = time.perf_counter() - t_start - pre_seconds
    print(f"[{name}] final: val {100 * final['acc']:.2f}%")
    layers = [weight_key(n) for n in PLAN.resolve(model)]
    weights = sum(masks[k].numel() for k in layers)
    kept = sum(int(masks[k].sum()) for k in layers)
    epochs = pre_cfg.epochs + com_cfg.epochs + re_cfg.epochs
    return {
        "sections": spec,
        "overrides": CANDIDATES[name][1],
        "epochs_total": epochs,
        "update_every_batches_used": options.get("update_every_batches"),
        "z_steps": len(solver.history),
        "final_rho": solver.history[-1]["rho"] if solver.history else None,
        "val_pretrained": pretrained,
        "val_compress_soft": com_hist[-1]["test_acc"] if com_hist else None,
        "val_hard_prune": hard["acc"],
        "val_final": final["acc"],
        "val_per_epoch": {
            "pretrain": [h["test_acc"] for h in pre_hist],
            "compress": [h["test_acc"] for h in com_hist],
            "retrain": [h["test_acc"] for h in re_hist],
        },
        "train_acc_last": (re_hist or com_hist)[-1]["train_acc"],
        "compression": weights / max(kept, 1),
        "seconds_compress_retrain": seconds,
        "seconds_pretrain": pre_seconds,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| candidate | epochs p+c+r | Z-steps (final ρ) | changes from BASE | val dense | "
        "val hard prune | val final |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        s = r["sections"]
        split = "+".join(str(s[k]["epochs"]) for k in ("pretrain", "compress", "retrain"))
        rho = f"{r['final_rho']:.3g}" if r["final_rho"] is not None else "-"
        changes = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        lines.append(
            f"| {name} | {split} | {r['z_steps']} ({rho}) | {changes} | "
            f"{100 * r['val_pretrained']:.2f}% | {100 * r['val_hard_prune']:.2f}% | "
            f"{100 * r['val_final']:.2f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--only", default=None, help="comma-separated candidate names")
    p.add_argument("--list", action="store_true", help="print the results table and exit")
    args = p.parse_args()
    store: dict[str, Any] = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.exists() else {}
    results: dict[str, Any] = store.setdefault("results", {})
    if args.list:
        print(table(results))
        return
    names = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    ds = data.load("mnist", root=args.data_dir)
    n = len(ds.train_y) - VAL
    split = {
        "train_x": ds.train_x[:n], "train_y": ds.train_y[:n],
        "val_x": ds.train_x[n:], "val_y": ds.train_y[n:],
    }  # fmt: skip
    store.update(
        {
            "about": "quickstart settings search: LeNet-5/MNIST, ECCV'18 ratios (71.2x), SLR; "
            f"trained on the first {n} training images, validated on the last {VAL}; "
            "the test split is never read",
            "plan": PLAN.to_dict(),
            "base": BASE,
        }
    )
    command = "python " + shlex.join(sys.argv)
    for name in names:
        if name in results:
            print(f"[{name}] already in {RESULT_FILE.name}: skipped")
            continue
        r = run_candidate(name, ds, split)
        r.update(
            command=command,
            date=dt.datetime.now().isoformat(timespec="seconds"),
            cpu=cpu_model(),
            threads=torch.get_num_threads(),
            torch=torch.__version__,
        )
        results[name] = r
        RESULTS.mkdir(parents=True, exist_ok=True)
        RESULT_FILE.write_text(json.dumps(store, indent=1) + "\n")
    print(table({k: results[k] for k in names if k in results}))


if __name__ == "__main__":
    main()
