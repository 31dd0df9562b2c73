"""What the registry knows about a model, and the pieces shared by every family.

Each family file (``lenet.py``, ``resnet_cifar.py``, ...) ends with a tuple
``MODELS`` of :class:`ModelSpec` rows, one per registered name; the registry
(``registry.py``) concatenates those tuples into one table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from dualprune.errors import ConfigError

__all__ = ["ModelSpec", "check_int", "construct", "count_parameters", "kaiming_init"]

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: its defaults and where it comes from.

    Attributes:
        name: Registered name, e.g. ``"resnet20"``.
        family: Family (file) it belongs to, e.g. ``"resnet_cifar"``.
        num_classes: Number of outputs built when ``num_classes`` is not given.
        input_shape: Expected input ``(C, H, W)`` without the batch dimension.
        description: One line saying what the model is.
        paper: Citation of the paper that defines it.
        builder: Function building it, called with keyword options only.
    """

    name: str
    family: str
    num_classes: int
    input_shape: tuple[int, int, int]
    description: str
    paper: str
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)


def check_int(owner: str, key: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` ≥ ``minimum``, else raise a one-line ConfigError.

    Args:
        owner: What the value configures (a model name or class), for the message.
        key: Option name, e.g. ``"num_classes"``.
        value: Value to check; ``bool`` is refused although it subclasses ``int``.
        minimum: Smallest allowed value.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: ``value`` is not an integer or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{owner}: {key}={value!r} is not allowed; {key} must be an integer >= {minimum}"
        )
    return value


def construct(cls: type[M], name: str, fixed: Mapping[str, Any], options: Mapping[str, Any]) -> M:
    """Build ``cls(**fixed, **options)`` after checking the user's options against its signature.

    ``fixed`` holds the hyperparameters implied by the registered name (depth,
    widths); ``options`` holds what the caller passed (``num_classes``,
    ``in_channels`` ...). An option that ``cls`` does not accept, or that would
    override a fixed hyperparameter, raises :class:`ConfigError` instead of a
    ``TypeError`` from deep inside the constructor.

    Args:
        cls: Model class to instantiate.
        name: Registered model name, for messages.
        fixed: Keyword arguments the registered name fixes.
        options: Keyword arguments from the caller.

    Returns:
        The constructed model.

    Raises:
        ConfigError: An option is unknown or overrides a fixed hyperparameter.
    """
    params = inspect.signature(cls).parameters
    allowed = sorted(k for k in params if k not in fixed and k != "self")
    for key in options:
        if key in fixed:
            raise ConfigError(
                f"model '{name}': option {key}={options[key]!r} is fixed by the name "
                f"({key}={fixed[key]!r}); pick another registered name instead"
            )
        if key not in params:
            raise ConfigError(
                f"model '{name}': unknown option '{key}'; allowed: {', '.join(allowed)}; "
                f"remove it or use one of those"
            )
    return cls(**fixed, **options)


def kaiming_init(model: nn.Module) -> None:
    """Initialise ``model`` in place the way He et al. (2015) do for ReLU networks.

    Conv weights ~ N(0, 2 / fan_out) (Kaiming normal, fan-out mode), BatchNorm
    γ = 1 and β = 0, conv and BatchNorm biases 0. ``Linear`` layers keep
    PyTorch's default initialisation.

    Args:
        model: Module whose ``Conv2d`` and ``BatchNorm2d`` layers are reset.

    References:
        He, Zhang, Ren, Sun. "Delving Deep into Rectifiers", ICCV 2015.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(all parameters, conv + linear weights)`` of ``model``.

    The second number counts only the ``weight`` tensors of ``Conv2d`` and
    ``Linear`` layers (no biases, no BatchNorm), the quantity that pruning
    papers report compression ratios against.

    Args:
        model: Any module.

    Returns:
        The two counts.
    """
    total = sum(p.numel() for p in model.parameters())
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    return total, weights
