"""The training loop: read it top to bottom.

One function, :func:`fit`, trains a model for ``cfg.epochs`` epochs, evaluates
after each, appends a JSON line of metrics to ``out/metrics.jsonl`` and writes
an atomic checkpoint ``out/checkpoint.pt`` (model, optimizer, schedule step,
RNG states, epoch). ``resume=True`` continues from that checkpoint; on the CPU
the resumed run ends with bitwise the same weights as an uninterrupted one,
because the data order of epoch e depends only on (seed, e) and every other
source of randomness is restored from the checkpoint.

:func:`fit` gathers what the loop needs into a :class:`~dualprune.train.run.TrainingRun`;
:func:`_train` is the loop itself. Resuming, checkpoints and the files of the run
directory live in ``run.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from dualprune.errors import DivergedError
from dualprune.train import checkpoint as ckpt_io
from dualprune.train.config import TrainConfig
from dualprune.train.run import (
    BatchLoader,
    RunPaths,
    SolverHooks,
    TrainingRun,
    append_jsonl,
    epoch_summary,
    resume_from_checkpoint,
    start_fresh,
    write_checkpoint,
)
from dualprune.train.schedules import make_schedule

__all__ = ["BatchLoader", "build_optimizer", "evaluate", "fit"]


def fit(
    model: nn.Module,
    train_loader: BatchLoader,
    test_loader: Iterable[tuple[Tensor, Tensor]],
    cfg: TrainConfig,
    out: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    solver: SolverHooks | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` and return one metrics dict per epoch run.

    Args:
        model: the network; its weights are updated in place.
        train_loader: batches of (x, y); ``set_epoch(e)`` fixes epoch e's order.
        test_loader: evaluation batches, read after every epoch.
        cfg: optimizer, schedule and epoch settings.
        out: run directory for ``metrics.jsonl`` and ``checkpoint.pt``.
        meta: plain values stored in the checkpoint (``model_name`` is required to
            check a resumed or evaluated checkpoint against its model).
        resume: continue from ``out/checkpoint.pt`` if it exists.
        progress: show a progress bar (None: only on a terminal).
        solver: a compression solver (``dualprune.solvers``): its penalty gradient is
            added after every ``backward()`` (``regularize``), ``step(loss)`` runs
            after every optimizer step and ``update(train_loss)`` after every
            epoch; its updates are appended to ``out/updates.jsonl`` and its
            state goes into the checkpoint. ``train_loss`` is f(W) without the penalty.

    Note:
        Runs under :func:`flush_denormals` (a large speed-up on CPUs).

    Raises:
        CheckpointError: the checkpoint to resume is corrupt or from another run.
    """
    with flush_denormals():
        paths = RunPaths(ckpt_io.ensure_writable(out))
        steps = len(train_loader)
        run = TrainingRun(
            model=model,
            train_loader=train_loader,
            test_loader=test_loader,
            cfg=cfg,
            optimizer=build_optimizer(model, cfg),
            schedule=make_schedule(
                cfg.schedule,
                cfg.epochs * steps,
                milestones=cfg.milestones,
                gamma=cfg.gamma,
                warmup=round(cfg.warmup_epochs * steps),
            ),
            criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
            solver=solver,
            paths=paths,
            meta=dict(meta or {}),
            config=cfg.model_dump(mode="json"),
            steps=steps,
            progress=progress,
        )
        if resume and paths.checkpoint.exists():
            start = resume_from_checkpoint(run)
        else:
            start = start_fresh(run)
        return _train(run, start)


_ADVICE = (
    "nothing of this epoch was saved (the last checkpoint is resumable); "
    "lower the learning rate (lr) or, under a solver, rho"
)


def stop_if_weights_diverged(run: TrainingRun, epoch: int) -> None:
    """Raise DivergedError if a weight of ``run.model`` is not finite (after a solver update)."""
    named = list(run.model.named_parameters())
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).tolist()  # one sync
    for (name, _), ok in zip(named, finite, strict=True):
        if not ok:
            raise DivergedError(
                f"{run.paths.out.name}: epoch {epoch + 1}: parameter '{name}' is not finite; "
                f"{_ADVICE}"
            )


def _train(run: TrainingRun, start: int) -> list[dict[str, Any]]:
    """Epochs ``start`` … ``cfg.epochs − 1`` of ``run``; returns their metrics dicts."""
    cfg, model, optimizer, solver = run.cfg, run.model, run.optimizer, run.solver
    history = []
    for epoch in range(start, cfg.epochs):
        run.train_loader.set_epoch(epoch)  # the data order depends on (seed, epoch) only
        model.train()
        tally = _EpochTally()
        bar = _progress_bar(run, epoch)
        for i, (x, y) in enumerate(bar):
            lr = cfg.lr * run.schedule(epoch * run.steps + i)
            _set_lr(optimizer, lr)
            logits = model(x)
            loss = run.criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if solver is not None:
                solver.regularize()  # adds the penalty's gradient to .grad
            optimizer.step()
            if solver is not None and (update := solver.step(loss.detach())) is not None:
                append_jsonl(run.paths.updates, update)
            tally.add(loss, logits, y, step=i)
            if i % 20 == 0:
                tally.stop_if_diverged(run, epoch)  # syncs, as the postfix does anyway
                bar.set_postfix(tally.postfix())

        tally.stop_if_diverged(run, epoch)
        seconds = tally.seconds()
        update = solver.update(tally.mean_loss()) if solver is not None else None  # f(W) only
        if update:
            append_jsonl(run.paths.updates, update)
        stop_if_weights_diverged(run, epoch)  # nothing non-finite reaches a checkpoint
        test = evaluate(model, run.test_loader)
        record = tally.record(epoch, test, lr, seconds)
        history.append(record)
        tqdm.write(epoch_summary(record, cfg.epochs, update))
        append_jsonl(run.paths.metrics, record)  # before the checkpoint: resume trims extra lines
        write_checkpoint(run, epoch, record)
    return history


@dataclass
class _EpochTally:
    """Running sums of one training epoch: loss × samples, correct predictions, samples."""

    loss_sum: Tensor = field(default_factory=lambda: torch.zeros(()))
    correct: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    n: int = 0
    t0: float = field(default_factory=time.perf_counter)
    first_bad: Tensor = field(default_factory=lambda: torch.full((), -1, dtype=torch.long))

    def stop_if_diverged(self, run: TrainingRun, epoch: int) -> None:
        """Raise DivergedError if a batch of this epoch had a non-finite loss."""
        step = int(self.first_bad)
        if step >= 0:
            raise DivergedError(
                f"{run.paths.out.name}: epoch {epoch + 1}, step {step + 1}: the training loss "
                f"is not finite; {_ADVICE}"
            )

    def add(self, loss: Tensor, logits: Tensor, y: Tensor, step: int = 0) -> None:
        """Count batch ``step`` (``loss`` is its mean cross-entropy); no device sync."""
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)
        self.loss_sum += loss.detach() * y.numel()
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.n += y.numel()

    def seconds(self) -> float:
        """Seconds since the epoch started."""
        return time.perf_counter() - self.t0

    def mean_loss(self) -> float:
        """Mean training loss so far (0 before the first batch)."""
        return self.loss_sum.item() / max(self.n, 1)

    def postfix(self) -> dict[str, str]:
        """The progress bar's running accuracy, loss and samples per second, in that order."""
        rate = self.n / max(self.seconds(), 1e-9)
        return {
            "acc": f"{100 * self.correct.item() / self.n:.2f}%",
            "loss": f"{self.loss_sum.item() / self.n:.4f}",
            "rate": f"{rate:.0f}/s",
        }

    def record(
        self, epoch: int, test: dict[str, float], lr: float, seconds: float
    ) -> dict[str, Any]:
        """The metrics line of 0-based ``epoch`` (``epoch`` is 1-based in the line)."""
        return {
            "epoch": epoch + 1,
            "train_loss": self.mean_loss(),
            "train_acc": self.correct.item() / max(self.n, 1),
            "test_loss": test["loss"],
            "test_acc": test["acc"],
            "lr": lr,
            "seconds": seconds,
            "samples_per_s": self.n / max(seconds, 1e-9),
        }


def _progress_bar(run: TrainingRun, epoch: int) -> tqdm[tuple[Tensor, Tensor]]:
    """The training batches of ``epoch`` behind a progress bar that vanishes when done."""
    return tqdm(
        run.train_loader,
        desc=f"epoch {epoch + 1}/{run.cfg.epochs}",
        leave=False,
        disable=(not run.progress) if run.progress is not None else None,
        unit="batch",
    )


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam or AdamW on all trainable parameters.

    Weight decay applies to weights of rank ≥ 2 only (not biases or BatchNorm),
    the usual choice for CNNs.

    Args:
        model: the network whose trainable parameters are optimized.
        cfg: ``optimizer``, ``lr``, ``momentum`` (Adam's β1), ``nesterov`` and
            ``weight_decay``.

    Returns:
        The optimizer, with two parameter groups (decayed, not decayed).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy (in [0, 1]) over ``loader``.

    Args:
        model: the network, run in eval mode (its train/eval mode is restored after).
        loader: batches of (x, y).

    Returns:
        ``{"loss": mean cross-entropy, "acc": top-1 accuracy, "samples": count}``.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        n += y.numel()
    model.train(was_training)
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "samples": n}


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, then restore the previous mode.

    Denormals appear in small gradients and make CPU kernels several times
    slower (LeNet-5/MNIST: ~700 vs ~5,500 samples/s here); flushing them costs
    no accuracy.
    """
    tiny = torch.tensor([1e-39])  # a float32 denormal
    was_on = bool((tiny * 1.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)
