"""LeNet-5 / MNIST reproductions through the pipeline (``dualprune run``).

Experiments (all start from ONE pretrained LeNet-5, trained by the first):

- ``eccv-admm`` / ``eccv-slr``: the ECCV'18 per-layer ratios (80/92/99.1/93% →
  71.2×) with the recipes lenet5-mnist-admm.yaml / lenet5-mnist-slr.yaml.
  Target: ≥ 99.2% after retraining.
- ``eccv-admm-more`` / ``eccv-slr-more``: a second round from those results:
  no solver epochs (the hard prune keeps the zeros already there), 15 more
  epochs of masked retraining.
- ``eccv-admm-long`` / ``eccv-slr-long``: 20 solver epochs instead of 10 and
  weight decay while retraining; SLR with ρ growing from 0.01 (×1.2 per update);
  ``eccv-admm-long30``: the same with 30 solver epochs.
- ``strong-admm`` / ``strong-slr``: the ECCV ratios from a stronger dense model
  (``strong-pretrain``: 40 epochs, cosine, weight decay 5e-4), 30 solver epochs
  and 10 masked retraining epochs with weight decay.
- ``aug-admm`` / ``aug-slr``: the ECCV ratios with training-time augmentation
  (random shifts of up to 2 pixels, no flips) in every stage: a dense model
  (``aug-pretrain``: 40 epochs, cosine, weight decay 5e-4), 30 solver epochs,
  20 masked retraining epochs with weight decay. ``aug-push`` and ``aug-joint``
  repeat ``push`` and ``joint`` from ``aug-slr`` with augmentation and
  ``--aug-round-epochs`` per stage. ``aug-push-admm``: round 2's ratios (200×)
  from ``aug-admm`` with ADMM, 20 solver and 20 retraining epochs;
  ``aug-push-admm3``: round 3's ratios (~300×) from that, the same way;
  ``aug-push-slr``: round 2's ratios from ``aug-slr`` with SLR (ρ 0.01 ×1.2),
  20 + 20 epochs; ``aug-joint-admm``: ``aug-joint`` from ``aug-push-admm3``.
- ``push``: progressive rounds, each starting from the previous round's final
  model: round 1 = eccv-slr's result, round 2 → ~200×, round 3 → ~300×.
  Target: ≥ 200× at ≥ 99.2%.
- ``joint``: prune + quantize from the last push round (ADMM-NN's joint
  compression). Target: ≥ 1,000× smaller storage of the prunable weights,
  indices counted.

Every run is a normal run directory under runs/bench-lenet5/ (report.md
inside); a summary goes to benchmarks/results/lenet5.json and rows to
benchmarks/results/README.md.

Usage:
    python benchmarks/bench_lenet5.py --data-dir ../shared/data [--only eccv-slr,push]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py

from dualprune.pipeline import load_recipe, run

ROW_TAG = "LeNet-5:"
OUT = Path("runs/bench-lenet5")


def sparsity(conv1: float, conv2: float, fc1: float, fc2: float) -> dict[str, Any]:
    """A plan with per-layer irregular ratios."""
    ratios = {"conv1": conv1, "conv2": conv2, "fc1": fc1, "fc2": fc2}
    return {"layers": {k: {"type": "sparsity", "ratio": v} for k, v in ratios.items()}}


def joint(plan: dict[str, Any], bits: dict[str, Any]) -> dict[str, Any]:
    """The same sparsity with a quantization per layer (an intersection)."""
    layers = {k: [v, {"type": "quantization", **bits[k]}] for k, v in plan["layers"].items()}
    return {"layers": layers}


ROUND2 = sparsity(0.82, 0.962, 0.9976, 0.97)  # 2,125 nonzeros: 202.6×
ROUND3 = sparsity(0.84, 0.974, 0.99845, 0.98)  # 1,430 nonzeros: 301×
BITS = {
    "conv1": {"bits": 3},
    "conv2": {"levels": "ternary"},
    "fc1": {"levels": "ternary"},
    "fc2": {"levels": "ternary"},
}


def go(
    name: str, recipe: str, settings: dict[str, Any], data_dir: str, resume: bool = False
) -> dict[str, Any]:
    """Run one recipe with settings (``resume``: continue its unfinished stage); summarise."""
    t0 = time.perf_counter()
    r = load_recipe(recipe, {**settings, "out": str(OUT / name), "data_dir": data_dir})
    result = run(r, progress=False, resume=resume, overwrite=not resume)
    report = json.loads((result.out / "report.json").read_text())
    return {
        "name": name,
        "recipe": recipe,
        "settings": settings,
        "stages": result.stages,
        "totals": report["totals"],
        "wall_s": time.perf_counter() - t0,
        "out": str(result.out),
    }


def shifted(*stages: str) -> dict[str, Any]:
    """Random shifts of up to 2 pixels (no flips: digits) in the given stages."""
    return {f"{st}.{k}": v for st in stages for k, v in (("augment", "shift"), ("pad", 2))}


def augmented(wanted: list[str], data_dir: str | None, epochs: int) -> list[dict[str, Any]]:
    """The ``aug-*`` experiments (module docstring), those of them in ``wanted``."""
    results: list[dict[str, Any]] = []
    if not any(w.startswith("aug-") for w in wanted):
        return results
    if not (OUT / "aug-pretrain" / "model.safetensors").exists():
        dense = {"pretrain.epochs": 40, "pretrain.weight_decay": 5e-4, **shifted("pretrain")}
        go("aug-pretrain", "lenet5-mnist", dense, data_dir, resume=True)
    base = {
        "pretrained": str(OUT / "aug-pretrain" / "model.safetensors"),
        "pretrain": None,
        "compress.epochs": 30,
        "retrain.epochs": 20,
        "retrain.weight_decay": 5e-4,
        **shifted("compress", "retrain"),
    }
    if "aug-admm" in wanted:
        results.append(go("aug-admm", "lenet5-mnist-admm", base, data_dir))
    if "aug-slr" in wanted:
        grow = {**base, "solver.rho": 0.01, "solver.rho_growth": 1.2}
        results.append(go("aug-slr", "lenet5-mnist-slr", grow, data_dir))
    rounds = {
        "compress.epochs": epochs,
        "retrain.epochs": epochs,
        "retrain.weight_decay": 5e-4,
        "pretrain": None,
        **shifted("compress", "retrain"),
    }
    last = OUT / "aug-slr" / "model.safetensors"
    if "aug-push" in wanted:
        for i, plan in ((2, ROUND2), (3, ROUND3)):
            settings = {**rounds, "pretrained": str(last), "plan": plan}
            results.append(go(f"aug-push-round{i}", "lenet5-mnist-slr", settings, data_dir))
            last = OUT / f"aug-push-round{i}" / "model.safetensors"
    if "aug-push-admm" in wanted:  # 200x from aug-admm's model with ADMM, 20 + 20 epochs
        settings = {
            **rounds,
            "compress.epochs": 20,
            "retrain.epochs": 20,
            "pretrained": str(OUT / "aug-admm" / "model.safetensors"),
            "plan": ROUND2,
        }
        results.append(go("aug-push-admm", "lenet5-mnist-admm", settings, data_dir))
    if "aug-push-admm3" in wanted:  # then round 3's ratios (301x), the same way
        settings = {
            **rounds,
            "compress.epochs": 20,
            "retrain.epochs": 20,
            "pretrained": str(OUT / "aug-push-admm" / "model.safetensors"),
            "plan": ROUND3,
        }
        results.append(go("aug-push-admm3", "lenet5-mnist-admm", settings, data_dir))
    if "aug-push-slr" in wanted:  # 200x from aug-slr's model with SLR (rho 0.01 x1.2), 20 + 20
        settings = {
            **rounds,
            "compress.epochs": 20,
            "retrain.epochs": 20,
            "solver.rho": 0.01,
            "solver.rho_growth": 1.2,
            "pretrained": str(OUT / "aug-slr" / "model.safetensors"),
            "plan": ROUND2,
        }
        results.append(go("aug-push-slr", "lenet5-mnist-slr", settings, data_dir))
    if "aug-joint-admm" in wanted:  # joint from aug-push-admm3's 300x model
        settings = {
            **rounds,
            "pretrained": str(OUT / "aug-push-admm3" / "model.safetensors"),
            "plan": joint(ROUND3, BITS),
        }
        results.append(go("aug-joint-admm", "lenet5-mnist-joint", settings, data_dir))
    if "aug-joint" in wanted:
        last = OUT / "aug-push-round3" / "model.safetensors"
        settings = {**rounds, "pretrained": str(last), "plan": joint(ROUND3, BITS)}
        results.append(go("aug-joint", "lenet5-mnist-joint", settings, data_dir))
    return results


def main() -> None:
    """Run the experiments and write the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--only", default="eccv-admm,eccv-slr,push,joint")
    p.add_argument("--round-epochs", type=int, default=8, help="compress and retrain per round")
    p.add_argument("--aug-round-epochs", type=int, default=15, help="the same for aug-push/joint")
    args = p.parse_args()
    wanted = args.only.split(",")
    pretrained = OUT / "pretrain"
    results: list[dict[str, Any]] = []
    if not (pretrained / "model.safetensors").exists():
        go("pretrain", "lenet5-mnist", {"pretrain.epochs": 10}, args.data_dir)
    base = {"pretrained": str(pretrained / "model.safetensors"), "pretrain": None}
    for m in ("admm", "slr"):
        if f"eccv-{m}" in wanted:
            results.append(go(f"eccv-{m}", f"lenet5-mnist-{m}", base, args.data_dir))
    for m in ("admm", "slr"):  # round 2: 15 more epochs of masked retraining
        if f"eccv-{m}-more" in wanted:
            more = {
                "pretrained": str(OUT / f"eccv-{m}" / "model.safetensors"),
                "pretrain": None,
                "compress.epochs": 0,
                "retrain.epochs": 15,
            }
            results.append(go(f"eccv-{m}-more", f"lenet5-mnist-{m}", more, args.data_dir))
    long = {"compress.epochs": 20, "retrain.weight_decay": 5e-4}  # a longer solver phase
    if "eccv-admm-long" in wanted:
        results.append(go("eccv-admm-long", "lenet5-mnist-admm", {**base, **long}, args.data_dir))
    if "eccv-admm-long30" in wanted:
        more = {**base, **long, "compress.epochs": 30}
        results.append(go("eccv-admm-long30", "lenet5-mnist-admm", more, args.data_dir))
    if "eccv-slr-long" in wanted:  # SLR with a growing ρ from 0.01 (0.38 after 20 updates)
        grow = {**base, **long, "solver.rho": 0.01, "solver.rho_growth": 1.2}
        results.append(go("eccv-slr-long", "lenet5-mnist-slr", grow, args.data_dir))
    strong = {"compress.epochs": 30, "retrain.weight_decay": 5e-4, "pretrain": None}
    if any(w.startswith("strong-") for w in wanted):
        if not (OUT / "strong-pretrain" / "model.safetensors").exists():
            dense = {"pretrain.epochs": 40, "pretrain.weight_decay": 5e-4}
            go("strong-pretrain", "lenet5-mnist", dense, args.data_dir, resume=True)
        strong["pretrained"] = str(OUT / "strong-pretrain" / "model.safetensors")
    if "strong-admm" in wanted:
        results.append(go("strong-admm", "lenet5-mnist-admm", strong, args.data_dir))
    if "strong-slr" in wanted:
        grow = {**strong, "solver.rho": 0.01, "solver.rho_growth": 1.2}
        results.append(go("strong-slr", "lenet5-mnist-slr", grow, args.data_dir))
    results += augmented(wanted, args.data_dir, args.aug_round_epochs)
    last = OUT / "eccv-slr" / "model.safetensors"
    e = args.round_epochs
    rounds = {"compress.epochs": e, "retrain.epochs": e}
    if "push" in wanted:
        for i, plan in ((2, ROUND2), (3, ROUND3)):
            settings = {**rounds, "pretrained": str(last), "pretrain": None, "plan": plan}
            results.append(go(f"push-round{i}", "lenet5-mnist-slr", settings, args.data_dir))
            last = OUT / f"push-round{i}" / "model.safetensors"
    if "joint" in wanted:
        last = OUT / "push-round3" / "model.safetensors"
        settings = {
            **rounds,
            "pretrained": str(last),
            "pretrain": None,
            "plan": joint(ROUND3, BITS),
        }
        results.append(go("joint", "lenet5-mnist-joint", settings, args.data_dir))

    command = "python " + shlex.join(sys.argv)
    meta = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "lenet5.json"
    old = json.loads(path.read_text())["results"] if path.exists() else []
    names = {r["name"] for r in results}
    merged = [r for r in old if r["name"] not in names] + results
    path.write_text(json.dumps({**meta, "results": merged}, indent=1))
    rows = []
    for r in merged:
        t, s = r["totals"], r["stages"]
        start = s.get("pretrained", s.get("pretrain", {})).get("test_acc", float("nan"))
        rows.append(
            f"| {ROW_TAG} {r['name']} | recipe {r['recipe']} + {json.dumps(r['settings'])} | "
            f"{t['compression_prunable']:.1f}× fewer weights, storage {t['storage_ratio']:.0f}× "
            f"(indices counted); acc {100 * start:.2f}% → hard prune "
            f"{100 * s['hard_prune']['test_acc']:.2f}% → final {100 * s['final']['test_acc']:.2f}%"
            f" | ≥ 99.2% | `{command}` |"
        )
    replace_rows(ROW_TAG, rows)
    for r in results:
        print(r["name"], r["totals"]["compression_prunable"], r["stages"]["final"])


if __name__ == "__main__":
    main()
