"""Recipes: one YAML file that decides a whole run, validated with one-line errors.

A recipe names the model and data set and the settings of each stage::

    model: lenet5
    dataset: mnist
    out: runs/quickstart
    pretrained: null            # or a checkpoint.pt / model.safetensors / zoo:resnet20-cifar10
    pretrain: {epochs: 4, lr: 0.01, ...}          # TrainConfig; omit to skip
    plan:                                          # dualprune.Plan.from_dict form
      layers: {"conv*": {type: sparsity, ratio: 0.8}}
      coupled: {ratio: 0.5, multiple_of: 8, ignore: [fc]}   # optional: coupled channels
    solver: {name: slr, rho: 0.1, update_every: 1}  # any key of dualprune.solvers.SOLVERS
    compress: {epochs: 4, lr: 0.01, ...}          # training under the solver
    retrain: {epochs: 2, ...}                     # masked retraining (0: none)
    hardware: {crossbar: 128x128, weight_bits: 4, noise: "sigma=0.02", chips: 10}

Stages without settings are skipped, so ``model + dataset + pretrain`` is a
plain training run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from torch import nn

from dualprune import solvers
from dualprune.constraints.coupled import Coupled
from dualprune.errors import (
    ConfigError,
    ConstraintError,
    PlanError,
    UnknownNameError,
    did_you_mean,
)
from dualprune.graph import coupled_from_model
from dualprune.models import pretrained
from dualprune.pipeline.hwstage import HardwareOptions
from dualprune.plan import Plan
from dualprune.train.config import TrainConfig, parse

__all__ = [
    "DEFAULT_RECIPE",
    "CoupledOptions",
    "PlanSection",
    "Recipe",
    "SolverOptions",
    "builtin_recipes",
    "load_recipe",
    "read_recipe_text",
    "recipe_mapping",
]

DEFAULT_RECIPE = "quickstart"
PLAN_KEYS = ("layers", "exclude", "default", "coupled")  # the keys of a recipe's plan:
ROOT_RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # also <repo>/recipes

if TYPE_CHECKING:
    SolverOptions = solvers.settings.SolverOptions
else:
    #: One derived model per solver (its constructor's settings, flat), told apart by ``name``.
    SolverOptions = Annotated[
        Union[tuple(solvers.options_model(cls) for cls in solvers.SOLVERS.values())],  # noqa: UP007
        Field(discriminator="name"),
    ]

Role = Literal["weight", "bias", "norm"]


def _weight_role() -> list[Role]:
    return ["weight"]


class CoupledOptions(BaseModel):
    """``plan.coupled``: coupled channels as one set (:class:`dualprune.Coupled`).

    The groups are found on the model with an example input of the data set's
    shape (:func:`dualprune.graph.channel_groups`) before any training.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    ratio: float = Field(ge=0, lt=1, description="fraction of CHANNELS removed in every group")
    multiple_of: int = Field(1, ge=1, description="kept channels: a multiple of this, or all")
    ignore: list[str] = Field(
        default_factory=list, description="module globs whose output channels stay"
    )
    chains: bool = Field(
        True, description="include one-producer/one-reader chains (false: leave them to layers)"
    )
    roles: list[Role] = Field(
        default_factory=_weight_role, description="tensors whose norms choose the channels"
    )

    def build(self, model: nn.Module, example_input: torch.Tensor) -> Coupled:
        """The :class:`~dualprune.Coupled` set of ``model`` (its groups found now)."""
        return coupled_from_model(
            model,
            example_input,
            self.ratio,
            ignore=self.ignore,
            chains=self.chains,
            multiple_of=self.multiple_of,
            roles=self.roles,
        )


class PlanSection(BaseModel):
    """The ``plan:`` section: the :meth:`Plan.from_dict` keys plus optional ``coupled``.

    ``layers``, ``exclude`` and ``default`` are passed to :meth:`Plan.from_dict`
    (which checks them); ``coupled`` is validated here.
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    coupled: CoupledOptions | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The plan keys in their order, then ``coupled`` (left out when absent)."""
        data = handler(self)
        coupled = data.pop("coupled", None)
        return data if coupled is None else {**data, "coupled": coupled}

    def plan_dict(self) -> dict[str, Any]:
        """The keys :meth:`Plan.from_dict` reads (everything but ``coupled``)."""
        return dict(self.model_extra or {})


class Recipe(BaseModel):
    """A whole run: model, data, and the settings of each stage (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str
    dataset: str
    num_classes: int | None = Field(None, gt=0, description="default: the data set's")
    data_dir: str | None = None
    out: str = "runs/run"
    pretrained: str | None = Field(
        None, description="checkpoint, model.safetensors or zoo:<name> to start from"
    )
    pretrain: TrainConfig | None = None
    plan: PlanSection | None = None
    solver: SolverOptions | None = None
    compress: TrainConfig | None = None
    retrain: TrainConfig | None = None
    hardware: HardwareOptions | None = None

    def build_plan(self) -> Plan | None:
        """The recipe's :class:`Plan` (None without one)."""
        return None if self.plan is None else Plan.from_dict(self.plan.plan_dict())

    def build_coupled(self, model: nn.Module, example_input: torch.Tensor) -> Coupled | None:
        """The recipe's coupled set for ``model`` (None without ``plan.coupled``).

        The random number generator is left as it was (tracing runs the model once).

        Raises:
            ConfigError: an ``ignore`` glob matches no module, a group reaches a layer
                the masks cannot cut, or no group is left (one line, ``plan.coupled: ...``).
        """
        if self.plan is None or self.plan.coupled is None:
            return None
        try:
            with torch.random.fork_rng(devices=[]):
                return self.plan.coupled.build(model, example_input)
        except (ConstraintError, UnknownNameError) as err:
            raise ConfigError(f"plan.coupled: {err}") from None


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    files = resources.files("dualprune.recipes").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file.

    Raises:
        ConfigError: the file cannot be read or is not UTF-8 text (a binary file).
    """
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: not a recipe (not UTF-8 text; a YAML file is expected)"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None


def recipe_mapping(text: str, where: str) -> dict[str, Any]:
    """The mapping a recipe's YAML text holds (an empty text is an empty mapping).

    Raises:
        ConfigError: the text is not YAML, is nested too deeply to read, or holds
            something other than a mapping.
    """
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{where}: not a recipe (lists or mappings nested too deeply)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    return raw


def load_recipe(
    source: str | os.PathLike[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Recipe:
    """Read a recipe from a YAML path or a built-in name, then apply overrides.

    Args:
        source: a YAML file or a built-in recipe name (default: quickstart).
        settings: dotted keys set verbatim, e.g. ``{"compress.epochs": 2,
            "solver.rho": 0.01, "pretrain": None}`` (None removes a stage).
        **overrides: the same, but None values are ignored (for optional options).

    Raises:
        ConfigError: the file is missing, not YAML, or has bad keys or values (one
            line naming the key and what is allowed).
    """
    source = DEFAULT_RECIPE if source is None else source
    path = Path(source)
    if path.is_file():
        text, where = read_recipe_text(path), str(path)
    elif str(source) in builtin_recipes():
        text = (resources.files("dualprune.recipes") / f"{source}.yaml").read_text()
        where = f"recipe '{source}'"
    else:
        raise ConfigError(
            f"recipe '{source}' is neither a file nor a built-in recipe "
            f"(built-in: {', '.join(builtin_recipes())})"
        )
    raw = recipe_mapping(text, where)
    merged = {k: v for k, v in overrides.items() if v is not None} | dict(settings or {})
    for key, value in merged.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section of the recipe")
            node = child
        node[leaf] = value
    return validate(raw, where)


def validate(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    """Validate a recipe mapping: keys, values, and how the stages fit together.

    Raises:
        ConfigError: one line naming the bad key and what is allowed.
    """
    if isinstance(raw.get("solver"), dict) and "name" not in raw["solver"]:
        raise ConfigError(
            f"{where}: solver.name is missing; use one of {', '.join(solvers.SOLVERS)}"
        )
    if isinstance(raw.get("plan"), dict):
        for key in raw["plan"]:
            if key not in PLAN_KEYS:
                raise ConfigError(
                    f"{where}: plan.{key}: unknown key{did_you_mean(str(key), PLAN_KEYS)}"
                )
    recipe: Recipe = parse(Recipe, raw, where)
    if (recipe.plan is None) != (recipe.solver is None):
        have, need = ("plan", "solver") if recipe.solver is None else ("solver", "plan")
        raise ConfigError(f"{where}: a {have} needs a {need}; give both or neither")
    if recipe.solver is not None and recipe.compress is None:
        raise ConfigError(
            f"{where}: solver '{recipe.solver.name}' needs a 'compress' section "
            "(the training it runs under, e.g. compress: {epochs: 4})"
        )
    if recipe.solver is None and (recipe.compress is not None or recipe.retrain is not None):
        raise ConfigError(f"{where}: 'compress' and 'retrain' need a plan and a solver")
    if recipe.pretrain is None and recipe.pretrained is None and recipe.solver is not None:
        raise ConfigError(
            f"{where}: nothing to compress; give 'pretrain' settings or a 'pretrained' checkpoint"
        )
    if recipe.pretrain is None and recipe.pretrained is None and recipe.solver is None:
        raise ConfigError(f"{where}: the recipe has no stage; give at least 'pretrain'")
    if recipe.pretrained and recipe.pretrained.startswith(pretrained.PREFIX):
        try:
            item = pretrained.entry(recipe.pretrained)
        except UnknownNameError as err:
            raise ConfigError(f"{where}: pretrained: {err}") from None
        if item.model != recipe.model:
            raise ConfigError(
                f"{where}: pretrained: '{recipe.pretrained}' holds {item.model} weights, "
                f"but the recipe's model is '{recipe.model}'"
            )
    try:
        recipe.build_plan()
    except (PlanError, ConstraintError, UnknownNameError) as err:
        raise ConfigError(f"{where}: plan: {err}") from None
    if recipe.hardware is not None:
        try:
            recipe.hardware.spec()
            recipe.hardware.device_noise()
            from dualprune.hardware import get_profile

            get_profile(recipe.hardware.profile)
        except (ConfigError, UnknownNameError) as err:
            raise ConfigError(f"{where}: hardware: {err}") from None
    return recipe


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as YAML, every default filled in (what a run directory keeps)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
