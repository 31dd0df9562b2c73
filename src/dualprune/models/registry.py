"""The model registry: one plain table from name to :class:`ModelSpec`, and its three verbs.

The table is the concatenation of the ``MODELS`` tuples at the end of each
family file, in a fixed order; adding a model means adding a thin builder
function and one :class:`ModelSpec` row to its family file. Names of the form
``"torchvision:NAME"`` and ``"timm:NAME"`` are resolved by
:mod:`dualprune.models.external` when those libraries are installed.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from dualprune.errors import UnknownNameError, did_you_mean
from dualprune.models import lenet, mobilenetv2, resnet_cifar, vgg
from dualprune.models.base import ModelSpec, check_int
from dualprune.models.external import PREFIXES, create_external, external_spec, split_prefix

__all__ = ["MODELS", "create", "names", "spec"]

MODELS: dict[str, ModelSpec] = {
    s.name: s for s in (*lenet.MODELS, *resnet_cifar.MODELS, *vgg.MODELS, *mobilenetv2.MODELS)
}


def names(pattern: str | None = None) -> list[str]:
    """Return the sorted built-in model names, optionally filtered by a shell-style pattern.

    Args:
        pattern: ``fnmatch`` pattern such as ``"resnet*"``; ``None`` lists all.

    Returns:
        Sorted registered names (library models such as ``"timm:..."`` are not listed).

    Example:
        >>> names("lenet*")
        ['lenet300', 'lenet5']
    """
    found = MODELS if pattern is None else fnmatch.filter(MODELS, pattern)
    return sorted(found)


def _unknown(name: str) -> UnknownNameError:
    prefixes = " or ".join(f"'{p}:NAME'" for p in PREFIXES)
    return UnknownNameError(
        f"unknown model '{name}'{did_you_mean(name, list(MODELS))}; use one of those, or "
        f"{prefixes} for a library model"
    )


def spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` registered as ``name``.

    Args:
        name: A registered name (see :func:`names`) or ``"timm:NAME"`` /
            ``"torchvision:NAME"``; library models get ImageNet defaults.

    Returns:
        The model's spec: default ``num_classes``, ``input_shape`` (C, H, W), paper...

    Raises:
        UnknownNameError: No model is registered under ``name``.
        ConfigError: ``name`` needs a library that is not installed.
    """
    if not isinstance(name, str):
        raise _unknown(repr(name))
    if name in MODELS:
        return MODELS[name]
    split = split_prefix(name)
    if split is None:
        raise _unknown(name)
    return external_spec(*split)


def create(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``, freshly initialised.

    Args:
        name: A registered name (see :func:`names`) or ``"timm:NAME"`` /
            ``"torchvision:NAME"``.
        num_classes: Number of outputs; ``None`` takes the spec's default (10
            for the built-in models, the library's default for library models).
        **kwargs: Model options, e.g. ``in_channels`` (all built-in models) or
            ``image_size`` (LeNets); passed on unchanged to library models.

    Returns:
        The model, in training mode.

    Raises:
        UnknownNameError: No model is registered under ``name``.
        ConfigError: ``num_classes`` is below 1, an option is unknown or out of
            range, or ``name`` needs a library that is not installed.

    Example:
        >>> model = create("resnet20", num_classes=100)
        >>> model.fc.out_features
        100
    """
    if not isinstance(name, str):
        raise _unknown(repr(name))
    if num_classes is not None:
        check_int(f"model '{name}'", "num_classes", num_classes)
    if name in MODELS:
        entry = MODELS[name]
        classes = entry.num_classes if num_classes is None else num_classes
        return entry.builder(num_classes=classes, **kwargs)
    split = split_prefix(name)
    if split is None:
        raise _unknown(name)
    return create_external(split[0], split[1], num_classes, kwargs)
