"""Recipes: every shipped recipe validates, and every mistake gives one clear line."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Annotated

import pytest
import yaml
from annotated_types import Gt

from dualprune import models, solvers
from dualprune.errors import ConfigError
from dualprune.pipeline import builtin_recipes, load_recipe, validate
from dualprune.pipeline import recipe as recipe_module
from dualprune.pipeline.recipe import ROOT_RECIPES
from dualprune.solvers.settings import Cadence, Settings, checked

BASE = {
    "model": "lenet5",
    "dataset": "mnist",
    "pretrain": {"epochs": 1},
    "plan": {"layers": {"fc1": {"type": "sparsity", "ratio": 0.9}}},
    "solver": {"name": "slr"},
    "compress": {"epochs": 1},
}


def test_every_shipped_recipe_validates_and_builds_its_plan():
    names = builtin_recipes()
    assert {"quickstart", "lenet5-mnist-admm", "lenet5-mnist-slr", "lenet5-mnist-joint"} <= set(
        names
    )
    assert {"resnet20-cifar10-slr", "resnet20-cifar10-admm"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        if recipe.plan is not None:
            assert recipe.build_plan() is not None


def test_recipes_folder_at_the_root_is_the_shipped_one():
    root = Path(__file__).resolve().parents[2] / "recipes"  # what README commands name
    files = sorted(p.stem for p in root.glob("*.yaml"))
    assert files == builtin_recipes() == sorted(p.stem for p in ROOT_RECIPES.glob("*.yaml"))


def test_overrides_reach_nested_keys():
    r = load_recipe("quickstart", **{"compress.epochs": 1, "solver.rho": 0.5, "out": "x"})
    assert r.compress.epochs == 1 and r.solver.rho == 0.5 and r.out == "x"


def test_solver_defaults_per_name():
    r = validate(BASE)
    assert (r.solver.rho, r.solver.M, r.solver.r, r.solver.s0) == (0.1, 300, 0.1, 0.01)
    admm = validate({**BASE, "solver": {"name": "admm"}})
    assert admm.solver.rho == 1e-3 and admm.solver.rho_growth == 1.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"solver": {"name": "sgd"}}, "does not match any of the expected tags: 'admm', 'slr'"),
        ({"solver": {"rho": 0.1}}, "solver.name is missing; use one of admm, slr, magnitude"),
        ({"solver": {"name": "slr", "M": 0.5}}, "solver.slr.M: Input should be greater than 1"),
        ({"solver": {"name": "slr", "rhoo": 1}}, "solver.slr.rhoo: unknown key"),
        ({"solver": {"name": "magnitude", "schedule": "cubic"}}, "'oneshot', 'iterative'"),
        ({"compress": None}, "needs a 'compress' section"),
        ({"plan": None}, "a solver needs a plan"),
        ({"pretrain": None}, "nothing to compress"),
        ({"retrain": {"epochs": -1}}, "retrain.epochs: Input should be greater than or equal to 0"),
        ({"colour": 1}, "colour: unknown key"),
        ({"plan": {"layers": {"fc1": {"type": "sparsity", "ratio": 1.5}}}}, "plan:"),
        ({"plan": {"layers": {"fc1": {"type": "sparsity", "structure": "diag"}}}}, "plan:"),
    ],
)
def test_recipe_errors_are_one_line_and_name_the_key(change, expected):
    raw = {**BASE, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        validate(raw, "r.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("r.yaml: ")
    assert expected in message, message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a built-in recipe"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [lenet5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_recipe(bad)


def test_override_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="'model' is not a section"):
        load_recipe("quickstart", **{"model.x": 1})


def test_a_new_solver_is_a_subclass_and_one_table_line(monkeypatch):
    """The recipe schema comes from the solvers' signatures: no edit to pipeline/."""

    class Shrink(solvers.Solver):
        name = "shrink"

        @checked
        def __init__(
            self,
            model,
            plan=None,
            *,
            coupled=None,
            strength: Annotated[float, Gt(0)] = 1.0,
            cadence: Cadence = Cadence(),
        ) -> None:
            super().__init__(model, plan, coupled=coupled, cadence=cadence)
            self.strength = strength

        def _update(self, train_loss):
            return {}

    monkeypatch.setitem(solvers.SOLVERS, "shrink", Shrink)
    try:
        fresh = importlib.reload(recipe_module)
        raw = {**BASE, "solver": {"name": "shrink", "strength": 2.5, "update_every": 2}}
        recipe = fresh.validate(raw)
        model = models.create("lenet5")
        solver = solvers.create("shrink", model, recipe.build_plan(), **recipe.solver.options())
        assert isinstance(solver, Shrink) and solver.strength == 2.5
        assert solver.cadence == Cadence(every=2)
        with pytest.raises(ConfigError, match="strength"):
            fresh.validate({**BASE, "solver": {"name": "shrink", "strength": -1.0}})
        with pytest.raises(ConfigError, match="strength=-1.0 is not allowed; use a float > 0"):
            Shrink(model, recipe.build_plan(), strength=-1.0)
    finally:
        monkeypatch.undo()
        importlib.reload(recipe_module)


def test_solver_settings_have_one_source():
    """Every recipe default is the constructor's default (or its settings object's)."""
    for cls in solvers.SOLVERS.values():
        fields = solvers.options_model(cls).model_fields
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name in ("self", "model", "plan", "coupled"):
                continue
            if isinstance(p.default, Settings):
                for f in dataclasses.fields(p.default):
                    key = p.default.PREFIX + f.name
                    assert fields[key].default == getattr(p.default, f.name), (cls, key)
            else:
                assert fields[p.name].default == p.default, (cls, p.name)
