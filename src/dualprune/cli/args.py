"""Argument types and option groups shared by the ``dualprune`` subcommands."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, NoReturn

from dualprune.errors import one_line


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump), like every other error."""

    def error(self, message: str) -> NoReturn:
        top, _, command = self.prog.partition(" ")
        where = f"{command}: " if command else ""
        line = one_line(f"{top}: error: {where}{message}")
        self.exit(2, f"{line} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {value}")
    return value


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data root (default: $DUALPRUNE_DATA, else ~/.cache/dualprune/data)",
    )


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads for torch (default: torch's choice; 1 on a busy machine)",
    )


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (default: shown on a terminal)",
    )


def train_options(p: argparse.ArgumentParser) -> None:
    from dualprune.train.config import TrainConfig

    fields = TrainConfig.model_fields
    g = p.add_argument_group("training (defaults: the recipe's, else as shown)")

    def add(flag: str, **kw: Any) -> None:
        field = fields[flag.removeprefix("--").replace("-", "_")]
        about = kw.pop("help", None) or field.description
        default = field.get_default()
        shown = f"default {default}" if default is not None else "default: all"
        g.add_argument(flag, help=f"{about}; {shown}" if about else shown, **kw)

    add("--epochs", type=positive_int)
    add("--batch-size", type=positive_int)
    add("--lr", type=positive_float)
    add("--optimizer", choices=["sgd", "adam", "adamw"])
    add("--momentum", type=float)
    add("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    add("--weight-decay", type=float, help="on weights of rank >= 2")
    add("--schedule", choices=["constant", "step", "cosine", "onecycle"])
    add("--warmup-epochs", type=float)
    add("--label-smoothing", type=float)
    add("--seed", type=int, help="model initialisation and data order")
    add(
        "--train-samples",
        type=positive_int,
        metavar="N",
        help="train on a fixed random subset of N samples (quick checks)",
    )
    add(
        "--test-samples",
        type=positive_int,
        metavar="N",
        help="evaluate on a fixed random subset of N test samples",
    )


def run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by ``run`` and ``train``."""
    p.add_argument("--out", metavar="DIR", help=f"run directory (default: {default_out})")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip the stages DIR already finished and continue the unfinished one",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run in DIR (without it, a DIR holding a run is refused)",
    )
    add_data_dir(p)
    add_progress(p)
    add_threads(p)


def setting(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key.strip(), yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise argparse.ArgumentTypeError(f"'{shown}' is not a YAML value") from None


TRAIN_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "seed",
    "train_samples",
    "test_samples",
)


def json_out(args: argparse.Namespace, source: Path, run_dir: Path | None, name: str) -> Path:
    """Where a command writes its JSON: --json, else inside the run dir, else beside the file.

    Checked before the work: its folder can be written and it is not a directory.

    Raises:
        ConfigError: it cannot be written.
    """
    from dualprune.errors import ConfigError
    from dualprune.train.checkpoint import ensure_writable

    if getattr(args, "json", None):
        path = Path(args.json)
    else:
        base = run_dir if run_dir is not None else (source if source.is_dir() else source.parent)
        path = base / name
    if path.is_dir():
        raise ConfigError(f"'{path}' is a directory; give --json a file name")
    ensure_writable(path.parent)
    return path
