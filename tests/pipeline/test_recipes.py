"""Recipes: every shipped recipe validates, and every mistake gives one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dualprune.errors import ConfigError
from dualprune.pipeline import builtin_recipes, load_recipe, validate
from dualprune.pipeline.recipe import ROOT_RECIPES

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
