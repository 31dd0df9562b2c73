"""Load what a run left behind — model, constraints, masks — from a run directory or checkpoint.

The deployment commands (``dualprune compact``, ``bench``, ``export``, ``hw``)
accept a run directory written by ``dualprune run`` or any ``checkpoint.pt``
(or a stage directory holding one); this module turns either into one
:class:`Artifact`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dualprune import models
from dualprune.constraints import Constraint
from dualprune.errors import CheckpointError
from dualprune.masks.masks import Masks
from dualprune.pipeline.runreport import load_run_model
from dualprune.train import checkpoint as ckpt_io

__all__ = ["Artifact", "load_artifact", "test_loader"]


@dataclass
class Artifact:
    """A model with what is known about its compression.

    Attributes:
        model: The model in eval mode (weights as saved: zeros where pruned).
        name: Its zoo name.
        num_classes: Classes of its head.
        input_shape: One sample's shape (C, H, W).
        constraints: Layer name → constraint of the run's plan ({} for a bare checkpoint).
        masks: The run's masks (``masks.safetensors``) or None.
        dataset: The data set it was trained on, when known.
        source: The path it was loaded from.
        run_dir: The run directory, or None for a bare checkpoint.
    """

    model: nn.Module
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    constraints: dict[str, Constraint] = field(default_factory=dict)
    masks: Masks | None = None
    dataset: str | None = None
    source: Path = Path(".")
    run_dir: Path | None = None
    recipe: Any = None

    def dense_model(self) -> nn.Module | None:
        """The model before compression: the run's pretrain stage or its ``pretrained``.

        None for a bare checkpoint, or a run that kept neither.
        """
        if self.run_dir is None:
            return None
        model = models.create(self.name, num_classes=self.num_classes)
        pre = self.run_dir / "pretrain" / "checkpoint.pt"
        if pre.is_file():
            state = ckpt_io.load(pre)
            ckpt_io.load_model_state(model, state, model_name=self.name, path=pre)
            return model.eval()
        if self.recipe is not None and self.recipe.pretrained:
            from dualprune.pipeline.stages import load_pretrained

            load_pretrained(model, self.recipe.pretrained, self.name)
            return model.eval()
        return None

    def example_input(self, batch: int = 1) -> Tensor:
        """A zero input batch of ``batch`` samples (shape-only uses: tracing, MACs)."""
        return torch.zeros(batch, *self.input_shape)

    def random_input(self, batch: int = 1, seed: int = 0) -> Tensor:
        """A seeded standard-normal input batch (equality checks, timing)."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, *self.input_shape, generator=g)


def _run_artifact(out: Path) -> Artifact:
    from dualprune.pipeline.recipe import read_recipe_text, recipe_mapping, validate

    model, info = load_run_model(out)
    constraints: dict[str, Constraint] = {}
    recipe = None
    recipe_file = out / "recipe.yaml"
    if recipe_file.is_file():
        raw = recipe_mapping(read_recipe_text(recipe_file), str(recipe_file))
        recipe = validate(raw, str(recipe_file))
        plan = recipe.build_plan()
        constraints = plan.resolve(model) if plan is not None else {}
    masks = Masks.load(out / "masks.safetensors") if (out / "masks.safetensors").is_file() else None
    return Artifact(
        model=model,
        name=str(info["model"]),
        num_classes=int(info["num_classes"]),
        input_shape=tuple(int(s) for s in info["input_shape"]),
        constraints=constraints,
        masks=masks,
        dataset=info.get("dataset"),
        source=out,
        run_dir=out,
        recipe=recipe,
    )


def load_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Load a run directory, a stage directory or a ``checkpoint.pt``.

    A run directory (``run.json`` + ``model.safetensors``) gives the final model,
    the plan's constraints and the masks; a checkpoint gives the model alone.

    Raises:
        CheckpointError: the path is neither, or its files are corrupt.
    """
    p = Path(path)
    if p.is_dir() and (p / "run.json").is_file():
        return _run_artifact(p)
    if p.is_dir() and not (p / "checkpoint.pt").is_file():
        raise CheckpointError(
            f"'{p}' is neither a run directory (run.json) nor holds a checkpoint.pt"
        )
    state: dict[str, Any] = ckpt_io.load(p)
    name = state.get("model_name")
    if not name:
        raise CheckpointError(f"checkpoint '{p}' does not name its model")
    num_classes = int(state.get("num_classes") or 10)
    model = models.create(str(name), num_classes=num_classes)
    ckpt_io.load_model_state(model, state, model_name=str(name), path=p)
    return Artifact(
        model=model.eval(),
        name=str(name),
        num_classes=num_classes,
        input_shape=tuple(models.spec(str(name)).input_shape),
        dataset=state.get("dataset"),
        source=p,
    )


def test_loader(
    dataset: str, root: str | None = None, samples: int | None = None, batch_size: int = 1000
) -> Any:
    """The test loader of ``dataset`` (a fixed random subset of ``samples`` if given)."""
    from dualprune import data
    from dualprune.pipeline.stages import subset

    ds = data.load(dataset, root=root)
    x, y = subset(ds.test_x, ds.test_y, samples)
    return data.Loader(
        x, y, batch_size=batch_size, mean=ds.mean, std=ds.std, shuffle=False, augment=False
    )
