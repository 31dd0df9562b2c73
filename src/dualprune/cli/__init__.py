"""The ``dualprune`` command line.

Errors a user can cause (bad names, missing data, bad checkpoints, bad
options) print one line on stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dualprune import __version__
from dualprune.cli import deploy, train
from dualprune.cli.args import Parser
from dualprune.errors import DualpruneError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dualprune`` command."""
    parser = Parser(
        prog="dualprune",
        description=(
            "Compress neural networks by pruning and quantization as constrained optimization."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dualprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train.register(sub)
    deploy.register(sub)
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
