"""Print the catalogue of built-in models as a Markdown table: ``python -m dualprune.models``.

The counts in docs/models.md come from this script. An optional argument sets
the number of classes for every model (``python -m dualprune.models 100``).
"""

from __future__ import annotations

import argparse

from dualprune.errors import DualpruneError
from dualprune.models.base import count_parameters
from dualprune.models.registry import MODELS, create

__all__ = ["table"]


def table(num_classes: int | None = None) -> str:
    """Markdown table of every registered model with its parameter counts.

    Args:
        num_classes: Classes to build every model with; ``None`` uses each spec's default.

    Returns:
        The table, one row per model in registry order.
    """
    lines = [
        "| name | params | conv+fc weights | input (C, H, W) | classes |",
        "|---|---:|---:|---|---:|",
    ]
    for name, entry in MODELS.items():
        total, weights = count_parameters(create(name, num_classes))
        shape = "×".join(str(d) for d in entry.input_shape)
        lines.append(
            f"| `{name}` | {total:,} | {weights:,} | {shape} | {num_classes or entry.num_classes} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m dualprune.models", description=__doc__)
    parser.add_argument("num_classes", nargs="?", type=int, help="classes for every model")
    try:
        print(table(parser.parse_args().num_classes))
    except DualpruneError as exc:
        parser.exit(2, f"error: {exc}\n")
