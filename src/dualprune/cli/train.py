"""Subcommands that train and compress: run, report, train, eval, models, datasets."""

from __future__ import annotations

import argparse
from typing import Any

from dualprune.cli.args import (
    TRAIN_KEYS,
    add_data_dir,
    add_threads,
    positive_int,
    run_options,
    setting,
    train_options,
)


def _execute(recipe: Any, args: argparse.Namespace) -> int:
    from dualprune.pipeline import run

    result = run(recipe, resume=args.resume, overwrite=args.overwrite, progress=args.progress)
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

    train = {k: v for k, v in vars(args).items() if k in TRAIN_KEYS and v is not None}
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


def register(sub: Any) -> None:
    """Add this module's subcommands to the ``dualprune`` subparsers ``sub``."""
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
        type=setting,
        metavar="KEY=VALUE",
        help=(
            "override a recipe key (YAML value), e.g. --set compress.epochs=2 "
            "--set solver.rho=0.01; --set pretrain=null drops a stage"
        ),
    )
    run_options(p, default_out="the recipe's")
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
    p.add_argument("--num-classes", type=positive_int, help="default: the data set's")
    run_options(p, default_out="runs/MODEL-DATASET")
    train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run or a checkpoint",
        description="Evaluate a run's final model, or a stage checkpoint, on a test set.",
    )
    p.add_argument("checkpoint", help="a run directory, a stage directory or a checkpoint.pt")
    p.add_argument("--dataset", help="default: the data set it was trained on")
    p.add_argument("--model", help="require the checkpoint to be of this model")
    p.add_argument("--batch-size", type=positive_int, default=1000)
    add_data_dir(p)
    add_threads(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list the model zoo", description="List the model zoo.")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "datasets",
        help="list data sets and the data root",
        description="List known data sets and where they are read from.",
    )
    add_data_dir(p)
    p.set_defaults(func=cmd_datasets)
