"""Pretrained weights shipped with the package: ``zoo:<name>`` in a recipe's ``pretrained``.

Each entry is one safetensors file under ``dualprune/models/zoo/`` with its
sha256, the model it fits, the data it was trained on, its measured test
accuracy and the command that trained it. Loading checks the sha256, so a
damaged or replaced file is refused with one line.

>>> from dualprune.models import pretrained
>>> pretrained.names()
['resnet20-cifar10', 'resnet56-cifar10']
>>> model = pretrained.load("resnet20-cifar10")   # a trained ResNet-20
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from safetensors.torch import load as safetensors_load
from torch import Tensor, nn

from dualprune.errors import CheckpointError, UnknownNameError, did_you_mean
from dualprune.models.registry import create

__all__ = ["PREFIX", "PRETRAINED", "Pretrained", "load", "names", "path", "state_dict"]

#: How a recipe's ``pretrained:`` names a zoo entry.
PREFIX = "zoo:"

_GPU_COMMAND = (
    "python scripts/pack_cifar10.py --data-dir ../shared/data .gpu/cifar10-jpeg.npz; "
    "bash scripts/gpu_zoo.sh 300   # one H200, both models side by side"
)


@dataclass(frozen=True)
class Pretrained:
    """One set of shipped weights.

    Attributes:
        name: The zoo name (``"resnet20-cifar10"``).
        model: The :func:`~dualprune.models.create` name the weights fit.
        dataset: The data set they were trained on.
        file: The safetensors file under ``dualprune/models/zoo/``.
        sha256: The file's sha256 (checked on every load).
        test_acc: Test accuracy measured with the package's own loader, in %.
        epochs: Training epochs.
        command: The command that trained them (see ``scripts/train_cifar_gpu.py``).
    """

    name: str
    model: str
    dataset: str
    file: str
    sha256: str
    test_acc: float
    epochs: int
    command: str


PRETRAINED: dict[str, Pretrained] = {
    p.name: p
    for p in (
        Pretrained(
            name="resnet20-cifar10",
            model="resnet20",
            dataset="cifar10",
            file="resnet20-cifar10.safetensors",
            sha256="3d6d16c6ac026c34bf6694a0cc84a906c653dde9af9e9f251cffc0a56acef746",
            test_acc=88.54,
            epochs=100,
            command=_GPU_COMMAND,
        ),
        Pretrained(
            name="resnet56-cifar10",
            model="resnet56",
            dataset="cifar10",
            file="resnet56-cifar10.safetensors",
            sha256="cffea59f18b05d00f545d523de13ebc6a86272bc2dd6357cb18a4392d0fa3ac9",
            test_acc=88.99,
            epochs=44,
            command=_GPU_COMMAND,
        ),
    )
}


def names() -> list[str]:
    """The zoo names, sorted."""
    return sorted(PRETRAINED)


def entry(name: str) -> Pretrained:
    """The zoo entry ``name`` (with or without the ``zoo:`` prefix).

    Raises:
        UnknownNameError: no such entry (the message lists the zoo).
    """
    key = name.removeprefix(PREFIX)
    if key not in PRETRAINED:
        raise UnknownNameError(
            f"pretrained weights '{PREFIX}{key}' are unknown{did_you_mean(key, names())}; "
            f"the zoo has: {', '.join(PREFIX + n for n in names())}"
        )
    return PRETRAINED[key]


def _checked_bytes(name: str) -> tuple[Path, bytes]:
    """The file of zoo entry ``name`` and its contents, read once and sha256-checked."""
    item = entry(name)
    file = Path(str(resources.files("dualprune.models") / "zoo" / item.file))
    if not file.is_file():
        raise CheckpointError(f"pretrained weights '{PREFIX}{item.name}': {file} is missing")
    blob = file.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != item.sha256:
        raise CheckpointError(
            f"pretrained weights '{PREFIX}{item.name}': {file} has sha256 {digest[:16]}…, "
            f"expected {item.sha256[:16]}…; reinstall the package"
        )
    return file, blob


def path(name: str) -> Path:
    """The checked file of zoo entry ``name``.

    Raises:
        UnknownNameError: no such entry.
        CheckpointError: the file is missing or its sha256 differs from the table's.
    """
    return _checked_bytes(name)[0]


def state_dict(name: str) -> dict[str, Tensor]:
    """The checked weights of zoo entry ``name`` as a state dict (the file is read once)."""
    return safetensors_load(_checked_bytes(name)[1])


def load(name: str) -> nn.Module:
    """A new model of the entry's architecture with the zoo weights loaded (strict)."""
    item = entry(name)
    model = create(item.model)
    model.load_state_dict(state_dict(name), strict=True)
    return model
