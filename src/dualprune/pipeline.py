"""Recipes and the stages they run.

A recipe (YAML) names a model, a data set and the settings of each stage.
Today the pipeline has one stage, ``train`` (train + evaluate + report);
pruning stages plug in after it. Everything a run writes goes into its
``out`` directory: ``recipe.yaml`` (the resolved recipe), ``metrics.jsonl``,
``checkpoint.pt``, ``model.safetensors``, ``report.md`` and ``report.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file

from dualprune import data, models
from dualprune.errors import ConfigError
from dualprune.metrics import layer_stats
from dualprune.report import layer_table, write_report
from dualprune.train import checkpoint as ckpt_io
from dualprune.train.config import TrainConfig, parse
from dualprune.train.loop import evaluate, fit

__all__ = ["DEFAULT_RECIPE", "Recipe", "RunResult", "builtin_recipes", "load_recipe", "run"]

DEFAULT_RECIPE = "lenet5-mnist"


class Recipe(BaseModel):
    """A whole run: what to train on what, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    dataset: str
    num_classes: int | None = Field(None, gt=0, description="default: the data set's")
    data_dir: str | None = None
    out: str = "runs/run"
    train: TrainConfig = TrainConfig()


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    files = resources.files("dualprune.recipes").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def load_recipe(source: str | os.PathLike[str] | None = None, **overrides: Any) -> Recipe:
    """Read a recipe from a YAML path or a built-in name, then apply ``overrides``.

    Overrides use dotted keys for stage settings, e.g. ``{"train.epochs": 2}``.

    Raises:
        ConfigError: the file is missing, not YAML, or has bad keys or values.
    """
    source = DEFAULT_RECIPE if source is None else source
    path = Path(source)
    if path.is_file():
        text, where = path.read_text(), str(path)
    elif str(source) in builtin_recipes():
        text = (resources.files("dualprune.recipes") / f"{source}.yaml").read_text()
        where = f"recipe '{source}'"
    else:
        raise ConfigError(
            f"recipe '{source}' is neither a file nor a built-in recipe "
            f"(built-in: {', '.join(builtin_recipes())})"
        )
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    for key, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse(Recipe, raw, where)


@dataclass
class RunResult:
    """What :func:`run` produced."""

    out: Path
    test_acc: float
    test_loss: float
    table: str
    report: Path


def run(recipe: Recipe, *, resume: bool = False, progress: bool | None = None) -> RunResult:
    """Run the recipe's stages and write everything into ``recipe.out``.

    Raises:
        DualpruneError: bad names, missing data, unwritable output, bad checkpoint.
    """
    cfg = recipe.train
    out = ckpt_io.ensure_writable(recipe.out)
    ds = data.load(recipe.dataset, root=recipe.data_dir)
    train_loader = data.Loader(
        ds.train_x[: cfg.train_samples],
        ds.train_y[: cfg.train_samples],
        batch_size=cfg.batch_size,
        mean=ds.mean,
        std=ds.std,
        shuffle=True,
        augment=ds.augment,
        seed=cfg.seed,
    )
    test_loader = data.Loader(
        ds.test_x[: cfg.test_samples],
        ds.test_y[: cfg.test_samples],
        batch_size=cfg.eval_batch_size,
        mean=ds.mean,
        std=ds.std,
        shuffle=False,
        augment=False,
    )
    torch.manual_seed(cfg.seed)
    model = models.create(recipe.model, num_classes=recipe.num_classes or ds.num_classes)
    _check_fits(model, recipe.model, test_loader, ds)
    (out / "recipe.yaml").write_text(
        yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    )
    meta = {
        "model_name": recipe.model,
        "num_classes": recipe.num_classes or ds.num_classes,
        "dataset": recipe.dataset,
    }
    history = fit(
        model, train_loader, test_loader, cfg, out, meta=meta, resume=resume, progress=progress
    )
    final = history[-1] if history else _last_metrics(out)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(out / "model.safetensors"),
        metadata={k: str(v) for k, v in meta.items()},
    )
    example = next(iter(test_loader))[0][:1]
    summary = {
        "model": recipe.model,
        "dataset": recipe.dataset,
        "epochs": cfg.epochs,
        "test accuracy": f"{100 * final['test_acc']:.2f}%",
        "test loss": f"{final['test_loss']:.4f}",
    }
    stats = layer_stats(model, example)
    report = write_report(out, stats, summary, title=f"{recipe.model} on {recipe.dataset}")
    table = layer_table(stats)
    return RunResult(out, final["test_acc"], final["test_loss"], table, report)


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    model_name: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Evaluate a checkpoint (file or run directory) on a data set's test split.

    Args:
        path: ``checkpoint.pt`` or the run directory holding it.
        dataset: data set to evaluate on (default: the one it was trained on).
        model_name: if given, the checkpoint must have been saved from this model.
        data_dir: data root (see :func:`dualprune.data.resolve_root`).
        batch_size: evaluation batch size.

    Raises:
        CheckpointError: unreadable checkpoint, or one saved from another model.
    """
    state = ckpt_io.load(path)
    saved_model = str(state.get("model_name"))
    name = model_name or saved_model
    _, test_loader, ds = data.loaders(
        dataset or str(state.get("dataset")), batch_size, root=data_dir, eval_batch_size=batch_size
    )
    model = models.create(name, num_classes=int(state.get("num_classes", ds.num_classes)))
    ckpt_io.load_model_state(model, state, model_name=name, path=path)
    _check_fits(model, name, test_loader, ds)
    result = evaluate(model, test_loader)
    example = next(iter(test_loader))[0][:1]
    return {
        "model": name,
        "dataset": ds.name,
        "epoch": int(state["epoch"]) + 1,
        **result,
        "table": layer_table(layer_stats(model, example)),
    }


def _check_fits(model: torch.nn.Module, name: str, loader: data.Loader, ds: data.Dataset) -> None:
    """One-line errors when a model cannot take a data set's images or labels."""
    x, _ = next(iter(loader))
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


def _last_metrics(out: Path) -> dict[str, Any]:
    state = ckpt_io.load(out / "checkpoint.pt")
    return dict(state["metrics"])
