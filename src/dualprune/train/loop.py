"""The training loop: read it top to bottom.

One function, :func:`fit`, trains a model for ``cfg.epochs`` epochs, evaluates
after each, appends a JSON line of metrics to ``out/metrics.jsonl`` and writes
an atomic checkpoint ``out/checkpoint.pt`` (model, optimizer, schedule step,
RNG states, epoch). ``resume=True`` continues from that checkpoint; on the CPU
the resumed run ends with bitwise the same weights as an uninterrupted one,
because the data order of epoch e depends only on (seed, e) and every other
source of randomness is restored from the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from dualprune.errors import CheckpointError
from dualprune.train import checkpoint as ckpt_io
from dualprune.train.config import TrainConfig
from dualprune.train.schedules import make_schedule

__all__ = ["BatchLoader", "build_optimizer", "evaluate", "fit"]


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

    def __iter__(self) -> Iterable[tuple[Tensor, Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam or AdamW on all trainable parameters.

    Weight decay applies to weights of rank ≥ 2 only (not biases or BatchNorm),
    the usual choice for CNNs.
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
    """Mean cross-entropy and top-1 accuracy (in [0, 1]) over ``loader``."""
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
        return _fit(model, train_loader, test_loader, cfg, out, meta, resume, progress, solver)


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


def _fit(
    model: nn.Module,
    train_loader: BatchLoader,
    test_loader: Iterable[tuple[Tensor, Tensor]],
    cfg: TrainConfig,
    out: str | Path,
    meta: dict[str, Any] | None,
    resume: bool,
    progress: bool | None,
    solver: SolverHooks | None = None,
) -> list[dict[str, Any]]:
    out = ckpt_io.ensure_writable(out)
    meta = dict(meta or {})
    config = cfg.model_dump(mode="json")
    optimizer = build_optimizer(model, cfg)
    steps = len(train_loader)
    schedule = make_schedule(
        cfg.schedule,
        cfg.epochs * steps,
        milestones=cfg.milestones,
        gamma=cfg.gamma,
        warmup=round(cfg.warmup_epochs * steps),
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    metrics_path = out / "metrics.jsonl"
    updates_path = out / "updates.jsonl"
    start = 0
    if resume and (out / "checkpoint.pt").exists():
        state = ckpt_io.load(out / "checkpoint.pt")
        ckpt_io.check_resumable(state, config, out / "checkpoint.pt")
        ckpt_io.load_model_state(
            model, state, model_name=meta.get("model_name", ""), path=out / "checkpoint.pt"
        )
        optimizer.load_state_dict(state["optimizer"])
        if solver is not None:
            if "solver" not in state:
                raise CheckpointError(
                    f"{out / 'checkpoint.pt'} has no solver state; start the stage again "
                    "without resume"
                )
            solver.load_state_dict(state["solver"])
            _write_lines(updates_path, solver.history)
        ckpt_io.restore_rng(state["rng"])
        start = int(state["epoch"]) + 1
        _truncate_metrics(metrics_path, start)
    else:
        for path in (metrics_path, updates_path):
            if path.exists():
                path.unlink()

    history = []
    for epoch in range(start, cfg.epochs):
        train_loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros(())
        correct = torch.zeros((), dtype=torch.long)
        n = 0
        t0 = time.perf_counter()
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=(not progress) if progress is not None else None,
            unit="batch",
        )
        for i, (x, y) in enumerate(bar):
            lr = cfg.lr * schedule(epoch * steps + i)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if solver is not None:
                solver.regularize()
            optimizer.step()
            if solver is not None and (update := solver.step(loss.detach())) is not None:
                _write_lines(updates_path, [update], append=True)
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            n += y.numel()
            if i % 20 == 0:
                rate = n / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{loss_sum.item() / n:.4f}",
                    acc=f"{100 * correct.item() / n:.2f}%",
                    rate=f"{rate:.0f}/s",
                )
        seconds = time.perf_counter() - t0
        solver_note = ""
        if solver is not None and (update := solver.update(loss_sum.item() / max(n, 1))):
            _write_lines(updates_path, [update], append=True)
            solver_note = "  " + _solver_summary(update)
        test = evaluate(model, test_loader)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / max(n, 1),
            "train_acc": correct.item() / max(n, 1),
            "test_loss": test["loss"],
            "test_acc": test["acc"],
            "lr": lr,
            "seconds": seconds,
            "samples_per_s": n / max(seconds, 1e-9),
        }
        history.append(record)
        tqdm.write(
            f"epoch {epoch + 1:>3}/{cfg.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {100 * record['train_acc']:.2f}%  test loss {test['loss']:.4f} "
            f"acc {100 * test['acc']:.2f}%  lr {lr:.4g}  {seconds:.1f}s "
            f"({record['samples_per_s']:.0f} samples/s){solver_note}"
        )
        with open(metrics_path, "a") as f:  # before the checkpoint: resume trims extra lines
            f.write(json.dumps(record) + "\n")
        ckpt_io.atomic_save(
            {
                "format": ckpt_io.FORMAT,
                **meta,
                "config": config,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": {"name": cfg.schedule, "step": (epoch + 1) * steps},
                "rng": ckpt_io.capture_rng(),
                "metrics": record,
                **({"solver": solver.state_dict()} if solver is not None else {}),
            },
            out / "checkpoint.pt",
        )
    return history


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


def _write_lines(path: Path, records: list[dict[str, Any]], append: bool = False) -> None:
    """Write (or append) JSON lines."""
    with open(path, "a" if append else "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _truncate_metrics(path: Path, next_epoch: int) -> None:
    """Keep only metric lines of epochs already in the checkpoint (1-based ≤ next_epoch)."""
    if not path.exists():
        return
    lines = [
        ln
        for ln in path.read_text().splitlines()
        if ln.strip() and json.loads(ln)["epoch"] <= next_epoch
    ]
    path.write_text("".join(ln + "\n" for ln in lines))
