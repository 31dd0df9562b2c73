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
  built) and reads 0 on every chip. The pipeline's own figure
  (``hardware.json``), which lets every cell of every pruned weight get stuck,
  is recorded beside it as ``chips_pipeline``.
- **noise-aware retraining** (``--na-epochs``): masked retraining with Gaussian
  weight noise injected into every training forward (a forward pre-hook on each
  layer), per layer of the RMS weight error that programming variation (σ, β of
  the noise) causes on a chip; kept weights only (pruned ones are not
  programmed). Stuck cells, drift and read noise are not injected. Scored on the
  same chips.
- **fault-aware retraining** (``--fa-chips``, ``--fa-epochs``): for each of the
  first chips, that chip's stuck cells (``fault_masks``, restricted to existing
  cells) are pinned on a copy of the final model (``pin_faults``, after the
  run's masks are attached, so pruned weights stay 0 and quantized ones on
  their levels), it retrains with the injected variation noise too, and is
  scored on that same chip (same seed: same faults, same programming
  variation). With 2 slices per weight a pinned value is the model's
  approximation of what the chip reads (docs/devices.md); the score is always
  the chip's.

Power: the cost model gives energy per inference E and latency T; power at an
equal inference rate f is E·f, so its reduction is the energy reduction (also
recorded: power at each model's own peak rate, E/T).

Run directories go under ``--runs`` (runs/bench-crossbar/); the summary to
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
import torch.nn.functional as F
import yaml
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py
from torch import Tensor, nn

from dualprune import data
from dualprune.hardware import (
    ChipsResult,
    CrossbarSpec,
    DeviceNoise,
    Faults,
    evaluate_on_chips,
    fault_masks,
    pin_faults,
    program_chip,
)
from dualprune.masks import Masks
from dualprune.pipeline import Recipe, load_recipe, run
from dualprune.pipeline.artifacts import load_artifact
from dualprune.pipeline.stages import subset
from dualprune.train import TrainConfig
from dualprune.train.loop import evaluate, fit

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


# ---- which cells exist ------------------------------------------------------------------


def mapped_cells(keep: Tensor, groups: int, spec: CrossbarSpec) -> Tensor:
    """True where a weight lies in a crossbar tile that holds a kept weight (grid layout).

    The GEMM view of one group is R × C (R = in/groups·Πk, C = out/groups), cut into
    X_r × b_c tiles; a tile with no kept weight needs no crossbar, so its cells do
    not exist. Returns a bool tensor of ``keep``'s shape.
    """
    out = keep.shape[0]
    c = out // groups
    g = keep.reshape(groups, c, -1).to(torch.uint8)  # (groups, C, R)
    r = g.shape[2]
    br, bc = spec.rows, spec.logical_cols
    tr, tc = -(-r // br), -(-c // bc)
    padded = F.pad(g, (0, tr * br - r, 0, tc * bc - c)).view(groups, tc, bc, tr, br)
    used = padded.amax(dim=(2, 4), keepdim=True).expand(groups, tc, bc, tr, br)
    return used.reshape(groups, tc * bc, tr * br)[:, :c, :r].reshape(keep.shape).bool()


def existing_cells(model: nn.Module, masks: Masks, spec: CrossbarSpec) -> dict[str, Tensor]:
    """:func:`mapped_cells` of every Conv/Linear weight (occupancy: mask, else W ≠ 0)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            key = f"{name}.weight"
            keep = masks[key] if key in masks else module.weight.detach() != 0
            out[key] = mapped_cells(keep.bool(), int(getattr(module, "groups", 1)), spec)
    return out


def chip_score(cells: dict[str, Tensor], loader: Any) -> Callable[[nn.Module], float]:
    """Accuracy of a chip on which weights of unbuilt crossbars read 0 (after any read)."""

    def zero(used: Tensor) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            with torch.no_grad():
                module.weight.masked_fill_(~used, 0)

        return hook

    def score(chip: nn.Module) -> float:
        handles = [
            chip.get_submodule(name.rpartition(".")[0]).register_forward_pre_hook(zero(used))
            for name, used in cells.items()
        ]
        try:
            return float(evaluate(chip, loader)["acc"])
        finally:
            for h in handles:
                h.remove()

    return score


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


def fault_levels(q: Tensor, faults: Faults, spec: CrossbarSpec) -> Tensor:
    """The levels a chip with these stuck cells reads for levels q (differential mapping).

    Each digit ℓ^±_s = ⌊q^± / 2^{cs}⌋ mod 2^c sits on the device of q's sign
    (docs/devices.md); a cell stuck at g_min reads digit 0, at g_max digit 2^c − 1:
    read = Σ_s 2^{cs}(ℓ⁺_s − ℓ⁻_s). Pruned weights (q = 0, unprogrammed) included.
    """
    c, top = spec.cell_bits, 2**spec.cell_bits - 1
    read = torch.zeros_like(q)
    for p, u in enumerate((q.clamp(min=0), (-q).clamp(min=0))):
        for s in range(spec.slices):
            digit = (u >> (c * s)) & top
            digit = digit.masked_fill(faults.stuck_min[s, p], 0)
            digit = digit.masked_fill(faults.stuck_max[s, p], top)
            read += (1 - 2 * p) * (digit << (c * s))
    return read


class ChipForward:
    """What one chip does to the weights, imposed in every forward (straight-through).

    Per layer a forward pre-hook swaps W for

        W + α·(read(q) − q) + σ_l·N(0, 1)·M,    q = round(W/α)

    with read(q) from :func:`fault_levels` (when ``faults`` are given) and the
    noise in training forwards only, on kept weights M. Both terms are detached:
    the gradient reaches W unchanged. A forward hook puts W back. Register after
    Masks, so that W is already on its levels.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: CrossbarSpec,
        scales: dict[str, Tensor],
        keep: dict[str, Tensor],
        stds: dict[str, float],
        faults: dict[str, Faults] | None,
        seed: int,
    ) -> None:
        self.spec, self.gen = spec, torch.Generator().manual_seed(seed)
        self.saved: dict[int, tuple[nn.Module, Tensor]] = {}
        self.handles: list[Any] = []
        for name in keep:
            std, f = stds.get(name, 0.0), (faults or {}).get(name)
            if std <= 0 and f is None:
                continue
            module = model.get_submodule(name.rpartition(".")[0])
            scale = keep[name].to(torch.float32) * std
            hook = self._swap(scales[name], scale if std > 0 else None, f)
            self.handles.append(module.register_forward_pre_hook(hook))
            self.handles.append(module.register_forward_hook(self._restore))

    def _swap(
        self, alpha: Tensor, scale: Tensor | None, faults: Faults | None
    ) -> Callable[[nn.Module, Any], None]:
        top = 2 ** (self.spec.weight_bits - 1) - 1
        idx, sub = None, None
        if faults is not None:  # only the weights with a stuck cell (a few %)
            idx = (faults.stuck_min | faults.stuck_max).flatten(0, 1).any(0).flatten()
            idx = idx.nonzero().squeeze(1)
            sub = Faults(
                faults.stuck_min.flatten(2)[:, :, idx], faults.stuck_max.flatten(2)[:, :, idx]
            )

        def hook(module: nn.Module, args: Any) -> None:
            w = module._parameters["weight"]
            if w is None or (sub is None and not module.training):
                return
            with torch.no_grad():
                delta = torch.zeros_like(w)
                if sub is not None and idx is not None:
                    a = alpha.to(w).expand_as(w).reshape(-1)[idx]
                    q = torch.round(w.reshape(-1)[idx] / a).clamp(-top, top).to(torch.int64)
                    delta.view(-1)[idx] = (fault_levels(q, sub, self.spec) - q).to(w) * a
                if scale is not None and module.training:
                    delta += torch.randn(w.shape, generator=self.gen).to(w) * scale.to(w)
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

    0 (up to the readout's 2^−24 level grid) when :func:`fault_levels` models the
    chip exactly.
    """
    stuck = DeviceNoise(stuck_min=noise.stuck_min, stuck_max=noise.stuck_max)
    chip = dict(
        program_chip(
            model, spec, stuck, masks=masks, scales=masks.scales, seed=seed
        ).named_parameters()
    )
    top, err = 2 ** (spec.weight_bits - 1) - 1, 0.0
    for name, f in fault_masks(model, spec, noise, seed=seed).items():
        w, a = model.get_parameter(name).detach(), masks.scales[name]
        q = torch.round(w / a).clamp(-top, top).to(torch.int64)
        q = q.masked_fill(~masks[name], 0)
        read = fault_levels(q, f, spec).to(w) * a
        err = max(err, float((read - chip[name].detach()).abs().max()))
    return err


def aware_retrain(
    model: nn.Module,
    masks_path: Path,
    spec: CrossbarSpec,
    cfg: TrainConfig,
    ds: data.Dataset,
    test_loader: Any,
    out: Path,
    *,
    meta: dict[str, Any],
    stds: dict[str, float],
    faults: dict[str, Faults] | None = None,
    pin: bool = False,
) -> nn.Module:
    """A copy of ``model`` retrained with its masks, one chip's faults and injected noise.

    ``pin``: the faults are pinned with ``pin_faults`` instead of read through
    :class:`ChipForward`.
    """
    m = copy.deepcopy(model).train()
    masks = Masks.load(masks_path).attach(m)
    pins = pin_faults(m, faults, spec, scales=masks.scales) if pin and faults else None
    keep = {n: masks[n] for n in masks.names}
    chip = ChipForward(
        m, spec, masks.scales, keep, stds, None if pin else faults, seed=cfg.seed + 1
    )
    x, y = subset(ds.train_x, ds.train_y, cfg.train_samples)
    train_loader = data.Loader(
        x,
        y,
        batch_size=cfg.batch_size,
        mean=ds.mean,
        std=ds.std,
        shuffle=True,
        augment=ds.augment,
        seed=cfg.seed,
    )
    try:
        fit(m, train_loader, test_loader, cfg, out, meta=meta, progress=False)
    finally:
        chip.detach()
        if pins is not None:
            pins.detach()
        masks.detach(m)
    return m.eval()


@dataclass
class Aware:
    """Everything noise- and fault-aware retraining of one run needs."""

    model: nn.Module
    masks: Masks
    out: Path
    spec: CrossbarSpec
    noise: DeviceNoise
    score: Callable[[nn.Module], float]
    stds: dict[str, float]
    cells: dict[str, Tensor]
    meta: dict[str, Any]
    ds: data.Dataset
    test_loader: Any
    cfg: TrainConfig

    def retrain_and_score(
        self, epochs: int, seeds: Sequence[int], mode: str | None = None
    ) -> ChipsResult:
        """Retrain a copy (noise-aware; with ``mode``, fault-aware for the one chip in
        ``seeds``, its faults restricted to existing cells) and score it on ``seeds``."""
        seeds = list(seeds)
        faults = None
        if mode is not None:
            raw = fault_masks(self.model, self.spec, self.noise, seed=seeds[0])
            faults = {
                n: Faults(f.stuck_min & self.cells[n], f.stuck_max & self.cells[n])
                for n, f in raw.items()
            }
        where = "noise-aware" if mode is None else f"fault-aware-chip{seeds[0]}"
        m = aware_retrain(
            self.model,
            self.out / "masks.safetensors",
            self.spec,
            self.cfg.model_copy(update={"epochs": epochs}),
            self.ds,
            self.test_loader,
            self.out / f"bench-{where}",
            meta=self.meta,
            stds=self.stds,
            faults=faults,
            pin=mode == "pin",
        )
        on = {"masks": self.masks, "scales": self.masks.scales}
        return evaluate_on_chips(
            m, self.spec, self.noise, self.score, n_chips=len(seeds), seed=seeds[0], **on
        )


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
        run(recipe, progress=False)
    report = json.loads((out / "report.json").read_text())
    hw = json.loads((out / "hardware.json").read_text())
    stages, totals, cost = report["stages"], report["totals"], hw["cost"]

    art = load_artifact(out)
    model, masks = art.model.eval(), art.masks
    if masks is None:
        raise SystemExit(f"{name}: {out} has no masks.safetensors")
    meta = {"model_name": art.name, "num_classes": art.num_classes, "dataset": recipe.dataset}
    spec, noise = recipe.hardware.spec(), DeviceNoise.parse(args.noise)
    ds = data.load(recipe.dataset, root=recipe.data_dir)
    eval_cfg = recipe.pretrain or recipe.compress or recipe.retrain
    tx, ty = subset(ds.test_x, ds.test_y, eval_cfg.test_samples)
    test_loader = data.Loader(
        tx,
        ty,
        batch_size=eval_cfg.eval_batch_size,
        mean=ds.mean,
        std=ds.std,
        shuffle=False,
        augment=False,
    )
    cells = existing_cells(model, masks, spec)
    score = chip_score(cells, test_loader)
    on = {"masks": masks, "scales": masks.scales}
    print(f"== {name}: {args.chips} chips, noise {args.noise}")
    before = evaluate_on_chips(model, spec, noise, score, n_chips=args.chips, seed=args.seed, **on)
    print(f"   chips: {before}")
    stds = variation_rms(model, spec, noise, masks)
    mode = args.fa_mode if spec.mapping == "differential" else "pin"
    ctx = Aware(
        model,
        masks,
        out,
        spec,
        noise,
        score,
        stds,
        cells,
        meta,
        ds,
        test_loader,
        recipe.retrain.model_copy(update={"lr": args.aware_lr, "schedule": "cosine"}),
    )
    noise_aware = None
    if args.na_epochs > 0:
        after = ctx.retrain_and_score(args.na_epochs, range(args.seed, args.seed + args.chips))
        print(f"   noise-aware ({args.na_epochs} epochs): {after}")
        noise_aware = {"epochs": args.na_epochs, "lr": args.aware_lr, "chips": _chips(after)}
    fault_aware: dict[str, Any] | None = None
    if args.fa_chips > 0 and args.fa_epochs > 0:
        per_chip = []
        for k in range(min(args.fa_chips, args.chips)):
            chip = ctx.retrain_and_score(args.fa_epochs, [args.seed + k], mode)
            per_chip.append(
                {
                    "seed": args.seed + k,
                    "before": before.accs[k],
                    "after": chip.accs[0],
                    "ideal_after": chip.ideal,
                }
            )
            print(
                f"   chip {args.seed + k}: {100 * before.accs[k]:.2f}% → "
                f"{100 * chip.accs[0]:.2f}% after fault-aware retraining"
            )
        b, a = [c["before"] for c in per_chip], [c["after"] for c in per_chip]
        fault_aware = {
            "epochs": args.fa_epochs,
            "lr": args.aware_lr,
            "mode": mode,
            "fault_read_error": fault_read_error(model, spec, noise, masks, args.seed),
            "chips": per_chip,
            "before_mean": statistics.fmean(b),
            "before_std": statistics.stdev(b) if len(b) > 1 else 0.0,
            "after_mean": statistics.fmean(a),
            "after_std": statistics.stdev(a) if len(a) > 1 else 0.0,
        }

    dense = stages.get("pretrain", stages.get("pretrained", {})).get("test_acc", float("nan"))
    final = stages["final"]["test_acc"]
    energy, area, latency = cost["energy_j"]["total"], cost["area_m2"]["total"], cost["latency_s"]
    d_energy, d_area = cost["dense"]["energy_j"]["total"], cost["dense"]["area_m2"]["total"]
    d_latency = cost["dense"]["latency_s"]
    used = sum(int(c.sum()) for c in cells.values())
    return {
        "name": name,
        "recipe": recipe_name,
        "settings": settings,
        "hardware": hw["options"],
        "noise": args.noise,
        "acc": {
            "dense": dense,
            "hard_prune": stages.get("hard_prune", {}).get("test_acc"),
            "final": final,
            "loss_pp": 100 * (dense - final),
            "test_samples": len(ty),
        },
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
        "energy_j": {"dense": d_energy, "compressed": energy},
        "area_m2": {"dense": d_area, "compressed": area},
        "latency_s": {"dense": d_latency, "compressed": latency},
        "power_peak_w": {"dense": d_energy / d_latency, "compressed": energy / latency},
        "chips_pipeline": hw.get("chips"),
        "chips": {**_chips(before), "cells_existing": used},
        "injected_noise_rms": stds,
        "noise_aware": noise_aware,
        "fault_aware": fault_aware,
        "wall_s": time.perf_counter() - t0,
        "out": str(out),
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
        f"rate), area −{100 * red['area_m2']:.1f}%; acc {100 * acc['dense']:.2f}% → "
        f"{100 * acc['final']:.2f}% ({-acc['loss_pp']:+.2f} pp); "
        f"{chips['n_chips']} chips {_pm(chips['mean'], chips['std'])}"
    )
    if na is not None:
        text += f" → noise-aware ({na['epochs']} ep) {_pm(na['chips']['mean'], na['chips']['std'])}"
    if fa is not None:
        n = len(fa["chips"])
        text += (
            f"; chips 0–{n - 1}: {_pm(fa['before_mean'], fa['before_std'])} → fault-aware "
            f"({fa['epochs']} ep per chip) {_pm(fa['after_mean'], fa['after_std'])}"
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
