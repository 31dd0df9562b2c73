"""Models from optional libraries: ``"torchvision:NAME"`` and ``"timm:NAME"``.

Neither library is a dependency of dualprune. Each is imported only when a
name with its prefix is asked for; if it is missing, a one-line
:class:`~dualprune.errors.ConfigError` says how to install it. Whether the
dependency graph of torch-pruning can trace such a model depends on the
model; the built-in ones are checked by the test suite.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

from torch import nn

from dualprune.errors import ConfigError, UnknownNameError
from dualprune.models.base import ModelSpec

__all__ = ["PREFIXES", "create_external", "external_spec", "split_prefix"]

PREFIXES = ("timm", "torchvision")


def split_prefix(name: str) -> tuple[str, str] | None:
    """Return ``(prefix, model)`` for ``"prefix:model"`` with a known prefix, ``None`` for no colon.

    Args:
        name: Model name as given by the user.

    Returns:
        The split name, or ``None`` when ``name`` has no ``":"``.

    Raises:
        UnknownNameError: The prefix is not one of :data:`PREFIXES`.
        ConfigError: Nothing follows the colon.
    """
    if ":" not in name:
        return None
    prefix, model = name.split(":", 1)
    if prefix not in PREFIXES:
        raise UnknownNameError(
            f"unknown model library '{prefix}' in '{name}'; allowed prefixes: "
            f"{', '.join(p + ':' for p in PREFIXES)}; or use a built-in name without a colon"
        )
    if not model:
        raise ConfigError(
            f"model name '{name}' has no model after the colon; write e.g. '{prefix}:resnet18'"
        )
    return prefix, model


def _import(prefix: str, name: str) -> ModuleType:
    """Import the library behind ``prefix`` (``torchvision.models`` for torchvision)."""
    module = "torchvision.models" if prefix == "torchvision" else prefix
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"model '{name}' needs the optional package '{prefix}', which cannot be imported "
            f"({reason}); install it with `pip install {prefix}` or pick a built-in model"
        ) from None


def _known(prefix: str, lib: ModuleType) -> list[str] | None:
    """Names the library lists, or ``None`` if it has no listing function."""
    lister = getattr(lib, "list_models", None)
    return list(lister()) if callable(lister) else None


def _check_known(prefix: str, model: str, name: str, lib: ModuleType) -> None:
    known = _known(prefix, lib)
    if known is None:
        return
    if model not in known:
        close = difflib.get_close_matches(model, known, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise UnknownNameError(
            f"unknown model '{name}': {prefix} has no model '{model}'{hint}; "
            f"see {prefix}{'.models' if prefix == 'torchvision' else ''}.list_models()"
        )


def create_external(
    prefix: str, model: str, num_classes: int | None, kwargs: dict[str, Any]
) -> nn.Module:
    """Build ``model`` from the library ``prefix``, passing ``num_classes`` when it is given.

    Args:
        prefix: ``"timm"`` or ``"torchvision"``.
        model: The library's model name, e.g. ``"resnet18"``.
        num_classes: Number of outputs; ``None`` keeps the library's default.
        kwargs: Further keyword arguments for the library's builder.

    Returns:
        The library's model.

    Raises:
        ConfigError: The library cannot be imported.
        UnknownNameError: The library does not know ``model``.
    """
    name = f"{prefix}:{model}"
    lib = _import(prefix, name)
    _check_known(prefix, model, name, lib)
    options = dict(kwargs)
    if num_classes is not None:
        options["num_classes"] = num_classes
    if prefix == "timm":
        return lib.create_model(model, **options)
    builder = getattr(lib, "get_model", None)
    if callable(builder):
        return builder(model, **options)
    return getattr(lib, model)(**options)


def external_spec(prefix: str, model: str) -> ModelSpec:
    """Describe a library model with ImageNet defaults: 1000 classes, 3×224×224 input.

    The library must be importable and know ``model``; the defaults are not
    read from the library, so check them for models trained on other data.

    Args:
        prefix: ``"timm"`` or ``"torchvision"``.
        model: The library's model name.

    Returns:
        A :class:`ModelSpec` whose builder calls :func:`create_external`.

    Raises:
        ConfigError: The library cannot be imported.
        UnknownNameError: The library does not know ``model``.
    """
    name = f"{prefix}:{model}"
    _check_known(prefix, model, name, _import(prefix, name))

    def build(num_classes: int | None = None, **kwargs: Any) -> nn.Module:
        return create_external(prefix, model, num_classes, kwargs)

    return ModelSpec(
        name=name,
        family=prefix,
        num_classes=1000,
        input_shape=(3, 224, 224),
        description=f"{model} from {prefix} (ImageNet defaults assumed)",
        paper=f"see the {prefix} documentation of {model}",
        builder=build,
    )
