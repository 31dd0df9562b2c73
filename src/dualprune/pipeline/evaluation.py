"""``dualprune eval``: evaluate a run's final model or any stage checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from dualprune import data, models
from dualprune.errors import CheckpointError
from dualprune.pipeline.runreport import load_run_model
from dualprune.pipeline.stages import check_fits
from dualprune.report.report import layer_table
from dualprune.size.metrics import layer_stats
from dualprune.train import checkpoint as ckpt_io
from dualprune.train.loop import evaluate

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    model_name: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Evaluate a run directory's final model, or a stage's ``checkpoint.pt``.

    Args:
        path: a run directory (its ``model.safetensors``), a stage directory, or a
            ``checkpoint.pt``.
        dataset: data set to evaluate on (default: the one it was trained on).
        model_name: if given, the weights must come from this model.
        data_dir: data root (see :func:`dualprune.data.resolve_root`).
        batch_size: evaluation batch size.

    Raises:
        CheckpointError: unreadable files, or weights saved from another model.
    """
    p = Path(path)
    model: nn.Module
    if p.is_dir() and (p / "run.json").is_file():
        model, info = load_run_model(p)
        name, saved_dataset, where = info["model"], info["dataset"], "final"
        if model_name is not None and model_name != name:
            raise CheckpointError(f"run '{p}' was saved from model '{name}', not '{model_name}'")
        _, test_loader, ds = data.loaders(
            dataset or saved_dataset, batch_size, root=data_dir, eval_batch_size=batch_size
        )
    else:
        state = ckpt_io.load(p)
        name = model_name or str(state.get("model_name"))
        _, test_loader, ds = data.loaders(
            dataset or str(state.get("dataset")),
            batch_size,
            root=data_dir,
            eval_batch_size=batch_size,
        )
        model = models.create(name, num_classes=int(state.get("num_classes", ds.num_classes)))
        ckpt_io.load_model_state(model, state, model_name=name, path=p)
        epoch = state.get("epoch")
        where = f"epoch {epoch + 1}" if isinstance(epoch, int) else "checkpoint"
    x = next(iter(test_loader))[0]
    check_fits(model, name, x, ds)
    result = evaluate(model, test_loader)
    return {
        "model": name,
        "dataset": ds.name,
        "where": where,
        **result,
        "table": layer_table(layer_stats(model, x[:1])),
    }
