"""The stages of a run (docs/design.md, "Data flow of one run").

    pretrained? ─▶ pretrain ─▶ compress (train under the solver) ─▶ hard prune
    (evaluate: the retrain-free accuracy) ─▶ retrain (masks attached) ─▶ final
    evaluation ─▶ export (model.safetensors, masks.safetensors) ─▶ report

Everything goes into one run directory::

    recipe.yaml  run.json          the resolved recipe; model, classes, input shape
    pretrain/    compress/  retrain/     metrics.jsonl, checkpoint.pt, done.json
                 compress/updates.jsonl  one line per solver update
    hard_prune.json  pruned.safetensors  retrain-free accuracy; weights after Π_S
    masks.safetensors  model.safetensors  final masks and weights
    report.md  report.json  *.png

A stage is finished when its ``done.json`` exists; ``resume=True`` skips
finished stages and continues an unfinished one from its last epoch.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dualprune import data, models, solvers
from dualprune.constraints.coupled import Coupled
from dualprune.errors import CheckpointError, ConfigError
from dualprune.masks.masks import Masks
from dualprune.models import pretrained
from dualprune.pipeline.hwstage import hardware_summary
from dualprune.pipeline.recipe import Recipe, recipe_yaml
from dualprune.pipeline.runreport import report_run
from dualprune.plan import prunable_layers, weight_key
from dualprune.train import checkpoint as ckpt_io
from dualprune.train.config import TrainConfig
from dualprune.train.loop import evaluate, fit

__all__ = ["STAGE_FILES", "RunResult", "run"]

STAGE_FILES = (
    "pretrain",
    "compress",
    "retrain",
    "hard_prune.json",
    "pruned.safetensors",
    "masks.safetensors",
    "model.safetensors",
    "hard_prune_masks.safetensors",
    "final.json",
    "pretrained.json",
    "run.json",
    "report.md",
    "report.json",
    "hardware.json",
    "bench.json",
)


@dataclass
class RunResult:
    """What :func:`run` produced."""

    out: Path
    test_acc: float
    test_loss: float
    stages: dict[str, dict[str, float]]
    table: str
    report: Path


def run(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> RunResult:
    """Run the recipe's stages and write everything into ``recipe.out``.

    Args:
        recipe: a validated recipe (:func:`load_recipe`).
        resume: skip finished stages and continue the unfinished one.
        overwrite: replace an earlier run in ``recipe.out`` (without it or ``resume``,
            a directory holding a run is refused).
        progress: progress bars (None: only on a terminal).

    Raises:
        DualpruneError: bad names, missing data, unwritable output, bad checkpoint, an
            earlier run in the way.
    """
    earlier = [n for n in STAGE_FILES if (Path(recipe.out) / n).exists()]
    if earlier and not (resume or overwrite):
        raise ConfigError(
            f"'{recipe.out}' holds an earlier run ({earlier[0]}, ...); pass --resume to "
            "continue it or --overwrite to replace it, or pick another --out"
        )
    # everything that can fail is checked before the output directory is touched
    ds, model, test_loader, x, coupled = _prepare(recipe)
    num_classes = recipe.num_classes or ds.num_classes
    out = ckpt_io.ensure_writable(recipe.out)
    if not resume:
        _clean(out)
    (out / "recipe.yaml").write_text(recipe_yaml(recipe))
    info = {
        "model": recipe.model,
        "num_classes": num_classes,
        "dataset": ds.name,
        "input_shape": list(x.shape[1:]),
    }
    (out / "run.json").write_text(json.dumps(info, indent=1) + "\n")
    meta = {"model_name": recipe.model, "num_classes": num_classes, "dataset": ds.name}
    stages: dict[str, dict[str, float]] = {}

    def stage(name: str, cfg: TrainConfig, solver: solvers.Solver | None = None) -> None:
        result = _train_stage(
            out / name, model, ds, cfg, meta, resume=resume, progress=progress, solver=solver
        )
        if result is not None:
            stages[name] = result

    if recipe.pretrained:  # loaded by _prepare
        stages["pretrained"] = _eval(model, test_loader)
        (out / "pretrained.json").write_text(json.dumps(stages["pretrained"]) + "\n")
    if recipe.pretrain is not None:
        stage("pretrain", recipe.pretrain)
    masks = None
    dense = copy.deepcopy(model) if recipe.hardware is not None else None
    if recipe.solver is not None and recipe.compress is not None:
        solver = _make_solver(recipe, model, ds, coupled)
        stage("compress", recipe.compress, solver)
        masks, stages["hard_prune"] = _hard_prune(out, model, solver, test_loader, resume)
        if recipe.retrain is not None and recipe.retrain.epochs > 0:
            masks.attach(model)
            try:
                stage("retrain", recipe.retrain)
            finally:
                masks.detach(model)
    final = _eval(model, test_loader)
    stages["final"] = final
    (out / "final.json").write_text(json.dumps(final) + "\n")
    save_file(_plain_state(model), str(out / "model.safetensors"), metadata=_str(meta))
    if masks is not None:
        masks.save(out / "masks.safetensors")
    if recipe.hardware is not None:
        hw, text = hardware_summary(
            model.eval(), recipe.hardware, x[:1], masks=masks, baseline=dense,
            loader=test_loader, progress=progress,
        )  # fmt: skip
        print(text)
        (out / "hardware.json").write_text(json.dumps(hw, indent=1) + "\n")
    report_path, table = report_run(out)
    return RunResult(out, final["test_acc"], final["test_loss"], stages, table, report_path)


def _prepare(
    recipe: Recipe,
) -> tuple[data.Dataset, nn.Module, data.Loader, torch.Tensor, Coupled | None]:
    """Data, model (pretrained weights loaded), test loader, an input batch, coupled set.

    Everything a recipe can get wrong surfaces here, before anything is written:
    the data location, the model name and its fit to the data, the plan against
    the model, the solver's settings (a solver is built on a copy and dropped),
    and the pretrained weights.
    """
    ds = data.load(recipe.dataset, root=recipe.data_dir)
    num_classes = recipe.num_classes or ds.num_classes
    seed = next((c.seed for c in (recipe.pretrain, recipe.compress) if c is not None), 0)
    torch.manual_seed(seed)
    model = models.create(recipe.model, num_classes=num_classes)
    test_loader = _test_loader(ds, recipe.pretrain or recipe.compress or TrainConfig())
    x = next(iter(test_loader))[0]
    check_fits(model, recipe.model, x, ds)
    coupled = recipe.build_coupled(model, x[:2])  # the groups, found before any training
    if recipe.solver is not None:
        with torch.random.fork_rng(devices=[]):
            _make_solver(recipe, copy.deepcopy(model), ds, coupled)
    if recipe.pretrained:
        load_pretrained(model, recipe.pretrained, recipe.model)
    return ds, model, test_loader, x, coupled


# ---- stages ---------------------------------------------------------------------------


def _train_stage(
    where: Path,
    model: nn.Module,
    ds: data.Dataset,
    cfg: TrainConfig,
    meta: dict[str, Any],
    *,
    resume: bool,
    progress: bool | None,
    solver: solvers.Solver | None,
) -> dict[str, float] | None:
    """Train one stage (or, when resuming a finished one, load its end state)."""
    if cfg.epochs == 0:
        return None
    done = where / "done.json"
    if resume and done.exists():
        state = ckpt_io.load(where / "checkpoint.pt")
        ckpt_io.load_model_state(model, state, model_name=meta["model_name"], path=where)
        if solver is not None:
            solver.load_state_dict(state["solver"])
        return dict(json.loads(done.read_text()))
    train_x, train_y = subset(ds.train_x, ds.train_y, cfg.train_samples)
    train_loader = data.Loader(
        train_x,
        train_y,
        batch_size=cfg.batch_size,
        mean=ds.mean,
        std=ds.std,
        shuffle=True,
        seed=cfg.seed,
        **augmentation(cfg, ds),
    )
    test_loader = _test_loader(ds, cfg)
    print(f"== {where.name}: {cfg.epochs} epoch(s)" + (f", {solver!r}" if solver else ""))
    history = fit(
        model,
        train_loader,
        test_loader,
        cfg,
        where,
        meta=meta,
        resume=resume,
        progress=progress,
        solver=solver,
    )
    last = history[-1] if history else dict(ckpt_io.load(where / "checkpoint.pt")["metrics"])
    result = {"test_acc": last["test_acc"], "test_loss": last["test_loss"]}
    done.write_text(json.dumps(result) + "\n")
    return result


def _make_solver(
    recipe: Recipe, model: nn.Module, ds: data.Dataset, coupled: Coupled | None
) -> solvers.Solver:
    """The recipe's solver, told how many Z/dual steps the compress stage will run."""
    assert recipe.solver is not None and recipe.compress is not None
    plan = recipe.build_plan()
    assert plan is not None
    solver = solvers.create(
        recipe.solver.name, model, plan, coupled=coupled, **recipe.solver.options()
    )
    cfg = recipe.compress
    n = min(cfg.train_samples or len(ds.train_y), len(ds.train_y))
    solver.expect_updates(solver.cadence.updates(cfg.epochs, -(-n // cfg.batch_size)))
    return solver


def _hard_prune(
    out: Path, model: nn.Module, solver: solvers.Solver, test_loader: data.Loader, resume: bool
) -> tuple[Masks, dict[str, float]]:
    """W ← Π_S(W), masks fixed; evaluate (retrain-free). Resumes from its files."""
    result_path, weights_path = out / "hard_prune.json", out / "pruned.safetensors"
    masks_path = out / "hard_prune_masks.safetensors"
    if resume and result_path.exists() and weights_path.exists() and masks_path.exists():
        model.load_state_dict(load_file(str(weights_path)))
        return Masks.load(masks_path), dict(json.loads(result_path.read_text()))
    masks = solver.hard_prune()
    result = _eval(model, test_loader)
    weights = [weight_key(n) for n in prunable_layers(model)]
    kept = [masks[n] for n in weights if n in masks]  # conv/linear weights, not BatchNorm
    pruned = sum(int((~m).sum()) for m in kept) / max(sum(m.numel() for m in kept), 1)
    print(
        f"== hard prune: test acc {100 * result['test_acc']:.2f}% "
        f"(loss {result['test_loss']:.4f}), retrain-free; "
        f"sparsity {100 * pruned:.2f}% of constrained weights"
    )
    save_file(_plain_state(model), str(weights_path))
    masks.save(masks_path)
    result_path.write_text(json.dumps(result) + "\n")
    return masks, result


# ---- helpers ----------------------------------------------------------------------------


def _eval(model: nn.Module, loader: data.Loader) -> dict[str, float]:
    r = evaluate(model, loader)
    return {"test_acc": r["acc"], "test_loss": r["loss"]}


def subset(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random subset of n samples (all when n is None), the same in every run.

    Random rather than the first n: image folders list their samples class by
    class, so the first n would hold one or two classes only.
    """
    if n is None or n >= len(y):
        return x, y
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n]
    return x[pick], y[pick]


def augmentation(cfg: TrainConfig, ds: data.Dataset) -> dict[str, Any]:
    """Loader arguments (augment, pad, flip) for ``cfg.augment`` on data set ``ds``."""
    mode = cfg.augment
    if mode == "auto":
        mode = "shift_flip" if ds.augment else "none"
    return {"augment": mode != "none", "pad": cfg.pad, "flip": mode == "shift_flip"}


def _test_loader(ds: data.Dataset, cfg: TrainConfig) -> data.Loader:
    test_x, test_y = subset(ds.test_x, ds.test_y, cfg.test_samples)
    return data.Loader(
        test_x,
        test_y,
        batch_size=cfg.eval_batch_size,
        mean=ds.mean,
        std=ds.std,
        shuffle=False,
        augment=False,
    )


def load_pretrained(model: nn.Module, path: str, name: str) -> None:
    """Load ``zoo:<name>`` weights, a ``checkpoint.pt`` (or run dir) or a ``model.safetensors``.

    Raises:
        CheckpointError, UnknownNameError: a missing, damaged or mismatched source.
    """
    if path.startswith(pretrained.PREFIX):
        item = pretrained.entry(path)
        ckpt_io.load_model_state(
            model,
            {"model": pretrained.state_dict(path), "model_name": item.model},
            model_name=name,
            path=path,
        )
        return
    p = Path(path)
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise CheckpointError(f"pretrained weights '{p}' do not exist")
        try:
            state = load_file(str(p))
        except Exception as err:
            raise CheckpointError(f"'{p}' is not a readable safetensors file ({err})") from None
        ckpt_io.load_model_state(
            model, {"model": state, "model_name": name}, model_name=name, path=p
        )
    else:
        ckpt_io.load_model_state(model, ckpt_io.load(p), model_name=name, path=p)


def check_fits(model: nn.Module, name: str, x: torch.Tensor, ds: data.Dataset) -> None:
    """One-line errors when a model cannot take a data set's images or labels."""
    try:
        with torch.no_grad():
            classes = model.eval()(x[:1]).shape[-1]
    except RuntimeError:
        raise ConfigError(
            f"model '{name}' cannot take {ds.name} images of shape {tuple(x.shape[1:])}; "
            f"pick a model for {ds.in_channels}-channel {ds.image_size[0]}×{ds.image_size[1]} "
            "inputs (see 'dualprune models')"
        ) from None
    finally:
        model.train()
    if classes != ds.num_classes:
        raise ConfigError(
            f"model '{name}' has {classes} outputs but {ds.name} has {ds.num_classes} classes"
        )


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _str(meta: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in meta.items()}


def _clean(out: Path) -> None:
    """Remove what an earlier run of the pipeline wrote (only its own files)."""
    for name in STAGE_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for png in out.glob("*.png"):
        png.unlink()
