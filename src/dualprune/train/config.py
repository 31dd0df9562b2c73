"""Training options, validated (pydantic) with one-line errors."""

from __future__ import annotations

import itertools
import reprlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dualprune.errors import ConfigError

__all__ = ["MAX_BATCH", "MAX_EPOCHS", "TrainConfig", "validation_message"]

MAX_EPOCHS = 100_000  # larger is a typo, not a plan
MAX_BATCH = 1 << 20


class TrainConfig(BaseModel):
    """Everything that decides a training run, besides the model and the data.

    The defaults are safe for every model of the zoo (lr 0.01 is Caffe's LeNet-5
    rate; that LeNet-5 diverges at 0.05). BatchNorm CIFAR networks train faster
    with lr 0.1. Recipes set their own (see ``dualprune/recipes/``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epochs: int = Field(
        10, ge=0, le=MAX_EPOCHS, description="passes over the training set (0: skip)"
    )
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)
    eval_batch_size: int = Field(1000, gt=0, le=MAX_BATCH)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0, description="base (peak) learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum / Adam β1")
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "step", "cosine", "onecycle"] = "cosine"
    milestones: tuple[float, ...] = Field((0.5, 0.75), description="step schedule, fractions")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule decay")
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: Literal["auto", "none", "shift", "shift_flip"] = Field(
        "auto",
        description=(
            "auto: the data set's default (CIFAR and 32x32 folders: shift_flip, MNIST: none); "
            "shift: random crop from a copy zero-padded by `pad` pixels; shift_flip: also "
            "mirror half of the images"
        ),
    )
    pad: int = Field(4, ge=1, le=16, description="largest random shift, pixels (augment)")
    seed: int = 0
    train_samples: int | None = Field(
        None, gt=0, description="use a fixed random subset of N (quick checks)"
    )
    test_samples: int | None = Field(None, gt=0, description="evaluate on a fixed random subset")


class _Shown(reprlib.Repr):
    """A value shown in a message: short, even for a YAML alias bomb or deep nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple = 3, 8, 8, 8
        self.maxstring, self.maxother, self.maxlong = 80, 80, 40

    def repr(self, x: Any) -> str:
        text = super().repr(x)
        return text if len(text) <= 200 else text[:197] + "..."

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:  # keys in the recipe's order
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [
            f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
            for k, v in itertools.islice(x.items(), self.maxdict)
        ]
        return "{" + ", ".join(items + ["..."] * (len(x) > self.maxdict)) + "}"


_SHOWN = _Shown()
MAX_ERRORS = 5  # errors named in one message; the rest are counted


def validation_message(err: ValidationError, where: str = "") -> str:
    """Turn a pydantic error into one line: ``where: key.path: message (got value)``."""
    parts = []
    errors = err.errors()
    for e in errors[:MAX_ERRORS]:
        key = ".".join(str(p) for p in e["loc"]) or "value"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = f" (got {_SHOWN.repr(e['input'])})" if e["type"] != "missing" and "input" in e else ""
        parts.append(f"{key}: {msg}{got}")
    if len(errors) > MAX_ERRORS:
        parts.append(f"and {len(errors) - MAX_ERRORS} more")
    prefix = f"{where}: " if where else ""
    return prefix + "; ".join(parts)


def parse(model: type[BaseModel], data: dict[str, Any], where: str = "") -> Any:
    """Validate ``data`` into ``model`` or raise :class:`ConfigError` with one line."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(err, where)) from None
