"""Solver settings declared once: in the constructor's signature.

A solver's constructor names its own hyperparameters with their defaults, and
their bounds as ``annotated_types`` metadata (``Annotated[float, Gt(1)] = 300.0``);
what several solvers share is one settings object (:class:`Cadence`, and
:class:`~dualprune.solvers.penalty.RhoSchedule` for ρ). From that single source:

- :func:`checked` validates a call of the constructor with one-line errors
  (``M=1.0 is not allowed; use a float > 1``);
- :func:`options_model` derives the pydantic model of a recipe's ``solver:``
  section, with each settings object flattened under its prefix
  (``rho_growth``, ``update_every``), so recipes stay flat;
- :func:`from_flat` turns those flat keys back into constructor arguments.

A new solver is a subclass plus one line in :data:`dualprune.solvers.SOLVERS`;
the recipe accepts it with no edit to ``pipeline/``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ConfigDict, create_model

from dualprune.errors import ConfigError, did_you_mean

__all__ = [
    "FIXED",
    "Cadence",
    "Settings",
    "SolverOptions",
    "check_value",
    "checked",
    "flat",
    "from_flat",
    "options_model",
    "requirement",
]

#: Constructor parameters that are not settings: the model, the plan and the coupled set.
FIXED = ("self", "model", "plan", "coupled")

F = TypeVar("F", bound=Callable[..., Any])


# ---- describing and checking one value ------------------------------------------------------


def _split(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(base type, annotated_types bounds, None allowed) of an annotation."""
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        annotation = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    bounds: list[Any] = []
    if get_origin(annotation) is Annotated:
        annotation, *meta = get_args(annotation)
        bounds = [m for m in meta if isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le))]
    return annotation, bounds, optional


def requirement(annotation: Any) -> str:
    """What a value of this annotation must be, in words: ``a float in (0, 1)``."""
    base, bounds, optional = _split(annotation)
    if get_origin(base) is Literal:
        text = "one of " + ", ".join(str(a) for a in get_args(base))
    else:
        noun = {int: "an int", float: "a float", bool: "true or false", str: "a string"}.get(
            base, f"a {getattr(base, '__name__', base)}"
        )
        lo = next((b for b in bounds if isinstance(b, (at.Gt, at.Ge))), None)
        hi = next((b for b in bounds if isinstance(b, (at.Lt, at.Le))), None)
        if lo is not None and hi is not None:
            left = "(" if isinstance(lo, at.Gt) else "["
            right = ")" if isinstance(hi, at.Lt) else "]"
            low = lo.gt if isinstance(lo, at.Gt) else lo.ge
            high = hi.lt if isinstance(hi, at.Lt) else hi.le
            text = f"{noun} in {left}{low}, {high}{right}"
        elif lo is not None:
            text = f"{noun} > {lo.gt}" if isinstance(lo, at.Gt) else f"{noun} >= {lo.ge}"
        elif hi is not None:
            text = f"{noun} < {hi.lt}" if isinstance(hi, at.Lt) else f"{noun} <= {hi.le}"
        else:
            text = noun
    return text + (" or None" if optional else "")


def _fits(value: Any, annotation: Any) -> bool:
    base, bounds, optional = _split(annotation)
    if value is None:
        return optional
    if get_origin(base) is Literal:
        return value in get_args(base)
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if base is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False  # nan and ±inf are no settings
        for b in bounds:
            ok = (
                (isinstance(b, at.Gt) and value > float(b.gt))  # type: ignore[arg-type]
                or (isinstance(b, at.Ge) and value >= float(b.ge))  # type: ignore[arg-type]
                or (isinstance(b, at.Lt) and value < float(b.lt))  # type: ignore[arg-type]
                or (isinstance(b, at.Le) and value <= float(b.le))  # type: ignore[arg-type]
            )
            if not ok:
                return False
        return True
    return True  # other types (ρ values, objects) are checked where they are used


def check_value(key: str, value: Any, annotation: Any) -> None:
    """Raise ConfigError ``key=value is not allowed; use ...`` if ``value`` breaks it."""
    if not _fits(value, annotation):
        raise ConfigError(f"{key}={value!r} is not allowed; use {requirement(annotation)}")


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(obj, include_extras=True)


def checked(init: F) -> F:
    """Decorate a constructor so every argument is checked against its annotation first."""
    signature = inspect.signature(init)
    hints_once = functools.cache(lambda: _hints(init))  # resolved at the first call, not per call

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        hints = hints_once()
        bound = signature.bind(self, *args, **kwargs)
        for key, value in bound.arguments.items():
            if key not in FIXED and key in hints:
                check_value(key, value, hints[key])
        return init(self, *args, **kwargs)

    return typing.cast(F, wrapper)


# ---- settings objects shared by several solvers -------------------------------------------


class Settings:
    """Base of a settings object: a frozen dataclass checked against its annotations.

    ``PREFIX`` names its fields in a flat recipe (``rho_`` + ``growth``).
    """

    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_value(self.PREFIX + f.name, getattr(self, f.name), hints[f.name])


@dataclasses.dataclass(frozen=True)
class Cadence(Settings):
    """When a solver runs its Z/dual step: every ``every`` epochs, or every ``every_batches``.

    Args:
        every: Z/dual step every this many epochs (calls of ``update()``).
        every_batches: If given, a Z/dual step every this many batches (calls of
            ``step()``) instead, and ``update()`` only counts epochs.
    """

    PREFIX: ClassVar[str] = "update_"

    every: Annotated[int, at.Ge(1)] = 1
    every_batches: Annotated[int, at.Ge(1)] | None = None

    def updates(self, epochs: int, batches_per_epoch: int) -> int:
        """Z/dual steps in a stage of ``epochs`` epochs of ``batches_per_epoch`` batches."""
        if self.every_batches is not None:
            return epochs * batches_per_epoch // self.every_batches
        return epochs // self.every


def flat(settings: Settings) -> dict[str, Any]:
    """A settings object as flat recipe keys: ``{"rho_growth": 1.3, ...}``."""
    return {
        settings.PREFIX + f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)  # type: ignore[arg-type]
    }


def _settings_type(annotation: Any) -> type[Settings] | None:
    base = _split(annotation)[0]
    return base if isinstance(base, type) and issubclass(base, Settings) else None


def _parameters(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, annotation, default) of every setting of ``cls``'s constructor."""
    init = cls.__init__  # type: ignore[misc]
    hints = _hints(init)
    out = []
    for p in inspect.signature(init).parameters.values():
        if p.name in FIXED or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out.append((p.name, hints.get(p.name, Any), p.default))
    return out


def _flat_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """Flat recipe key → (annotation, default), settings objects expanded under their prefix."""
    fields: dict[str, tuple[Any, Any]] = {}
    for name, annotation, default in _parameters(cls):
        group = _settings_type(annotation)
        if group is None:
            fields[name] = (annotation, default)
            continue
        hints = _hints(group)
        for f in dataclasses.fields(group):  # type: ignore[arg-type]
            fields[group.PREFIX + f.name] = (hints[f.name], f.default)
    return fields


def from_flat(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor keyword arguments of ``cls`` from flat recipe keys.

    Raises:
        ConfigError: a key that is no setting of ``cls`` (the message lists them).
    """
    flat = _flat_fields(cls)
    unknown = [k for k in options if k not in flat]
    if unknown:
        name = getattr(cls, "name", cls.__name__)
        hint = did_you_mean(unknown[0], list(flat)).split(";")[0]
        raise ConfigError(
            f"solver '{name}' has no setting '{unknown[0]}'{hint}; settings: {', '.join(flat)}"
        )
    kwargs: dict[str, Any] = {}
    for name, annotation, _ in _parameters(cls):
        group = _settings_type(annotation)
        if group is None:
            if name in options:
                kwargs[name] = options[name]
            continue
        given = {
            f.name: options[group.PREFIX + f.name]
            for f in dataclasses.fields(group)  # type: ignore[arg-type]
            if group.PREFIX + f.name in options
        }
        if given:
            kwargs[name] = group(**given)
    return kwargs


class SolverOptions(BaseModel):
    """Base of the derived recipe models (:func:`options_model`): flat keys, none unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str

    def options(self) -> dict[str, Any]:
        """The flat settings (everything but ``name``)."""
        return self.model_dump(exclude={"name"})


def options_model(cls: type) -> type[SolverOptions]:
    """The pydantic model of a recipe's ``solver:`` section for ``cls`` (``name`` + flat keys)."""
    fields: dict[str, Any] = {"name": (Literal[cls.name], ...)}  # type: ignore[attr-defined]
    for key, (annotation, default) in _flat_fields(cls).items():
        fields[key] = (annotation, default)
    title = f"{cls.__name__}Options"
    model: type[SolverOptions] = create_model(title, __base__=SolverOptions, **fields)
    model.__doc__ = f"Settings of :class:`dualprune.{cls.__name__}` (derived from its signature)."
    return model
