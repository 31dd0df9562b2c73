"""Train a CIFAR-10 model of the zoo to full accuracy on one GPU, inside a time budget.

All images are decoded once (Pillow, RGB, as the package's own image-folder loader does)
into one uint8 tensor on the device. Each epoch draws a fresh permutation, random crops from
the 4-pixel zero-padded images and horizontal flips, all from one seeded CPU generator and
applied on the device in a few vectorised kernels. Inputs are normalised exactly as
``dualprune.data`` normalises CIFAR-10, ``(x / 255 - mean) / std`` computed as
``x * (1 / (255 std)) - mean / std`` in float32, so the saved weights evaluate the same
through the package's loader.

Recipe: SGD (momentum 0.9, Nesterov), weight decay on every parameter, label smoothing,
batch 256, a linear warm-up to the peak learning rate then a cosine decay to 0 (per step),
bf16 autocast, channels_last and cuDNN autotuning on CUDA.

``--time-budget S`` bounds the whole run, counted from the start of :func:`main`. Before
training, warm training steps on a throwaway copy of the model give the step time; if the
asked epochs would not fit, fewer are used and the schedule is built for them. Should the
epochs then run slower than measured (another process sharing the GPU), the remaining
schedule is shortened once more so that it still ends at a learning rate of 0 in time.

Outputs in ``--out``: ``<model>-cifar10.safetensors`` (fp32 state dict) and
``<model>-cifar10.json`` (settings, timings, accuracy curve, sha256 of the weights),
rewritten every ``--eval-every`` epochs with ``"complete": false`` and at the end with
``"complete": true``.

Usage (from the repository root, with ``PYTHONPATH=src``):
    python scripts/train_cifar_gpu.py --data .gpu/cifar10-jpeg.npz --model resnet56 \\
        --epochs 200 --time-budget 360 --out runs/zoo
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from dualprune import models
from dualprune.data.registry import CIFAR10_CLASSES, STATS

#: The package's own CIFAR-10 normalisation and class order, so the weights evaluate the same
#: through ``dualprune.data``.
CIFAR10_MEAN, CIFAR10_STD = STATS["cifar10"]
CLASSES = CIFAR10_CLASSES
SPLITS = ("train", "test")
PAD = 4
EVAL_BATCH = 1000
SAFETY = 1.15  # margin on the measured step time when fitting the epochs into the budget


# ----------------------------------------------------------------------------- data


def decode_jpegs(blobs: Sequence[bytes]) -> np.ndarray:
    """Decode encoded images into uint8 (N, 32, 32, 3) RGB, as Pillow's ``convert("RGB")``.

    Grayscale files become three equal channels, as in the package's folder loader.

    Args:
        blobs: Encoded image files.

    Returns:
        The pixels, (N, H, W, 3) uint8.
    """
    out = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return np.stack(out) if out else np.zeros((0, 32, 32, 3), np.uint8)


def decode_all(blobs: Sequence[bytes], workers: int) -> torch.Tensor:
    """Decode many images with a process pool, keeping their order.

    Args:
        blobs: Encoded image files.
        workers: Worker processes (1: decode in this process).

    Returns:
        uint8 images (N, 3, H, W), contiguous.
    """
    chunk = 1000
    parts = [blobs[i : i + chunk] for i in range(0, len(blobs), chunk)]
    if workers <= 1 or len(parts) <= 1:
        arrays = [decode_jpegs(p) for p in parts]
    else:
        with multiprocessing.get_context("fork").Pool(min(workers, len(parts))) as pool:
            arrays = pool.map(decode_jpegs, parts)
    x = np.concatenate(arrays) if arrays else np.zeros((0, 32, 32, 3), np.uint8)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def subset_indices(n: int, limit: int | None) -> np.ndarray:
    """Pick ``limit`` evenly spaced indices of ``range(n)`` (all of them without a limit).

    The stored order is class by class, so evenly spaced indices cover every class.

    Args:
        n: Size of the split.
        limit: How many to keep; ``None`` or ``>= n`` keeps all.

    Returns:
        Sorted int64 indices.
    """
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    return (np.arange(limit, dtype=np.int64) * n) // limit


def read_npz(path: Path) -> dict[str, tuple[list[bytes], np.ndarray]]:
    """Read the archive written by ``scripts/pack_cifar10.py``.

    Args:
        path: The ``.npz`` file.

    Returns:
        Split -> (encoded files, int64 labels).
    """
    out = {}
    with np.load(path) as z:
        classes = tuple(str(c) for c in z["classes"])
        if classes != CLASSES:
            raise SystemExit(f"{path}: classes {classes} are not CIFAR-10's {CLASSES}")
        for split in SPLITS:
            raw = z[f"{split}_jpeg"].tobytes()
            offsets = z[f"{split}_offsets"]
            blobs = [raw[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
            out[split] = (blobs, z[f"{split}_labels"].astype(np.int64))
    return out


def read_folder(root: Path) -> dict[str, tuple[list[bytes], np.ndarray]]:
    """Read the encoded files of ``root/cifar10-jpeg`` (or ``root`` itself if it is that).

    The order is the package's: classes in label order, files sorted by name.

    Args:
        root: A data root holding ``cifar10-jpeg/``, or the ``cifar10-jpeg`` folder.

    Returns:
        Split -> (encoded files, int64 labels).
    """
    folder = root / "cifar10-jpeg" if (root / "cifar10-jpeg").is_dir() else root
    out = {}
    for split in SPLITS:
        blobs: list[bytes] = []
        labels: list[int] = []
        for label, cls in enumerate(CLASSES):
            files = sorted(
                p for p in (folder / split / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg")
            )
            blobs.extend(p.read_bytes() for p in files)
            labels.extend([label] * len(files))
        out[split] = (blobs, np.asarray(labels, dtype=np.int64))
    return out


def load_data(
    source: Path, limits: dict[str, int | None], workers: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load and decode both splits (only the kept subset of each).

    Args:
        source: A ``.npz`` archive or an image-folder root.
        limits: Split -> how many images to keep (``None``: all).
        workers: Decoding processes.

    Returns:
        Split -> (uint8 images (N, 3, 32, 32), int64 labels (N,)) on the CPU.
    """
    encoded = read_npz(source) if source.suffix == ".npz" else read_folder(source)
    out = {}
    for split in SPLITS:
        blobs, labels = encoded[split]
        keep = subset_indices(len(blobs), limits[split])
        x = decode_all([blobs[i] for i in keep], workers)
        out[split] = (x, torch.from_numpy(labels[keep]))
    return out


class Normalizer:
    """``(x / 255 - mean) / std`` for uint8 batches, one fused ``addcmul`` as in the package."""

    def __init__(self, device: torch.device) -> None:
        """Build the per-channel scale and bias on ``device``.

        Args:
            device: Where the batches live.
        """
        mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.bias = -mean / std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise uint8 images (B, 3, H, W) into float32."""
        return torch.addcmul(self.bias, x, self.scale)


def crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Crop every image from its ``PAD``-pixel zero-padded copy and mirror some of them.

    Image b becomes ``padded[b, :, dy:dy + H, dx:dx + W]`` with ``(dy, dx) = shifts[b]``,
    read right to left where ``flips[b]``; the whole batch is one index gather.

    Args:
        x: Images (B, C, H, W), any dtype.
        shifts: int64 (B, 2) offsets in ``[0, 2 * PAD]``.
        flips: bool (B,).

    Returns:
        The augmented images, same shape and dtype.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD)).flatten(2)  # (B, C, (H+2p)(W+2p))
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + shifts[:, 1:2]  # (B, W)
    rows = torch.arange(h, device=x.device) + shifts[:, 0:1]  # (B, H)
    index = rows[:, :, None] * (w + 2 * PAD) + cols[:, None, :]  # (B, H, W)
    return padded.gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def epoch_batches(
    x: torch.Tensor, y: torch.Tensor, batch: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield one epoch of augmented uint8 batches (the last partial batch is dropped).

    Args:
        x: uint8 images (N, 3, H, W) on the device.
        y: int64 labels (N,) on the device.
        batch: Batch size.
        gen: CPU generator for the permutation, the crop offsets and the flips.

    Yields:
        ``(uint8 images (batch, 3, H, W), labels (batch,))``.
    """
    n = x.shape[0]
    order = torch.randperm(n, generator=gen).to(x.device)
    shifts = torch.randint(0, 2 * PAD + 1, (n, 2), generator=gen).to(x.device)
    flips = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    xs = crop_flip(x[order], shifts, flips)
    ys = y[order]
    for i in range(n // batch):
        yield xs[i * batch : (i + 1) * batch], ys[i * batch : (i + 1) * batch]


# ----------------------------------------------------------------------------- schedule


class Schedule:
    """Per-step learning rate: linear warm-up, then a cosine from a start value to 0.

    :meth:`shorten` restarts the cosine at the current step and rate so that it reaches 0
    at a new, earlier final step.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int) -> None:
        """Set up the warm-up to ``peak`` and the cosine to 0 at ``total_steps``.

        Args:
            peak: Peak learning rate.
            warmup_steps: Steps of the linear warm-up (from ``peak / warmup_steps``);
                at most a fifth of ``total_steps``.
            total_steps: Steps of the whole schedule.
        """
        self.peak = peak
        self.warmup = max(0, min(warmup_steps, total_steps // 5))  # tiny runs: at most 20%
        self.total = total_steps
        self.start_step = self.warmup  # where the cosine starts
        self.start_lr = peak

    def __call__(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        span = max(1, self.total - self.start_step)
        t = min(1.0, (step - self.start_step) / span)
        return self.start_lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def shorten(self, step: int, total_steps: int) -> None:
        """From ``step`` on, decay from the current rate to 0 at ``total_steps`` instead.

        Args:
            step: The next optimiser step.
            total_steps: The new final step count (``> step``).
        """
        if step < self.warmup:  # still warming up: keep the warm-up, shorten the cosine
            self.total = max(total_steps, self.warmup + 1)
            return
        self.start_lr = self(step)
        self.start_step = step
        self.total = total_steps


# ----------------------------------------------------------------------------- training


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on ``device`` (a no-op context when disabled)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9 and weight decay on every parameter.

    Uses the fused CUDA kernel where available (fewer launches for these small models).

    Args:
        model: The model to train.
        args: Parsed arguments (``lr``, ``wd``).

    Returns:
        The optimiser.
    """
    params = list(model.parameters())
    kwargs: dict[str, Any] = {
        "lr": args.lr,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": args.wd,
    }
    if params[0].is_cuda:
        try:
            return torch.optim.SGD(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.SGD(params, foreach=True, **kwargs)
    return torch.optim.SGD(params, **kwargs)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    norm: Normalizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    lr: float,
    amp: bool,
) -> torch.Tensor:
    """One optimiser step on a uint8 batch; returns the detached loss (no host sync).

    Args:
        model: Model in train mode.
        opt: Its optimiser.
        loss_fn: Cross entropy with label smoothing.
        norm: Input normalisation.
        xb: uint8 images (B, 3, H, W) on the device.
        yb: int64 labels (B,).
        lr: Learning rate of this step.
        amp: Use bf16 autocast.

    Returns:
        The batch loss, a 0-dim tensor on the device.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    x = norm(xb).contiguous(memory_format=torch.channels_last)
    with autocast(xb.device, amp):
        loss = loss_fn(model(x), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Normalizer,
    amp: bool,
    channels_last: bool = True,
) -> float:
    """Top-1 accuracy (in %) of ``model`` on uint8 images, in eval mode.

    Args:
        model: The model (its train/eval mode is restored afterwards).
        x: uint8 images (N, 3, H, W) on the device.
        y: int64 labels (N,).
        norm: Input normalisation.
        amp: Use bf16 autocast.
        channels_last: Feed channels_last inputs.

    Returns:
        Accuracy in percent.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for i in range(0, x.shape[0], EVAL_BATCH):
        xb = norm(x[i : i + EVAL_BATCH]).contiguous(memory_format=fmt)
        with autocast(x.device, amp):
            logits = model(xb)
        correct += (logits.argmax(1) == y[i : i + EVAL_BATCH]).sum()
    model.train(was_training)
    return 100.0 * int(correct) / max(1, x.shape[0])


@contextmanager
def strict_fp32() -> Iterator[None]:
    """Disable TF32 in cuDNN and matmuls for a plain-fp32 evaluation, then restore."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = conv
        torch.backends.cuda.matmul.allow_tf32 = mm


def time_steps(
    model: nn.Module,
    args: argparse.Namespace,
    x: torch.Tensor,
    y: torch.Tensor,
    test: tuple[torch.Tensor, torch.Tensor],
    norm: Normalizer,
    loss_fn: nn.Module,
) -> dict[str, float]:
    """Measure a training step, an epoch's augmentation and an evaluation pass.

    Runs on a deep copy of ``model`` with its own optimiser, so the real model and the
    real data order are untouched. cuDNN autotuning happens in the warm-up steps.

    Args:
        model: The model to be trained (not modified).
        args: Parsed arguments (``batch``, ``timing_steps``, ``amp``, ...).
        x: Train images (uint8, on the device).
        y: Train labels.
        test: Test images and labels (for timing one evaluation pass).
        norm: Input normalisation.
        loss_fn: The training loss.

    Returns:
        ``step_s``, ``augment_s`` (one epoch's permutation + crop/flip) and ``eval_s``
        (one evaluation pass over the test set).
    """
    device = x.device
    probe = copy.deepcopy(model)
    opt = make_optimizer(probe, args)
    gen = torch.Generator().manual_seed(12345)
    batch = min(args.batch, x.shape[0])

    t = time.perf_counter()
    batches = list(epoch_batches(x, y, batch, gen))
    sync(device)
    augment_s = time.perf_counter() - t

    def run(count: int) -> float:
        """Run ``count`` steps over the cached batches; return the seconds per step."""
        sync(device)
        start = time.perf_counter()
        for i in range(count):
            xb, yb = batches[i % len(batches)]
            train_step(probe, opt, loss_fn, norm, xb, yb, 1e-3, args.amp)
        sync(device)
        return (time.perf_counter() - start) / count

    run(args.warmup_steps_timing)  # cuDNN autotuning, allocator warm-up
    step_s = run(args.timing_steps)

    evaluate(probe, test[0][:EVAL_BATCH], test[1][:EVAL_BATCH], norm, args.amp)  # warm-up
    sync(device)
    t = time.perf_counter()
    evaluate(probe, test[0], test[1], norm, args.amp)
    sync(device)
    eval_s = time.perf_counter() - t
    return {"step_s": step_s, "augment_s": augment_s, "eval_s": eval_s}


def fit_epochs(
    asked: int, steps_per_epoch: int, timing: dict[str, float], remaining_s: float, every: int
) -> int:
    """The most epochs (at most ``asked``) whose training and evaluations fit the time left.

    Args:
        asked: Epochs asked for.
        steps_per_epoch: Optimiser steps per epoch.
        timing: The result of :func:`time_steps`.
        remaining_s: Seconds left of the budget.
        every: Evaluate every this many epochs.

    Returns:
        Epochs to run (at least 1).
    """

    def cost(epochs: int) -> float:
        """Predicted seconds for ``epochs`` epochs with their evaluations and saves."""
        per_epoch = steps_per_epoch * timing["step_s"] * SAFETY + timing["augment_s"]
        evals = epochs // every + 3  # periodic ones, the final bf16 + fp32 passes, slack
        return epochs * per_epoch + evals * (timing["eval_s"] + 0.5)

    epochs = asked
    while epochs > 1 and cost(epochs) > remaining_s:
        epochs -= 1
    return epochs


# ----------------------------------------------------------------------------- output


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors (fp32 weights)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write a file through a temp file in the same folder and ``os.replace``.

    Args:
        path: Destination.
        write: Called with the temp file's path; writes the content there.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_outputs(out: Path, name: str, state: dict[str, torch.Tensor], record: dict) -> None:
    """Write ``<name>-cifar10.safetensors`` and ``<name>-cifar10.json`` (with the sha256).

    Args:
        out: Output folder.
        name: Model name.
        state: CPU state dict.
        record: The JSON record (``sha256`` and ``weights`` are filled in here).
    """
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}-cifar10.safetensors"
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"model": name}))
    record["weights"] = weights.name
    record["sha256"] = sha256_of(weights)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(out / f"{name}-cifar10.json", lambda tmp: Path(tmp).write_text(text))


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The parsed namespace, with ``device`` a ``torch.device`` and ``amp`` a bool.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help=".npz archive or image-folder root")
    p.add_argument("--model", default="resnet20", help="zoo model name (models.create)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate")
    p.add_argument("--wd", type=float, default=5e-4, help="weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("bf16", "none"), default=None, help="default: bf16 on CUDA")
    p.add_argument("--train-limit", type=int, default=None, help="keep N train images (smoke)")
    p.add_argument("--test-limit", type=int, default=None, help="keep N test images (smoke)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--time-budget", type=float, default=None, help="seconds for the whole run")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--timing-steps", type=int, default=30)
    p.add_argument("--warmup-steps-timing", type=int, default=10)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--threads", type=int, default=4, help="torch CPU threads")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    args.amp = (args.device.type == "cuda") if args.amp is None else args.amp == "bf16"
    if args.epochs < 1 or args.batch < 1 or args.eval_every < 1:
        p.error("--epochs, --batch and --eval-every must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Load the data, size the run to the budget, train, evaluate and save.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    t0 = time.perf_counter()
    args = parse_args(argv)
    device = args.device
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def log(msg: str) -> None:
        """Print a line prefixed with the model name and the seconds since start."""
        print(f"[{args.model} {time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    limits = {"train": args.train_limit, "test": args.test_limit}
    data = load_data(args.data, limits, args.workers)  # before CUDA init (fork pool)
    decode_s = time.perf_counter() - t0
    log(
        f"decoded {len(data['train'][1])} train + {len(data['test'][1])} test images "
        f"in {decode_s:.1f}s"
    )
    train_x, train_y = (t.to(device) for t in data["train"])
    test_x, test_y = (t.to(device) for t in data["test"])
    norm = Normalizer(device)

    model = models.create(args.model).to(device).to(memory_format=torch.channels_last)
    model.train()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    batch = min(args.batch, train_x.shape[0])
    steps_per_epoch = train_x.shape[0] // batch

    epochs = args.epochs
    timing: dict[str, float] | None = None
    if args.time_budget is not None:  # size the run from measured step times
        timing = time_steps(model, args, train_x, train_y, (test_x, test_y), norm, loss_fn)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the probe's memory
        remaining = args.time_budget - (time.perf_counter() - t0)
        epochs = fit_epochs(args.epochs, steps_per_epoch, timing, remaining, args.eval_every)
        log(
            f"timing: step {timing['step_s'] * 1e3:.2f} ms, augment {timing['augment_s']:.3f} "
            f"s/epoch, eval {timing['eval_s']:.2f} s; {remaining:.0f}s of the budget left"
        )
    log(
        f"{steps_per_epoch} steps/epoch; epochs asked {args.epochs}, used {epochs}"
        + (" (lowered to fit the time budget)" if epochs < args.epochs else "")
    )

    warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    schedule = Schedule(args.lr, warmup_steps, epochs * steps_per_epoch)
    opt = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    record: dict[str, Any] = {
        "model": args.model,
        "dataset": "cifar10 (lossy JPEG copy)",
        "complete": False,
        "epochs_asked": args.epochs,
        "epochs_used": epochs,
        "epochs_lowered_for_budget": epochs < args.epochs,
        "hyperparameters": {
            "optimizer": "SGD",
            "momentum": 0.9,
            "nesterov": True,
            "batch": batch,
            "lr_peak": args.lr,
            "weight_decay": args.wd,
            "weight_decay_on": "all parameters",
            "label_smoothing": args.label_smoothing,
            "warmup_epochs": args.warmup_epochs,
            "schedule": "linear warm-up per step, then cosine to 0 per step",
            "augmentation": f"random crop from {PAD}-px zero padding + horizontal flip",
            "drop_last": True,
            "seed": args.seed,
            "amp": "bf16 autocast" if args.amp else "fp32",
            "channels_last": True,
            "normalization": {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)},
        },
        "train_images": int(train_x.shape[0]),
        "test_images": int(test_x.shape[0]),
        "subset_rule": "indices (arange(limit) * N) // limit when a limit is given",
        "time_budget_s": args.time_budget,
        "timing": timing,
        "decode_s": decode_s,
        "replans": [],
        "epoch_seconds": [],
        "train_loss": [],
        "test_acc_curve": [],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": gpu,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }

    step = 0
    epoch = 0
    train_start = time.perf_counter()
    while epoch < epochs:
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        lr = 0.0
        for xb, yb in epoch_batches(train_x, train_y, batch, gen):
            lr = schedule(step)
            loss_sum += train_step(model, opt, loss_fn, norm, xb, yb, lr, args.amp)
            step += 1
        train_loss = float(loss_sum) / steps_per_epoch  # host sync: the epoch is done
        epoch += 1
        secs = time.perf_counter() - t_epoch
        record["epoch_seconds"].append(round(secs, 3))
        record["train_loss"].append(round(train_loss, 5))
        line = f"epoch {epoch:3d}/{epochs} loss {train_loss:.4f} lr {lr:.5f} {secs:.2f}s"
        if epoch % args.eval_every == 0 or epoch == epochs:
            acc = evaluate(model, test_x, test_y, norm, args.amp)
            record["test_acc_curve"].append({"epoch": epoch, "acc": acc})
            line += f" test {acc:.2f}%"
        log(line)
        if epoch % args.eval_every == 0 and epoch < epochs:
            record["epochs_done"] = epoch
            record["total_s"] = time.perf_counter() - t0
            save_outputs(args.out, args.model, cpu_state(model), record)
            # Running slower than measured (a shared GPU)? End the schedule earlier.
            if args.time_budget is not None and timing is not None:
                per_epoch = (time.perf_counter() - train_start) / epoch
                left = args.time_budget - (time.perf_counter() - t0) - 3 * timing["eval_s"] - 5
                fit = epoch + max(1, int(left / (per_epoch * 1.05)))
                if fit < epochs:
                    schedule.shorten(step, fit * steps_per_epoch)
                    record["replans"].append({"at_epoch": epoch, "epochs": fit})
                    log(f"running slower than planned: schedule shortened to {fit} epochs")
                    epochs = fit
                    record["epochs_used"] = epochs

    final_amp = record["test_acc_curve"][-1]["acc"]
    state = cpu_state(model)
    fresh = models.create(args.model)
    fresh.load_state_dict(state, strict=True)
    fresh = fresh.to(device).float()
    with strict_fp32():
        final_fp32 = evaluate(fresh, test_x, test_y, norm, amp=False, channels_last=False)
    record.update(
        {
            "complete": True,
            "epochs_done": epochs,
            "epochs_used": epochs,
            "final_test_acc": final_fp32,
            "final_test_acc_fp32": final_fp32,
            "final_test_acc_amp": final_amp,
            "seconds_per_epoch": (time.perf_counter() - train_start) / max(1, epochs),
            "train_s": time.perf_counter() - train_start,
            "total_s": time.perf_counter() - t0,
        }
    )
    save_outputs(args.out, args.model, state, record)
    log(
        f"done: {epochs} epochs, test {final_fp32:.2f}% (fp32), {final_amp:.2f}% "
        f"({'bf16' if args.amp else 'fp32'} in-loop), {record['total_s']:.0f}s total, "
        f"sha256 {record['sha256'][:16]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
