"""Memristor crossbars: compression, crossbars, energy, area, and accuracy on noisy chips.

The memristor ADMM paper (algorithms.md §5) reports 29.81× compression with
98.38% power and 98.29% area reduction on VGG-16 (20.88×, 96.96%, 97.47% on
ResNet-18), CIFAR-10, at ≤ 0.76 pp accuracy loss. This script measures the same
figures for LeNet-5 / MNIST (recipe lenet5-mnist-crossbar) and ResNet-20 /
CIFAR-10 (recipe resnet20-cifar10-crossbar), each run through the pipeline:
pretrain → ADMM (crossbar-tile blocks + 4-bit levels) → hard prune → masked
retrain → hardware stage (mapping, cost against the dense model, chips).

Then, on the final model, with the device noise of ``--noise``:

- **chips**: Monte-Carlo accuracy over ``--chips`` programmed chips (seeds
  seed … seed + chips − 1), mean ± std. Only cells that exist are faulty: a
  weight whose whole crossbar tile was pruned has no cells (the crossbar is not
  built) and reads 0 on every chip (``evaluate_on_chips``' ``built_only``). The
  pipeline's own figure (``hardware.json``) is recorded beside it as
  ``chips_pipeline`` (the same model since ``built_only`` is the library's
  default; runs made before that let every cell of every pruned weight get stuck).
- **noise-aware retraining** (``--na-epochs``): masked retraining with Gaussian
  weight noise injected into every training forward (a forward pre-hook on each
  layer), per layer of the RMS weight error that programming variation (σ, β of
  the noise) causes on a chip; kept weights only (pruned ones are not
  programmed). Stuck cells, drift and read noise are not injected. Scored on the
  same chips.
- **fault-aware retraining** (``--fa-chips``, ``--fa-epochs``): for each of the
  first chips, a copy of the final model retrains (run's masks attached: pruned
  weights stay 0, quantized ones on their levels) knowing that chip's stuck
  cells (``fault_masks`` for its seed, restricted to existing cells), with the
  variation noise injected too, and is scored on that same chip (same seed:
  same faults, same programming variation). ``--fa-mode read`` (default,
  differential mapping): ``read_faults`` makes every forward use the weights the
  chip reads with those stuck cells, read(q) digit by digit (straight-through
  gradient; exact: ``fault_read_error`` checks it against ``program_chip``).
  ``--fa-mode pin``:
  ``pin_faults`` freezes every weight with a stuck cell at its pinned value, a
  conservative model with 2 slices per weight (docs/devices.md). The score is
  always the chip's.

Power: the cost model gives energy per inference E and latency T; power at an
equal inference rate f is E·f, so its reduction is the energy reduction (also
recorded: power at each model's own peak rate, E/T).

Run directories go under ``--runs`` (runs/bench-crossbar/; ``--reuse`` skips the
pipeline for a finished one and takes its recipe.yaml); the summary to
benchmarks/results/crossbar.json and rows to benchmarks/results/README.md
(with ``--out-json PATH`` only to PATH, rows printed instead).

Usage:
    python benchmarks/bench_crossbar.py --data-dir ../shared/data [--only lenet5] \\
        [--set resnet20:pretrain.epochs=30] [--train-samples N] [--chips 10]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py
from torch import Tensor, nn

from dualprune import data
from dualprune.hardware import (
    ChipsResult,
    CrossbarSpec,
    DeviceNoise,
    evaluate_on_chips,
    fault_masks,
    grid_levels,
    pin_faults,
    program_chip,
)
from dualprune.hardware.chips import built_cells
from dualprune.hardware.faults import fault_levels, read_faults
from dualprune.masks.masks import Masks
from dualprune.pipeline import Recipe, load_recipe, run
from dualprune.pipeline.artifacts import load_artifact
from dualprune.pipeline.stages import subset
from dualprune.train import TrainConfig
from dualprune.train.loop import fit

ROW_TAG = "crossbar:"
STAGES = ("pretrain", "compress", "retrain")
TARGET = (
    "paper, VGG-16 / ResNet-18 on CIFAR-10: 29.81× / 20.88×, power −98.38% / −96.96%, "
    "area −98.29% / −97.47%, ≤ 0.76 pp loss"
)
VARIATION_SEED = 1_000_003  # the chip that measures the noise to inject (not a scored chip)


def budget(train: int | None, test: int | None) -> dict[str, Any]:
    """train_samples / test_samples of every training stage."""
    out: dict[str, Any] = {}
    for stage in STAGES:
        out |= {f"{stage}.train_samples": train, f"{stage}.test_samples": test}
    return out


# name → (recipe, settings): the CPU budgets of a 2-core machine (docstring of each recipe)
EXPERIMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lenet5": ("lenet5-mnist-crossbar", {}),  # the recipe as is: 6 + 6 + 4 epochs
    "resnet20": (
        "resnet20-cifar10-crossbar",
        {
            "pretrain.epochs": 20,
            "compress.epochs": 10,
            "retrain.epochs": 8,
            **budget(10000, 2000),
        },
    ),
}


# ---- noise injection ----------------------------------------------------------------


def variation_rms(
    model: nn.Module, spec: CrossbarSpec, noise: DeviceNoise, masks: Masks
) -> dict[str, float]:
    """Per layer, the RMS of (chip − ideal) over kept weights under σ and β alone."""
    variation = DeviceNoise(sigma=noise.sigma, beta=noise.beta, margin=noise.margin)
    ideal = dict(program_chip(model, spec, masks=masks, scales=masks.scales).named_parameters())
    chip = program_chip(
        model, spec, variation, masks=masks, scales=masks.scales, seed=VARIATION_SEED
    )
    out = {}
    for name, p in chip.named_parameters():
        if name in masks and bool(masks[name].any()):
            err = (p.detach() - ideal[name].detach())[masks[name]]
            out[name] = float(err.pow(2).mean().sqrt())
    return out


class NoiseForward:
    """Variation noise injected into every training forward (straight-through).

    Per layer a forward pre-hook swaps W for W + σ_l·N(0, 1)·M (kept weights M,
    noise detached: the gradient reaches W unchanged) and a forward hook, registered
    first, puts W back. Register after ``Masks`` and ``read_faults``: the noise is
    then added to the weights as the chip's faults read them, and taken off first.
    """

    def __init__(
        self, model: nn.Module, keep: dict[str, Tensor], stds: dict[str, float], seed: int
    ) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.saved: dict[int, tuple[nn.Module, Tensor]] = {}
        self.handles: list[Any] = []
        for name, m in keep.items():
            std = stds.get(name, 0.0)
            if std <= 0:
                continue
            module = model.get_submodule(name.rpartition(".")[0])
            self.handles.append(module.register_forward_pre_hook(self._swap(m.float() * std)))
            self.handles.append(module.register_forward_hook(self._restore, prepend=True))

    def _swap(self, scale: Tensor) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            w = module._parameters["weight"]
            if w is None or not module.training:
                return
            with torch.no_grad():
                delta = torch.randn(w.shape, generator=self.gen).to(w) * scale.to(w)
            self.saved[id(module)] = (module, w)
            module._parameters["weight"] = w + delta  # type: ignore[assignment]

        return hook

    def _restore(self, module: nn.Module, args: Any, output: Any) -> None:
        saved = self.saved.pop(id(module), None)
        if saved is not None:
            module._parameters["weight"] = saved[1]  # type: ignore[assignment]

    def detach(self) -> None:
        """Remove the hooks and put back any weight still swapped."""
        for module, w in self.saved.values():
            module._parameters["weight"] = w  # type: ignore[assignment]
        self.saved = {}
        for h in self.handles:
            h.remove()
        self.handles = []


def fault_read_error(
    model: nn.Module, spec: CrossbarSpec, noise: DeviceNoise, masks: Masks, seed: int
) -> float:
    """max |α·read(q) − chip| over all weights, the chip programmed with stuck cells only.

    0 (up to the readout's 2^−24 level grid) when ``fault_levels`` models the chip
    exactly.
    """
    stuck = DeviceNoise(stuck_min=noise.stuck_min, stuck_max=noise.stuck_max)
    chip = dict(
        program_chip(
            model, spec, stuck, masks=masks, scales=masks.scales, seed=seed
        ).named_parameters()
    )
    err, table = 0.0, {n: masks[n] for n in masks.names}
    for name, f in fault_masks(model, spec, noise, seed=seed, masks=masks).items():
        w = model.get_parameter(name).detach()
        q, a = grid_levels(w, spec, alpha=masks.scales.get(name), mask=table.get(name))
        read = fault_levels(q, f, spec).to(w.dtype) * a
        err = max(err, float((read - chip[name].detach()).abs().max()))
    return err


def loader(ds: data.Dataset, x: Tensor, y: Tensor, batch: int, train: bool, seed: int = 0) -> Any:
    """A data loader over (x, y) with the data set's normalisation (augmented to train)."""
    return data.Loader(
        x,
        y,
        batch_size=batch,
        mean=ds.mean,
        std=ds.std,
        shuffle=train,
        augment=train and ds.augment,
        seed=seed,
    )


@dataclass
class Aware:
    """Noise- and fault-aware retraining of one run's final model, scored on its chips."""

    model: nn.Module
    masks: Masks
    out: Path
    spec: CrossbarSpec
    noise: DeviceNoise
    cells: dict[str, Tensor]
    stds: dict[str, float]
    ds: data.Dataset
    test_loader: Any
    cfg: TrainConfig
    meta: dict[str, Any]

    def chips(self, model: nn.Module, seeds: Sequence[int]) -> ChipsResult:
        """Accuracy of ``model`` on the chips with these (consecutive) seeds (built cells)."""
        return evaluate_on_chips(
            model,
            self.spec,
            self.noise,
            self.test_loader,
            n_chips=len(seeds),
            seed=seeds[0],
            masks=self.masks,
            scales=self.masks.scales,
        )

    def retrain(self, epochs: int, chip: int | None = None, pin: bool = False) -> nn.Module:
        """A copy retrained with the masks and the injected noise (and chip's faults)."""
        faults = None
        if chip is not None:  # only existing cells (built tiles) can be stuck
            faults = fault_masks(self.model, self.spec, self.noise, seed=chip, masks=self.masks)
        m = copy.deepcopy(self.model).train()
        masks = Masks.load(self.out / "masks.safetensors").attach(m)
        pins = reads = None
        if faults and pin:
            pins = pin_faults(m, faults, self.spec, scales=masks.scales)
        elif faults:
            reads = read_faults(m, faults, self.spec, scales=masks.scales, masks=masks)
        keep = {n: masks[n] for n in masks.names}
        cfg = self.cfg.model_copy(update={"epochs": epochs})
        hooks = NoiseForward(m, keep, self.stds, seed=cfg.seed + 1)
        x, y = subset(self.ds.train_x, self.ds.train_y, cfg.train_samples)
        where = self.out / ("bench-noise-aware" if chip is None else f"bench-fault-aware-{chip}")
        try:
            train = loader(self.ds, x, y, cfg.batch_size, True, cfg.seed)
            fit(m, train, self.test_loader, cfg, where, meta=self.meta, progress=False)
        finally:
            hooks.detach()
            for h in (reads, pins):
                if h is not None:
                    h.detach()
            masks.detach(m)
        return m.eval()


# ---- one experiment ---------------------------------------------------------------------


def _chips(result: Any) -> dict[str, Any]:
    d = result.as_dict()
    return {k: d[k] for k in ("mean", "std", "ideal", "n_chips", "accs", "seeds")}


def bench(name: str, recipe_name: str, settings: dict[str, Any], args: Any) -> dict[str, Any]:
    """Run one experiment (module docstring); return its summary."""
    t0 = time.perf_counter()
    out = Path(args.runs) / name
    settings = {**settings, "hardware.noise": args.noise, "hardware.chips": args.chips}
    recipe: Recipe = load_recipe(
        recipe_name, {**settings, "out": str(out), "data_dir": args.data_dir}
    )
    if recipe.hardware is None or recipe.retrain is None or recipe.solver is None:
        raise SystemExit(f"{name}: the recipe needs a plan, a solver, 'retrain' and 'hardware'")
    done = (out / "hardware.json").is_file() and (out / "report.json").is_file()
    if not (args.reuse and done):
        run(recipe, progress=False, overwrite=True)
    report = json.loads((out / "report.json").read_text())
    hw = json.loads((out / "hardware.json").read_text())
    stages = report["stages"]

    art = load_artifact(out)
    recipe = art.recipe if art.recipe is not None else recipe  # what the run used
    model, masks = art.model.eval(), art.masks
    if masks is None:
        raise SystemExit(f"{name}: {out} has no masks.safetensors")
    meta = {"model_name": art.name, "num_classes": art.num_classes, "dataset": recipe.dataset}
    spec, noise = recipe.hardware.spec(), DeviceNoise.parse(args.noise)
    ds = data.load(recipe.dataset, root=recipe.data_dir)
    eval_cfg = recipe.pretrain or recipe.compress or recipe.retrain
    tx, ty = subset(ds.test_x, ds.test_y, eval_cfg.test_samples)
    test_loader = loader(ds, tx, ty, eval_cfg.eval_batch_size, False)
    cells = built_cells(model, spec, masks)
    mode = args.fa_mode if spec.mapping == "differential" else "pin"
    cfg = recipe.retrain.model_copy(update={"lr": args.aware_lr, "schedule": "cosine"})
    stds = variation_rms(model, spec, noise, masks)
    aware = Aware(model, masks, out, spec, noise, cells, stds, ds, test_loader, cfg, meta)
    seeds = list(range(args.seed, args.seed + args.chips))
    before = aware.chips(model, seeds)
    print(f"== {name}: {before} (noise {args.noise})")
    noise_aware = None
    if args.na_epochs > 0:
        after = aware.chips(aware.retrain(args.na_epochs), seeds)
        print(f"   noise-aware retraining ({args.na_epochs} epochs): {after}")
        noise_aware = {"epochs": args.na_epochs, "lr": args.aware_lr, "chips": _chips(after)}
    fault_aware = None
    if args.fa_chips > 0 and args.fa_epochs > 0:
        fault_aware = fault_aware_runs(aware, before, seeds[: args.fa_chips], args, mode)
        if mode == "read":
            fault_aware["fault_read_error"] = fault_read_error(model, spec, noise, masks, seeds[0])
    dense = stages.get("pretrain", stages.get("pretrained", {})).get("test_acc", float("nan"))
    final = stages["final"]["test_acc"]
    return {
        "name": name,
        "recipe": recipe_name,
        "settings": settings,
        "reused": args.reuse and done,
        "run_recipe": recipe.model_dump(mode="json"),
        "hardware": hw["options"],
        "noise": args.noise,
        "acc": {
            "dense": dense,
            "hard_prune": stages.get("hard_prune", {}).get("test_acc"),
            "final": final,
            "loss_pp": 100 * (dense - final),
            "test_samples": len(ty),
        },
        **hardware_figures(report["totals"], hw),
        "chips_pipeline": hw.get("chips"),
        "chips": {**_chips(before), "cells_existing": sum(int(c.sum()) for c in cells.values())},
        "injected_noise_rms": stds,
        "noise_aware": noise_aware,
        "fault_aware": fault_aware,
        "wall_s": time.perf_counter() - t0,
        "out": str(out),
    }


def fault_aware_runs(
    aware: Aware, before: ChipsResult, seeds: list[int], args: Any, mode: str
) -> dict[str, Any]:
    """Fault-aware retraining for each chip in ``seeds``, scored on that chip."""
    per_chip = []
    for k, seed in enumerate(seeds):
        chip = aware.chips(aware.retrain(args.fa_epochs, seed, pin=mode == "pin"), [seed])
        per_chip.append(
            {
                "seed": seed,
                "before": before.accs[k],
                "after": chip.accs[0],
                "ideal_after": chip.ideal,
            }
        )
        print(
            f"   chip {seed}: {100 * before.accs[k]:.2f}% → {100 * chip.accs[0]:.2f}% "
            f"after fault-aware retraining ({mode})"
        )
    b, a = [c["before"] for c in per_chip], [c["after"] for c in per_chip]
    return {
        "epochs": args.fa_epochs,
        "lr": args.aware_lr,
        "mode": mode,
        "chips": per_chip,
        "before_mean": statistics.fmean(b),
        "before_std": statistics.stdev(b) if len(b) > 1 else 0.0,
        "after_mean": statistics.fmean(a),
        "after_std": statistics.stdev(a) if len(a) > 1 else 0.0,
    }


def hardware_figures(totals: dict[str, Any], hw: dict[str, Any]) -> dict[str, Any]:
    """Compression (report.json totals) and crossbars, energy, area, power (hardware.json)."""
    cost, dense = hw["cost"], hw["cost"]["dense"]
    e, de = cost["energy_j"]["total"], dense["energy_j"]["total"]
    return {
        "compression": {
            "weights": totals["compression_prunable"],
            "all_params": totals["compression_all_params"],
            "storage_prunable": totals["storage_ratio_prunable"],
            "storage": totals["storage_ratio"],
            "nonzeros": totals["nonzeros"],
            "weights_total": totals["weights"],
        },
        "crossbars": {
            "dense": hw["mapping"]["totals"]["dense_crossbars"],
            "compressed": cost["crossbars"],
            "packed": hw["mapping"]["totals"]["packed"],
        },
        "reductions": cost["reductions"],
        "energy_j": {"dense": de, "compressed": e},
        "area_m2": {"dense": dense["area_m2"]["total"], "compressed": cost["area_m2"]["total"]},
        "latency_s": {"dense": dense["latency_s"], "compressed": cost["latency_s"]},
        "power_peak_w": {"dense": de / dense["latency_s"], "compressed": e / cost["latency_s"]},
    }


# ---- results ----------------------------------------------------------------------------


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}%"


def row(r: dict[str, Any], command: str) -> str:
    """One results-table row."""
    c, x, red, acc, h = r["compression"], r["crossbars"], r["reductions"], r["acc"], r["hardware"]
    chips, na, fa = r["chips"], r["noise_aware"], r["fault_aware"]
    setting = (
        f"recipe {r['recipe']} + {json.dumps(r['settings'])}; {h['crossbar']} crossbars, "
        f"{h['weight_bits']}-bit weights on {h['cell_bits']}-bit cells ({h['mapping']}), "
        f"{h['profile']}; noise `{r['noise']}`"
    )
    text = (
        f"{c['weights']:.2f}× fewer weights (storage {c['storage']:.1f}×, indices counted); "
        f"crossbars {x['dense']} → {x['compressed']} (−{100 * red['crossbars']:.1f}%); "
        f"energy/inference −{100 * red['energy_j']:.1f}% (= power at an equal inference "
        f"rate), area −{100 * red['area_m2']:.1f}%, latency {0.0 - 100 * red['latency_s']:+.1f}%; "
        f"acc {100 * acc['dense']:.2f}% → {100 * acc['final']:.2f}% ({-acc['loss_pp']:+.2f} pp); "
        f"{chips['n_chips']} chips {_pm(chips['mean'], chips['std'])}"
    )
    if na is not None:
        text += f" → noise-aware ({na['epochs']} ep) {_pm(na['chips']['mean'], na['chips']['std'])}"
    if fa is not None:
        first, last = fa["chips"][0]["seed"], fa["chips"][-1]["seed"]
        which = f"chip {first}" if first == last else f"chips {first}–{last}"
        text += (
            f"; {which}: {_pm(fa['before_mean'], fa['before_std'])} → fault-aware "
            f"({fa['mode']}, {fa['epochs']} ep per chip) {_pm(fa['after_mean'], fa['after_std'])}"
        )
    return f"| {ROW_TAG} {r['name']} | {setting} | {text} | {TARGET} | `{command}` |"


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """``[EXP:]KEY=VALUE`` (VALUE read as YAML) → {experiment or "*": {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set '{item}': expected [EXPERIMENT:]KEY=VALUE")
        exp, _, key = key.rpartition(":")
        if exp and exp not in EXPERIMENTS:
            raise SystemExit(
                f"--set '{item}': unknown experiment '{exp}' ({', '.join(EXPERIMENTS)})"
            )
        out.setdefault(exp or "*", {})[key] = yaml.safe_load(value)
    return out


def main() -> None:
    """Run the experiments and write the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--only", default=",".join(EXPERIMENTS), help="experiments, comma-separated")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[EXP:]KEY=VALUE",
        help="recipe override (all experiments, or EXP only); repeatable",
    )
    p.add_argument("--train-samples", type=int, default=None, help="every stage, every experiment")
    p.add_argument("--test-samples", type=int, default=None, help="every stage, every experiment")
    p.add_argument("--noise", default="sigma=0.03,stuck_min=0.01,stuck_max=0.01")
    p.add_argument("--chips", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="first chip seed")
    p.add_argument("--na-epochs", type=int, default=2, help="noise-aware retraining (0: skip)")
    p.add_argument("--fa-chips", type=int, default=3, help="chips retrained fault-aware")
    p.add_argument("--fa-epochs", type=int, default=2, help="fault-aware epochs per chip")
    p.add_argument(
        "--fa-mode",
        choices=("read", "pin"),
        default="read",
        help="faults read as the chip reads them, or pin_faults (offset: pin)",
    )
    p.add_argument("--aware-lr", type=float, default=0.002, help="lr of both (cosine)")
    p.add_argument("--runs", default="runs/bench-crossbar", help="run directories go here")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs (skip the pipeline)")
    p.add_argument("--out-json", default=None, help="write here only (no README rows)")
    args = p.parse_args()
    wanted = [w for w in args.only.split(",") if w]
    unknown = [w for w in wanted if w not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)} ({', '.join(EXPERIMENTS)})")
    sets = parse_set(args.set)
    samples = {}
    for stage in STAGES:
        if args.train_samples is not None:
            samples[f"{stage}.train_samples"] = args.train_samples
        if args.test_samples is not None:
            samples[f"{stage}.test_samples"] = args.test_samples
    results = []
    for name in wanted:
        recipe, settings = EXPERIMENTS[name]
        settings = {**settings, **samples, **sets.get("*", {}), **sets.get(name, {})}
        results.append(bench(name, recipe, settings, args))
        results[-1]["command"] = "python " + shlex.join(sys.argv)

    command = "python " + shlex.join(sys.argv)
    meta = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
    }
    path = Path(args.out_json) if args.out_json else RESULTS / "crossbar.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text())["results"] if path.exists() else []
    names = {r["name"] for r in results}
    merged = [r for r in old if r["name"] not in names] + results
    path.write_text(json.dumps({**meta, "results": merged}, indent=1) + "\n")
    rows = [row(r, r.get("command", command)) for r in merged]
    if args.out_json:
        print("\n".join(rows))
    else:
        replace_rows(ROW_TAG, rows)
    for r in results:
        print(f"{r['name']}: {r['wall_s']:.0f} s, wrote {path}")


if __name__ == "__main__":
    main()
