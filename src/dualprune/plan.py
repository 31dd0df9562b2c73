"""Plan: which layer gets which constraint (docs/design.md, concept 2).

A plan maps module-name patterns to constraints. Targets are the ``weight``
parameters of ``Conv1d``, ``Conv2d`` and ``Linear`` modules; keys of
:meth:`Plan.resolve` are module names (``"conv1"``, ``"layer1.0.conv1"``), so the
constrained tensor of key ``k`` is ``f"{k}.weight"``.

Patterns are shell globs (``fnmatch``, case-sensitive; ``*`` also crosses dots,
so ``"layer1.*"`` matches ``"layer1.0.conv1"``) or, with a ``re:`` prefix,
regular expressions that must match the whole name (``"re:layer[12]\\..*conv1"``).
Patterns are tried in the order given and the **first match wins**; ``exclude``
removes layers whatever matches them; ``default`` covers every remaining layer
that no pattern matched.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor, nn

from dualprune.constraints import Constraint, from_dict
from dualprune.constraints.budget import allocate, sparsity_part
from dualprune.errors import DualpruneError, PlanError, did_you_mean

__all__ = [
    "PRUNABLE",
    "Plan",
    "layer_of",
    "layer_weight",
    "module_of",
    "prunable_layers",
    "weight_key",
]

#: Module types whose ``weight`` a plan can constrain.
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_KEYS = ("layers", "exclude", "default")
_SHOWN = 6  # layer names listed in an error message


def weight_key(layer: str) -> str:
    """The parameter name of a layer's constrained weight: ``"conv1"`` → ``"conv1.weight"``.

    Plans name layers (module names); masks, storage, export and hardware name
    parameters. This and :func:`layer_of` are the one bridge between the two.
    """
    return f"{layer}.weight" if layer else "weight"


def layer_of(key: str) -> str:
    """The layer of a weight's parameter name: ``"conv1.weight"`` → ``"conv1"`` (inverse of
    :func:`weight_key`)."""
    return key.removesuffix(".weight") if key != "weight" else ""


def module_of(param: str) -> str:
    """The module that owns a parameter: ``"layer1.0.bn1.bias"`` → ``"layer1.0.bn1"``."""
    return param.rpartition(".")[0]


def layer_weight(module: nn.Module) -> Tensor:
    """``module.weight`` as a Tensor (a prunable layer always has one).

    Raises:
        PlanError: the module has no weight tensor.
    """
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor):
        raise PlanError(f"{type(module).__name__} has no weight tensor to constrain")
    return w


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv1d/Conv2d/Linear modules of ``model`` by name, in ``named_modules()`` order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


class _Pattern:
    """A glob, or a ``re:`` regular expression matched against the whole name."""

    def __init__(self, text: object, where: str) -> None:
        if not isinstance(text, str) or not text:
            raise PlanError(
                f"{where} pattern {text!r} is not a non-empty string; write a "
                "module name, a glob such as 'layer1.*' or 're:REGEX'"
            )
        self.text = text
        self._regex = None
        if text.startswith("re:"):
            try:
                self._regex = re.compile(text[3:])
            except re.error as e:
                raise PlanError(
                    f"{where} pattern '{text}' is not a valid regular "
                    f"expression ({e}); fix it or drop the 're:' prefix"
                ) from None

    def __call__(self, name: str) -> bool:
        if self._regex is not None:
            return self._regex.fullmatch(name) is not None
        return fnmatch.fnmatchcase(name, self.text)


def _patterns(value: object, where: str) -> tuple[str, ...]:
    """Normalise ``exclude`` / ``include``: one string or a sequence of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise PlanError(f"{where}={value!r} is not allowed; give a pattern or a list of patterns")
    return tuple(_Pattern(p, where).text for p in items)


def _layer_list(layers: Sequence[str]) -> str:
    more = f", ... ({len(layers)} in all)" if len(layers) > _SHOWN else ""
    return ", ".join(layers[:_SHOWN]) + more


def _no_match(kind: str, pattern: str, model: nn.Module, layers: Sequence[str]) -> PlanError:
    """The one-line error for a pattern that matches no prunable layer."""
    others = [
        f"{n} ({type(m).__name__})"
        for n, m in model.named_modules()
        if n and n not in layers and _Pattern(pattern, kind)(n)
    ]
    note = f" (only modules without a prunable weight: {', '.join(others[:3])})" if others else ""
    close = difflib.get_close_matches(pattern, list(layers), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return PlanError(
        f"{kind} pattern '{pattern}' matches no Conv1d/Conv2d/Linear layer{note}"
        f"{hint}; layers: {_layer_list(layers)}; fix the name, glob or 're:' regex"
    )


def _matching(texts: Sequence[str], kind: str, model: nn.Module, names: list[str]) -> list[str]:
    """Layers matched by any of ``texts``, in model order; a pattern matching none raises."""
    if not names:
        raise PlanError(
            f"{type(model).__name__} has no Conv1d/Conv2d/Linear layer to constrain; "
            "a plan needs at least one"
        )
    hits: set[str] = set()
    for text in texts:
        found = {n for n in names if _Pattern(text, kind)(n)}
        if not found:
            raise _no_match(kind, text, model, names)
        hits |= found
    return [n for n in names if n in hits]


class Plan:
    """Which constraint applies to which layer.

    Args:
        mapping: ``{pattern: constraint}``; patterns are globs or ``re:`` regexes
            over module names, tried in order, first match wins.
        exclude: Patterns of layers that get no constraint, whatever matches them.
        default: Constraint for every prunable layer no pattern matched (or ``None``).

    Raises:
        PlanError: A pattern is not a string or not a valid regex, or a value is
            not a :class:`~dualprune.constraints.Constraint`.

    Example:
        >>> plan = Plan({"conv*": Sparsity(0.8, "filter"),
        ...              "fc1": Sparsity(0.99) & Quantization(bits=3)}, exclude=["fc2"])
        >>> plan.resolve(model)
        {'conv1': Sparsity(ratio=0.8, structure='filter'), ...}
    """

    def __init__(
        self,
        mapping: Mapping[str, Constraint] | None = None,
        exclude: str | Sequence[str] = (),
        default: Constraint | None = None,
    ) -> None:
        mapping = {} if mapping is None else mapping
        if not isinstance(mapping, Mapping):
            raise PlanError(
                f"Plan mapping must be a dict of pattern -> constraint, "
                f"got {type(mapping).__name__}"
            )
        self.mapping: dict[str, Constraint] = {}
        for pattern, constraint in mapping.items():
            _Pattern(pattern, "layers")
            self.mapping[pattern] = _check_constraint(constraint, f"layers['{pattern}']")
        self.exclude: tuple[str, ...] = _patterns(exclude, "exclude")
        self.default = None if default is None else _check_constraint(default, "default")

    def resolve(self, model: nn.Module) -> dict[str, Constraint]:
        """Constraint of every constrained layer, keyed by module name in model order.

        Every constraint's ``check(weight, name)`` runs here, so shape problems (a
        block larger than the weight, N:M with M not dividing the inputs, ...) fail
        now and name the layer.

        Raises:
            PlanError: The model has no prunable layer; a pattern (of ``layers`` or
                ``exclude``) matches no Conv1d/Conv2d/Linear layer; a pattern only
                matches excluded layers or is shadowed by earlier patterns.
            ConstraintError: A constraint cannot apply to the layer it resolved to.
        """
        layers = prunable_layers(model)
        names = list(layers)
        excluded = set(_matching(self.exclude, "exclude", model, names))
        patterns = [(_Pattern(t, "layers"), t, c) for t, c in self.mapping.items()]
        won: dict[str, list[str]] = {t: [] for t in self.mapping}
        resolved: dict[str, Constraint] = {}
        for name in names:
            if name in excluded:
                continue
            for match, text, constraint in patterns:
                if match(name):
                    resolved[name] = constraint
                    won[text].append(name)
                    break
            else:
                if self.default is not None:
                    resolved[name] = self.default
        for match, text, _ in patterns:
            if won[text]:
                continue
            hits = [n for n in names if match(n)]
            if not hits:
                raise _no_match("layers", text, model, names)
            free = [n for n in hits if n not in excluded]
            if not free:
                raise PlanError(
                    f"layers pattern '{text}' only matches excluded layers "
                    f"({_layer_list(hits)}); drop the pattern or the exclusion"
                )
            owner = next(t for m, t, _ in patterns if m(free[0]))
            raise PlanError(
                f"layers pattern '{text}' is shadowed: its layers ({_layer_list(free)})"
                f" already match the earlier pattern '{owner}' and the first match "
                "wins; put the more specific pattern first"
            )
        for name, constraint in resolved.items():
            constraint.check(layer_weight(layers[name]), weight_key(name))
        return resolved

    # ---- plain data -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"layers": {pattern: spec}, "exclude": [...], "default": spec}``, empty parts omitted.

        A spec is the constraint's ``to_dict()``; an intersection is written as the
        list of its parts, the form :meth:`from_dict` reads.
        """
        out: dict[str, Any] = {"layers": {t: _spec(c) for t, c in self.mapping.items()}}
        if self.exclude:
            out["exclude"] = list(self.exclude)
        if self.default is not None:
            out["default"] = _spec(self.default)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Build a plan from :meth:`to_dict`'s form (what a recipe's ``plan:`` section holds).

        ``layers`` maps patterns to a constraint dict (``{type: sparsity, ratio: 0.8}``)
        or a list of them, meaning their intersection.
        """
        if not isinstance(d, Mapping):
            raise PlanError(
                f"a plan must be a mapping with keys {', '.join(_KEYS)}; got {type(d).__name__}"
            )
        for key in d:
            if key not in _KEYS:
                raise PlanError(f"plan key '{key}' is unknown{did_you_mean(str(key), _KEYS)}")
        layers = d.get("layers") or {}
        if not isinstance(layers, Mapping):
            raise PlanError(
                f"plan 'layers' must map patterns to constraints, got {type(layers).__name__}"
            )
        mapping = {p: _build(v, f"layers['{p}']") for p, v in layers.items()}
        default = d.get("default")
        return cls(
            mapping,
            exclude=d.get("exclude") or (),
            default=None if default is None else _build(default, "default"),
        )

    @classmethod
    def from_yaml(cls, source: str | Path) -> Plan:
        """Build a plan from YAML text, or from a ``.yaml``/``.yml`` file path."""
        if not isinstance(source, (str, Path)):
            raise PlanError(
                f"Plan.from_yaml takes YAML text or a file path, got {type(source).__name__}"
            )
        where = "plan YAML"
        if isinstance(source, Path) or _looks_like_path(source):
            path = Path(source)
            if not path.is_file():
                raise PlanError(
                    f"plan file '{path}' does not exist; give an existing "
                    ".yaml file or the YAML text itself"
                )
            where, source = f"plan file '{path}'", path.read_text()
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise PlanError(f"{where} is not valid YAML{at}: {problem}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        """The plan as YAML text that :meth:`from_yaml` reads back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        extra = f", exclude={list(self.exclude)!r}" if self.exclude else ""
        extra += f", default={self.default!r}" if self.default is not None else ""
        return f"Plan({self.mapping!r}{extra})"

    # ---- global budget -----------------------------------------------------------------

    @classmethod
    def global_(
        cls,
        constraint: Constraint,
        model: nn.Module,
        *,
        floor: float = 0.0,
        ceiling: float = 0.99,
        exclude: str | Sequence[str] = (),
        include: str | Sequence[str] = "*",
    ) -> Plan:
        """One overall pruning ratio, allocated across layers by global magnitude.

        Every covered group of weights (one weight for ``irregular``; a filter, an
        input channel, a GEMM column or a tile for ``filter`` / ``channel`` /
        ``column`` / ``block``) is scored by ||g||²/|g|; one threshold over the
        pooled scores removes ``constraint.ratio`` of all covered *weights*; each
        layer's ratio is clipped to [floor, ceiling] and the threshold moves so that
        the unclipped layers absorb the difference. The total is exact for
        ``irregular`` and within one group's weights otherwise; deterministic. The
        math is in :mod:`dualprune.constraints.budget`.

        Args:
            constraint: A :class:`~dualprune.constraints.Sparsity` (or ``Sparsity &
                Quantization``); its ratio is the global fraction of covered weights
                to remove; every layer gets a copy with its own ratio.
            model: The model whose current weights are scored.
            floor: Smallest per-layer ratio.
            ceiling: Largest per-layer ratio (< 1).
            exclude: Patterns of layers left out of the budget (and of the plan).
            include: Patterns of the layers that share the budget.

        Returns:
            A plan with one exact-name entry per layer, ``{layer: constraint.with_ratio(r_i)}``.

        Raises:
            PlanError: A pattern matches no layer, or none is left to share the budget.
            ConstraintError: A constraint or structure a budget cannot share (pattern,
                nm, tile_rows, tile_cols), floor/ceiling out of range, or a ratio that
                cannot be met within [floor, ceiling]
                (from :func:`~dualprune.constraints.budget.allocate`).

        Example:
            >>> plan = Plan.global_(Sparsity(0.9), model, ceiling=0.98, exclude="fc2")
        """
        sparsity_part(constraint)  # fail before scoring anything
        layers = prunable_layers(model)
        names = list(layers)
        dropped = _matching(_patterns(exclude, "exclude"), "exclude", model, names)
        chosen = _matching(_patterns(include, "include"), "include", model, names)
        chosen = [n for n in chosen if n not in dropped]
        if not chosen:
            raise PlanError(
                "Plan.global_: include/exclude leave no layer to share the budget; "
                f"layers: {_layer_list(names)}"
            )
        weights = {n: layer_weight(layers[n]).detach() for n in chosen}
        ratios = allocate(weights, constraint, floor, ceiling)
        with_ratio = constraint.with_ratio  # type: ignore[attr-defined]  # Sparsity, Intersection
        return cls({_exact(n): with_ratio(r) for n, r in ratios.items()})


def _looks_like_path(text: str) -> bool:
    """One line naming a ``.yaml``/``.yml`` file or an existing file: a path, not YAML text."""
    if "\n" in text:
        return False
    if text.endswith((".yaml", ".yml")):
        return True
    try:
        return Path(text).is_file()
    except OSError:  # a name too long for the file system: YAML text
        return False


def _exact(name: str) -> str:
    """A pattern matching exactly ``name`` (a regex when the name holds glob characters)."""
    return f"re:{re.escape(name)}" if any(c in name for c in "*?[") else name


def _check_constraint(value: object, where: str) -> Constraint:
    if not isinstance(value, Constraint):
        raise PlanError(
            f"plan {where} is {value!r}, not a constraint; use Sparsity(...), "
            "Quantization(...) or a & b for both"
        )
    return value


def _spec(c: Constraint) -> Any:
    """Plain-data form of ``c``; an intersection becomes the flat list of its parts."""

    def flat(d: dict[str, Any]) -> list[dict[str, Any]]:
        if d.get("type") != "intersection":
            return [d]
        return [leaf for part in d["parts"] for leaf in flat(part)]

    parts = flat(c.to_dict())
    return parts[0] if len(parts) == 1 else parts


def _build(value: object, where: str) -> Constraint:
    """A constraint from a dict spec, a list of specs (their intersection) or a Constraint."""
    if isinstance(value, Constraint):
        return value
    if isinstance(value, list) and value:
        parts = [_build(v, f"{where}[{i}]") for i, v in enumerate(value)]
        out = parts[0]
        for part in parts[1:]:
            out = out & part
        return out
    if not isinstance(value, Mapping):
        raise PlanError(
            f"plan {where} is {value!r}; write a constraint such as "
            "{type: sparsity, ratio: 0.9} or a list of them"
        )
    try:
        return from_dict(dict(value))
    except DualpruneError as e:
        raise type(e)(f"plan {where}: {e}") from None
    except (TypeError, ValueError, KeyError) as e:
        raise PlanError(f"plan {where}: {value!r} is not a valid constraint ({e})") from None
