"""Errors a user can cause.

Every exception here is a :class:`DualpruneError`. The CLI catches that base
class, prints the message on one line without a traceback and exits with
code 2. Messages name the bad value (key, layer, file), say what is allowed
and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConstraintError",
    "DataError",
    "DualpruneError",
    "PlanError",
    "UnknownNameError",
    "one_line",
]


class DualpruneError(Exception):
    """Base class of every error caused by user input.

    The message is one line: line breaks in it (from a name or path the user
    gave) are shown escaped, as ``\\n``.
    """

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(message: str) -> str:
    """``message`` with its line breaks escaped (``\\n``), for one-line errors."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class ConfigError(DualpruneError, ValueError):
    """A bad option value: a non-positive epoch count, an unwritable directory..."""


class UnknownNameError(DualpruneError, KeyError):
    """A name (model, data set, structure, solver) that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return one_line(str(self.args[0])) if self.args else ""


class DataError(DualpruneError, FileNotFoundError):
    """Data set files are missing (and cannot be downloaded) or are corrupt."""


class CheckpointError(DualpruneError, ValueError):
    """A checkpoint is truncated, corrupt, or was saved from another model."""


class ConstraintError(DualpruneError, ValueError):
    """A constraint cannot apply to a weight (shape, ratio or option out of range)."""


class PlanError(DualpruneError, ValueError):
    """A plan is inconsistent with the model (a pattern matching no layer, ...)."""


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """Return ``"; known: a, b, c"`` plus a close match, for error messages."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{hint}; known: {', '.join(sorted(known))}"


class DivergedError(DualpruneError, ArithmeticError):
    """Training produced a non-finite loss or weight; nothing non-finite was saved."""
