"""One training run: the pieces the loop needs and the files it leaves behind.

:func:`dualprune.train.fit` gathers everything into a :class:`TrainingRun`, then
either resumes it (:func:`resume_from_checkpoint`) or starts it afresh
(:func:`start_fresh`), so that the loop in ``loop.py`` is only the loop. The run
directory holds three files:

- ``metrics.jsonl``: one JSON line per finished epoch, written before the checkpoint
  (a resume drops the lines of epochs the checkpoint does not hold);
- ``updates.jsonl``: one JSON line per solver update (runs with a solver only);
- ``checkpoint.pt``: model, optimizer, schedule step, RNG states, epoch, that epoch's
  metrics and the solver state, written atomically after every epoch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dualprune.errors import CheckpointError
from dualprune.train import checkpoint as ckpt_io
from dualprune.train.config import TrainConfig
from dualprune.train.schedules import Schedule

__all__ = [
    "BatchLoader",
    "RunPaths",
    "SolverHooks",
    "TrainingRun",
    "append_jsonl",
    "epoch_summary",
    "read_jsonl",
    "resume_from_checkpoint",
    "start_fresh",
    "write_checkpoint",
]


class SolverHooks(Protocol):
    """What :func:`fit` calls on a solver (every ``dualprune.solvers.Solver`` has these)."""

    history: list[dict[str, Any]]

    def regularize(self) -> None: ...
    def step(self, loss: Tensor | float | None = None) -> dict[str, Any] | None: ...
    def update(self, train_loss: float | None = None) -> dict[str, Any] | None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BatchLoader(Protocol):
    """What :func:`fit` needs from a data loader (``dualprune.data.Loader`` is one)."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory ``out``."""

    out: Path

    @property
    def metrics(self) -> Path:
        """``out/metrics.jsonl``: one line per finished epoch."""
        return self.out / "metrics.jsonl"

    @property
    def updates(self) -> Path:
        """``out/updates.jsonl``: one line per solver update."""
        return self.out / "updates.jsonl"

    @property
    def checkpoint(self) -> Path:
        """``out/checkpoint.pt``: the state after the last finished epoch."""
        return self.out / "checkpoint.pt"


@dataclass
class TrainingRun:
    """Everything the training loop reads, built once by ``fit`` before the first epoch.

    Attributes:
        model: the network; its weights are updated in place.
        train_loader: batches of (x, y); ``set_epoch(e)`` fixes epoch e's order.
        test_loader: evaluation batches, read after every epoch.
        cfg: optimizer, schedule and epoch settings.
        optimizer: built from ``cfg`` on ``model``'s trainable parameters.
        schedule: learning-rate multiplier of the global step (0-based, whole run).
        criterion: the training loss (cross-entropy with ``cfg.label_smoothing``).
        solver: the compression solver whose hooks the loop calls, or None.
        paths: the run directory's files.
        meta: plain values stored in every checkpoint (``model_name`` among them).
        config: ``cfg`` as JSON values, stored in the checkpoint and checked on resume.
        steps: batches per epoch.
        progress: show a progress bar (None: only on a terminal).
    """

    model: nn.Module
    train_loader: BatchLoader
    test_loader: Iterable[tuple[Tensor, Tensor]]
    cfg: TrainConfig
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    criterion: nn.Module
    solver: SolverHooks | None
    paths: RunPaths
    meta: dict[str, Any]
    config: dict[str, Any]
    steps: int
    progress: bool | None


def resume_from_checkpoint(run: TrainingRun) -> int:
    """Restore model, optimizer, solver and RNG states from ``run``'s checkpoint.

    Also rewrites ``updates.jsonl`` from the solver's history and drops the lines of
    ``metrics.jsonl`` that are newer than the checkpoint, so both files read as if
    the run had never stopped.

    Args:
        run: the run to continue; its checkpoint file must exist.

    Returns:
        The first epoch still to train (0-based).

    Raises:
        CheckpointError: the checkpoint is corrupt, from another model, was written
            with other settings, or has no solver state while ``run`` has a solver.
    """
    path = run.paths.checkpoint
    state = ckpt_io.load(path)
    ckpt_io.check_resumable(state, run.config, path)
    ckpt_io.load_model_state(run.model, state, model_name=run.meta.get("model_name", ""), path=path)
    run.optimizer.load_state_dict(state["optimizer"])
    if run.solver is not None:
        if "solver" not in state:
            raise CheckpointError(
                f"{path} has no solver state; start the stage again without resume"
            )
        run.solver.load_state_dict(state["solver"])
        _write_jsonl(run.paths.updates, run.solver.history)
    ckpt_io.restore_rng(state["rng"])
    start = int(state["epoch"]) + 1
    _truncate_metrics(run.paths.metrics, start)
    return start


def start_fresh(run: TrainingRun) -> int:
    """Delete the metrics and updates of an earlier run in the same directory.

    Returns:
        0, the first epoch to train.
    """
    for path in (run.paths.metrics, run.paths.updates):
        if path.exists():
            path.unlink()
    return 0


def write_checkpoint(run: TrainingRun, epoch: int, record: dict[str, Any]) -> None:
    """Atomically save the state after ``epoch`` (0-based) to ``run.paths.checkpoint``.

    Args:
        run: the run whose model, optimizer, RNG and solver states are saved.
        epoch: the epoch just finished, 0-based.
        record: that epoch's metrics line.
    """
    ckpt_io.atomic_save(
        {
            "format": ckpt_io.FORMAT,
            **run.meta,
            "config": run.config,
            "epoch": epoch,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "schedule": {"name": run.cfg.schedule, "step": (epoch + 1) * run.steps},
            "rng": ckpt_io.capture_rng(),
            "metrics": record,
            **({"solver": run.solver.state_dict()} if run.solver is not None else {}),
        },
        run.paths.checkpoint,
    )


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to ``path`` as one JSON line, in one write, flushed to disk.

    A kill during the write can leave a torn last line; :func:`read_jsonl` skips it.
    """
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn (half-written) last line is left out.

    Raises:
        CheckpointError: a line other than the last is not JSON (the file is damaged).
    """
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append(json.loads(ln))
        except ValueError:
            if i == len(lines) - 1:
                break  # a write cut short by a kill: the epoch it records is not in the checkpoint
            raise CheckpointError(
                f"'{path}' line {i + 1} is not JSON; the file is damaged"
            ) from None
    return out


def epoch_summary(record: dict[str, Any], epochs: int, update: dict[str, Any] | None) -> str:
    """The line printed after each epoch, e.g. ``epoch   1/3  train loss 0.5295 acc …``.

    Args:
        record: the epoch's metrics line.
        epochs: epochs in the whole run.
        update: the solver update that ran at the end of the epoch, if any.
    """
    note = "  " + _solver_summary(update) if update else ""
    return (
        f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_acc']:.2f}%  test loss {record['test_loss']:.4f} "
        f"acc {100 * record['test_acc']:.2f}%  lr {record['lr']:.4g}  {record['seconds']:.1f}s "
        f"({record['samples_per_s']:.0f} samples/s){note}"
    )


def _solver_summary(update: dict[str, Any]) -> str:
    """One short line about a solver update: mean ||W−Z||/||W||, ρ, SLR's s and conditions."""
    layers = update.get("layers", {})
    parts = []
    res = [v["residual"] for v in layers.values() if "residual" in v]
    if res:
        parts.append(f"|W-Z|/|W| {sum(res) / len(res):.3g}")
    if "rho" in update:
        parts.append(f"rho {update['rho']:.3g}")
    if "step_size" in update:
        held = "".join("y" if c else "n" for c in update.get("conditions", []))
        parts.append(f"s {update['step_size']:.3g} cond {held}")
    if "fraction_of_target" in update:
        parts.append(f"ratio {100 * update['fraction_of_target']:.0f}% of target")
    return f"[update {update.get('update', '?')}: {', '.join(parts)}]"


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` with one JSON line per record."""
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _truncate_metrics(path: Path, next_epoch: int) -> None:
    """Keep only metric lines of epochs already in the checkpoint (1-based ≤ next_epoch)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("epoch", 0) <= next_epoch]
    _write_jsonl(path, kept)
