"""A diverging run stops with one line, and nothing non-finite is saved; inf/nan are no settings."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import CFG, META, CrashingLoader, loaders, tiny_model

from dualprune.constraints import Sparsity
from dualprune.errors import ConfigError, DivergedError
from dualprune.solvers import create
from dualprune.train.config import TrainConfig, parse
from dualprune.train.loop import fit


def test_a_huge_learning_rate_stops_the_stage_before_its_checkpoint(tmp_path):
    train, test = loaders()
    model = tiny_model()
    cfg = CFG.model_copy(update={"lr": 1e12, "epochs": 2})
    with pytest.raises(DivergedError, match=r"^run: epoch 1, step \d+: the training loss is not"):
        fit(model, train, test, cfg, tmp_path / "run", meta=META, progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip()


class PoisonedLoader(CrashingLoader):
    """Yields one batch of NaN images in ``crash_epoch`` (a corrupt input, a blown-up layer)."""

    def __iter__(self):
        for i, (x, y) in enumerate(self.inner):
            yield (x * math.nan, y) if self.epoch == self.crash_epoch and i == 2 else (x, y)


def test_a_good_epoch_stays_resumable_when_a_later_one_diverges(tmp_path):
    train, test = loaders()
    with pytest.raises(DivergedError, match=r"^run: epoch 2, step 3: the training loss"):
        fit(tiny_model(), PoisonedLoader(train, crash_epoch=1), test, CFG, tmp_path / "run",
            meta=META, progress=False)  # fmt: skip
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # epoch 1 only
    train, test = loaders()
    history = fit(tiny_model(), train, test, CFG, tmp_path / "run", meta=META, progress=False,
                  resume=True)  # fmt: skip
    assert [r["epoch"] for r in history] == [2, 3]


def test_a_non_finite_weight_after_a_solver_update_is_caught(tmp_path):
    train, test = loaders()
    model = tiny_model()
    layer = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    solver = create("admm", model, {layer: Sparsity(0.5)})
    original = solver.update

    def blow_up(train_loss=None):
        record = original(train_loss)
        with torch.no_grad():
            next(iter(solver.weights.values())).fill_(math.nan)
        return record

    solver.update = blow_up  # type: ignore[method-assign]
    with pytest.raises(DivergedError, match=rf"epoch 1: parameter '{layer}.weight' is not finite"):
        fit(model, train, test, CFG, tmp_path / "run", meta=META, progress=False, solver=solver)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_settings_are_refused(value):
    with pytest.raises(ConfigError, match="lr"):
        parse(TrainConfig, {"lr": value}, "compress")
    model = tiny_model()
    layer = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    for key in ("rho", "M", "s0", "rho_growth", "rho_max"):
        with pytest.raises(ConfigError, match=key):
            create("slr", model, {layer: Sparsity(0.5)}, **{key: value})
