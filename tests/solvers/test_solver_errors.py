"""Every error a user can cause through a solver: a DualpruneError whose message names the value."""

from __future__ import annotations

import math

import pytest
from solver_helpers import Net, make
from torch import nn

from dualprune import Plan
from dualprune.constraints import Sparsity
from dualprune.errors import (
    CheckpointError,
    ConfigError,
    ConstraintError,
    DualpruneError,
    PlanError,
    UnknownNameError,
)
from dualprune.solvers import ADMM, SLR, SOLVERS, Cadence, Magnitude, RhoSchedule, create

PLAN = {"conv1": Sparsity(0.5), "fc1": Sparsity(0.75)}
NAN = math.nan


@pytest.mark.parametrize("cls", [ADMM, SLR])
@pytest.mark.parametrize(
    "rho,match",
    [
        (0, "rho=0 is not allowed"),
        (-1e-3, "rho=-0.001 is not allowed"),
        (NAN, "rho=nan is not allowed"),
        (True, "rho=True is not allowed"),
        ("0.1", "rho='0.1' is not allowed"),
        ({"conv1": 0.1, "*": 0.0}, r"rho\['\*'\]=0.0 is not allowed"),
        ({"re:conv[": 0.1, "*": 0.1}, "rho pattern 're:conv\\[' is not a valid regex"),
        (
            {"conv1": 0.1, "fc9*": 0.2, "*": 0.1},
            "rho pattern 'fc9\\*' matches no constrained layer",
        ),
        ({"conv1": 0.1}, "rho: layer 'fc1' matches no pattern .*add '\\*' as the last pattern"),
        ({"conv2": 0.1, "fc1": 0.1}, "layer 'conv1' matches no pattern"),
    ],
)
def test_bad_rho(cls, rho, match):
    with pytest.raises(ConfigError, match=match):
        cls(make(Net), PLAN, rho=rho)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"rho_growth": 0.9}, "rho_growth=0.9"),
        ({"rho_growth": NAN}, "rho_growth=nan"),
        ({"rho_warmup": -1}, "rho_warmup=-1"),
        ({"rho_warmup": 2.5}, "rho_warmup=2.5"),
        ({"rho_warmup_from": 0.0}, "rho_warmup_from=0.0"),
        ({"rho_warmup_from": 1.5}, "rho_warmup_from=1.5"),
        ({"rho_max": 0.0}, "rho_max=0.0"),
        ({"rho_max": -2.0}, "rho_max=-2.0"),
    ],
)
@pytest.mark.parametrize("name", ["admm", "slr"])
def test_bad_rho_schedule(name, options, match):
    with pytest.raises(ConfigError, match=match):
        create(name, make(Net), PLAN, **options)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"M": 1.0}, "M=1.0 is not allowed; use a float > 1"),
        ({"M": 0.5}, "M=0.5"),
        ({"M": NAN}, "M=nan"),
        ({"r": 0.0}, r"r=0.0 is not allowed; use a float in \(0, 1\)"),
        ({"r": 1.0}, "r=1.0"),
        ({"r": -0.1}, "r=-0.1"),
        ({"s0": 0.0}, "s0=0.0 is not allowed; use a float > 0"),
        ({"s0": -0.01}, "s0=-0.01"),
        ({"s0": NAN}, "s0=nan"),
    ],
)
def test_bad_slr_settings(options, match):
    with pytest.raises(ConfigError, match=match):
        SLR(make(Net), PLAN, **options)


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize(
    "options,match",
    [
        ({"update_every": 0}, "update_every=0 is not allowed; use an int >= 1"),
        ({"update_every": -2}, "update_every=-2"),
        ({"update_every": 1.5}, "update_every=1.5"),
        ({"update_every": True}, "update_every=True"),
        ({"update_every": "2"}, "update_every='2'"),
        ({"update_every_batches": 0}, "update_every_batches=0"),
        ({"update_every_batches": 2.5}, "update_every_batches=2.5"),
    ],
)
def test_bad_cadence(name, options, match):
    with pytest.raises(ConfigError, match=match):
        create(name, make(Net), PLAN, **options)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"schedule": "linear"}, "schedule='linear' is not allowed; use one of oneshot"),
        ({"steps": 0}, "steps=0 is not allowed"),
        ({"steps": 2.0}, "steps=2.0"),
        ({"start": -1}, "start=-1 is not allowed"),
    ],
)
def test_bad_magnitude_settings(options, match):
    with pytest.raises(ConfigError, match=match):
        Magnitude(make(Net), PLAN, **options)


def test_unknown_solver_name():
    with pytest.raises(UnknownNameError, match="unknown solver 'adm' \\(did you mean 'admm'\\?\\)"):
        create("adm", make(Net), PLAN)
    with pytest.raises(UnknownNameError, match="known: admm, magnitude, slr"):
        create("sgd", make(Net), PLAN)
    with pytest.raises(ConfigError, match="solver 'admm' has no setting 'M'; settings: rho, "):
        create("admm", make(Net), PLAN, M=300)


def test_slr_update_without_any_loss():
    solver = SLR(make(Net), PLAN)
    for _ in range(3):
        solver.step()  # no loss given
    with pytest.raises(ConfigError, match=r"step\(loss\).*update\(train_loss=\.\.\.\)"):
        solver.update()
    assert solver.updates == 0 and solver.history == []
    batches = SLR(make(Net), PLAN, cadence=Cadence(every_batches=2))
    batches.step()
    with pytest.raises(ConfigError, match="SLR needs the training loss"):
        batches.step()


@pytest.mark.parametrize(
    "plan,error,match",
    [
        ({"conv3": Sparsity(0.5)}, PlanError, "layer 'conv3' is not a prunable"),
        ({"conv1": 0.5}, PlanError, "0.5 is not a Constraint"),
        ({}, PlanError, "the plan constrains no layer"),
        (Plan(exclude="*", default=Sparsity(0.5)), PlanError, "constrains no layer"),
        (Plan({"conv9": Sparsity(0.5)}), PlanError, "'conv9' matches no"),
        ([Sparsity(0.5)], PlanError, "plan must be a Plan or a dict"),
        ({"fc1": Sparsity(0.5, "nm", m=3)}, ConstraintError, "'fc1.weight'.*m=3"),
    ],
)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_plan_that_does_not_fit(name, plan, error, match):
    with pytest.raises(error, match=match):
        create(name, make(Net), plan)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_state_from_another_solver_kind(name):
    other = next(n for n in SOLVERS if n != name)
    state = create(other, make(Net), PLAN).state_dict()
    with pytest.raises(CheckpointError, match=f"solver state is from '{other}', not '{name}'"):
        create(name, make(Net), PLAN).load_state_dict(state)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_state_from_another_plan(name):
    state = create(name, make(Net), PLAN).state_dict()
    for plan in (
        {"conv1": Sparsity(0.5)},  # fewer layers
        {**PLAN, "fc2": Sparsity(0.5)},  # more layers
        {"conv1": Sparsity(0.5), "fc1": Sparsity(0.9)},  # same layers, another ratio
        {"conv1": Sparsity(0.5), "fc1": Sparsity(0.75, "filter")},  # another structure
    ):
        solver = create(name, make(Net), plan)
        with pytest.raises(CheckpointError, match="resume with the same plan"):
            solver.load_state_dict(state)
        assert solver.updates == 0


@pytest.mark.parametrize("name", list(SOLVERS))
def test_state_from_another_model(name):
    state = create(name, make(Net), PLAN).state_dict()
    model = make(Net)
    model.conv1 = nn.Conv2d(2, 6, 3, padding=1)  # same names, other shape
    with pytest.raises(CheckpointError, match="'conv1.weight' has shape \\(4, 2, 3, 3\\)"):
        create(name, model, PLAN).load_state_dict(state)


def test_every_error_is_a_dualprune_error():
    for error in (CheckpointError, ConfigError, ConstraintError, PlanError, UnknownNameError):
        assert issubclass(error, DualpruneError)
    with pytest.raises(ConfigError):
        RhoSchedule(growth=0.5)
