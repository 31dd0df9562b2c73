"""The ``dualprune`` command line.

Errors a user can cause (bad names, missing data, bad checkpoints, bad
options) print one line on stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from dualprune import __version__
from dualprune.errors import DualpruneError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data root (default: $DUALPRUNE_DATA, else ~/.cache/dualprune/data)",
    )


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="CPU threads for torch (default: torch's choice; 1 on a busy machine)",
    )


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (default: shown on a terminal)",
    )


def _train_options(p: argparse.ArgumentParser) -> None:
    from dualprune.train.config import TrainConfig

    fields = TrainConfig.model_fields
    g = p.add_argument_group("training (defaults: the recipe's, else as shown)")

    def add(flag: str, **kw: Any) -> None:
        field = fields[flag.removeprefix("--").replace("-", "_")]
        about = kw.pop("help", None) or field.description
        default = field.get_default()
        shown = f"default {default}" if default is not None else "default: all"
        g.add_argument(flag, help=f"{about}; {shown}" if about else shown, **kw)

    add("--epochs", type=_positive_int)
    add("--batch-size", type=_positive_int)
    add("--lr", type=_positive_float)
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
        type=_positive_int,
        metavar="N",
        help="train on a fixed random subset of N samples (quick checks)",
    )
    add(
        "--test-samples",
        type=_positive_int,
        metavar="N",
        help="evaluate on a fixed random subset of N test samples",
    )


def _run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by ``run`` and ``train``."""
    p.add_argument("--out", metavar="DIR", help=f"run directory (default: {default_out})")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip the stages DIR already finished and continue the unfinished one",
    )
    _add_data_dir(p)
    _add_progress(p)
    _add_threads(p)


def _setting(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a YAML value") from None


_TRAIN_KEYS = (
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


def _execute(recipe: Any, args: argparse.Namespace) -> int:
    from dualprune.pipeline import run

    result = run(recipe, resume=args.resume, progress=args.progress)
    print()
    print(result.table)
    print()
    names = {"hard_prune": "hard prune (retrain-free)"}
    for stage, r in result.stages.items():
        print(
            f"{names.get(stage, stage):<26} test accuracy {100 * r['test_acc']:.2f}%  "
            f"(loss {r['test_loss']:.4f})"
        )
    print(f"report: {result.report}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``dualprune run [RECIPE]``."""
    from dualprune.pipeline import load_recipe

    settings = dict(args.settings or [])
    recipe = load_recipe(args.recipe, settings, out=args.out, data_dir=args.data_dir)
    return _execute(recipe, args)


def cmd_report(args: argparse.Namespace) -> int:
    """``dualprune report RUN_DIR``."""
    from dualprune.pipeline import report_run

    path, table = report_run(args.run_dir)
    print(table)
    print(f"\nreport: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``dualprune train --model M --dataset D``."""
    from dualprune.pipeline import Recipe
    from dualprune.train.config import parse

    train = {k: v for k, v in vars(args).items() if k in _TRAIN_KEYS and v is not None}
    recipe = parse(
        Recipe,
        {
            "model": args.model,
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "out": args.out or f"runs/{args.model}-{args.dataset}".replace(":", "_"),
            "num_classes": args.num_classes,
            "pretrain": train,
        },
        "options",
    )
    return _execute(recipe, args)


def cmd_eval(args: argparse.Namespace) -> int:
    """``dualprune eval CHECKPOINT``."""
    from dualprune.pipeline import evaluate_checkpoint

    r = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        model_name=args.model,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
    )
    print(r["table"])
    print()
    print(
        f"{r['model']} ({r['where']}) on {r['dataset']} test: "
        f"accuracy {100 * r['acc']:.2f}%  loss {r['loss']:.4f}  ({r['samples']} samples)"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``dualprune models``: the model zoo."""
    from dualprune import models

    rows = [(n, models.spec(n)) for n in models.names()]
    width = max(len(n) for n, _ in rows)
    for name, spec in rows:
        shape = "×".join(map(str, spec.input_shape))
        print(f"{name:<{width}}  {shape:<8}  {spec.description}")
    print("\nAlso: torchvision:NAME and timm:NAME when those packages are installed.")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """``dualprune datasets``: known data sets and the data root in use."""
    from dualprune import data

    print(f"data root: {data.resolve_root(args.data_dir)}")
    for name in data.names():
        print(f"  {name}")
    print("  imagefolder:PATH  (PATH/{train,test}/<class>/*.jpg|png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dualprune`` command."""
    parser = _Parser(
        prog="dualprune",
        description=(
            "Compress neural networks by pruning and quantization as constrained optimization."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dualprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "run",
        help="run a recipe (default: the built-in quickstart)",
        description=(
            "Run a recipe (a YAML file or a built-in name): pretrain or load, compress "
            "with the solver, hard prune, retrain with masks, evaluate, export, report."
        ),
    )
    p.add_argument("recipe", nargs="?", help="recipe file or built-in name (default: quickstart)")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=_setting,
        metavar="KEY=VALUE",
        help=(
            "override a recipe key (YAML value), e.g. --set compress.epochs=2 "
            "--set solver.rho=0.01; --set pretrain=null drops a stage"
        ),
    )
    _run_options(p, default_out="the recipe's")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "report",
        help="(re)write the report of a run",
        description="Write report.md, report.json and the plots of a run; print its table.",
    )
    p.add_argument("run_dir", help="a run directory written by 'dualprune run'")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "train",
        help="train a model on a data set",
        description="Train a model from the zoo on a data set and evaluate it.",
    )
    p.add_argument("--model", required=True, help="model name (see 'dualprune models')")
    p.add_argument(
        "--dataset",
        required=True,
        help="mnist, fashion_mnist, cifar10, cifar100 or imagefolder:PATH",
    )
    p.add_argument("--num-classes", type=_positive_int, help="default: the data set's")
    _run_options(p, default_out="runs/MODEL-DATASET")
    _train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run or a checkpoint",
        description="Evaluate a run's final model, or a stage checkpoint, on a test set.",
    )
    p.add_argument("checkpoint", help="a run directory, a stage directory or a checkpoint.pt")
    p.add_argument("--dataset", help="default: the data set it was trained on")
    p.add_argument("--model", help="require the checkpoint to be of this model")
    p.add_argument("--batch-size", type=_positive_int, default=1000)
    _add_data_dir(p)
    _add_threads(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list the model zoo", description="List the model zoo.")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "datasets",
        help="list data sets and the data root",
        description="List known data sets and where they are read from.",
    )
    _add_data_dir(p)
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dualprune`` console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args))
    except DualpruneError as err:
        print(f"dualprune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dualprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
