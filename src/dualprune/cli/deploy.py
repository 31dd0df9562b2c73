"""Subcommands that make a compressed model deployable: compact, bench, export, hw."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add this module's subcommands to the ``dualprune`` subparsers ``sub``."""
