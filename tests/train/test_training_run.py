"""The run directory with a solver: hook order, updates.jsonl, resume and fresh starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from train_helpers import CFG, META, Crash, CrashingLoader, loaders, tiny_model

from dualprune.constraints import Sparsity
from dualprune.errors import CheckpointError
from dualprune.solvers import create
from dualprune.train.loop import fit
from dualprune.train.run import epoch_summary


class ScriptedSolver:
    """A stand-in solver: logs its hook calls, reports every 3rd batch and every epoch."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.batches = 0

    def regularize(self) -> None:
        has_grad = all(p.grad is not None for p in self.model.parameters())
        self.calls.append("regularize" if has_grad else "regularize before backward")

    def step(self, loss: Tensor | float | None = None) -> dict[str, Any] | None:
        self.calls.append("step")
        self.batches += 1
        if self.batches % 3 or loss is None:
            return None
        return self._record(loss=float(loss))

    def update(self, train_loss: float | None = None) -> dict[str, Any] | None:
        self.calls.append("update")
        return self._record(train_loss=train_loss, rho=0.5)

    def _record(self, **values: Any) -> dict[str, Any]:
        self.history.append({"update": len(self.history) + 1, "batch": self.batches, **values})
        return self.history[-1]

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = state["batches"]
        self.history = [dict(r) for r in state["history"]]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def _untimed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in records]


def _same(a: Any, b: Any) -> bool:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_solver_hooks_run_in_loop_order_and_every_update_is_logged(tmp_path, capsys):
    train, test = loaders()
    model = tiny_model()
    solver = ScriptedSolver(model)
    cfg = CFG.model_copy(update={"epochs": 1})
    history = fit(model, train, test, cfg, tmp_path, meta=META, progress=False, solver=solver)

    assert len(train) == 8
    assert solver.calls == ["regularize", "step"] * 8 + ["update"]
    assert [r["batch"] for r in solver.history] == [3, 6, 8]
    assert _lines(tmp_path / "updates.jsonl") == solver.history
    assert solver.history[-1]["train_loss"] == history[0]["train_loss"]  # f(W), per epoch
    assert capsys.readouterr().out.rstrip().endswith("[update 3: rho 0.5]")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["solver"] == solver.state_dict()


def test_resume_with_a_solver_is_bitwise_identical(tmp_path):
    plan = {"0": Sparsity(0.5), "4": Sparsity(0.75)}
    train, test = loaders()
    reference = tiny_model()
    ref_solver = create("admm", reference, plan)
    fit(reference, train, test, CFG, tmp_path / "a", meta=META, progress=False, solver=ref_solver)

    train, test = loaders()
    interrupted = tiny_model()
    with pytest.raises(Crash):
        fit(
            interrupted,
            CrashingLoader(train, crash_epoch=2),
            test,
            CFG,
            tmp_path / "b",
            meta=META,
            progress=False,
            solver=create("admm", interrupted, plan),
        )
    torch.manual_seed(12345)  # a new process starts with another RNG state
    resumed = tiny_model()
    solver = create("admm", resumed, plan)
    train, test = loaders()
    history = fit(
        resumed, train, test, CFG, tmp_path / "b", meta=META, resume=True, progress=False,
        solver=solver,
    )  # fmt: skip

    assert [h["epoch"] for h in history] == [3]
    assert _same(reference.state_dict(), resumed.state_dict())
    assert _same(ref_solver.state_dict(), solver.state_dict())
    a, b = tmp_path / "a", tmp_path / "b"
    assert _lines(a / "updates.jsonl") == _lines(b / "updates.jsonl")
    assert len(_lines(b / "updates.jsonl")) == 3
    assert _untimed(_lines(a / "metrics.jsonl")) == _untimed(_lines(b / "metrics.jsonl"))


def test_resume_without_solver_state_is_refused(tmp_path):
    train, test = loaders()
    cfg = CFG.model_copy(update={"epochs": 1})
    fit(tiny_model(), train, test, cfg, tmp_path, meta=META, progress=False)
    model = tiny_model()
    with pytest.raises(CheckpointError, match="has no solver state"):
        fit(
            model, train, test, cfg, tmp_path, meta=META, resume=True, progress=False,
            solver=ScriptedSolver(model),
        )  # fmt: skip


def test_a_fresh_run_replaces_the_files_of_an_earlier_one(tmp_path):
    train, test = loaders()
    model = tiny_model()
    fit(model, train, test, CFG, tmp_path, meta=META, progress=False, solver=ScriptedSolver(model))
    assert len(_lines(tmp_path / "metrics.jsonl")) == 3
    cfg = CFG.model_copy(update={"epochs": 1})
    fit(tiny_model(), train, test, cfg, tmp_path, meta=META, progress=False)
    assert [r["epoch"] for r in _lines(tmp_path / "metrics.jsonl")] == [1]
    assert not (tmp_path / "updates.jsonl").exists()
    assert "solver" not in torch.load(tmp_path / "checkpoint.pt", weights_only=True)


def test_epoch_summary_line():
    record = {
        "epoch": 2, "train_loss": 0.25, "train_acc": 0.5, "test_loss": 0.125, "test_acc": 1.0,
        "lr": 0.015432, "seconds": 1.26, "samples_per_s": 203.2,
    }  # fmt: skip
    update = {
        "update": 4, "layers": {"a": {"residual": 0.2}, "b": {"residual": 0.4}},
        "rho": 0.1, "step_size": 0.0105, "conditions": [True, False],
    }  # fmt: skip
    assert epoch_summary(record, 3, None) == (
        "epoch   2/3  train loss 0.2500 acc 50.00%  test loss 0.1250 acc 100.00%  "
        "lr 0.01543  1.3s (203 samples/s)"
    )
    assert epoch_summary(record, 3, update).endswith(
        "(203 samples/s)  [update 4: |W-Z|/|W| 0.3, rho 0.1, s 0.0105 cond yn]"
    )
