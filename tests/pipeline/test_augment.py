"""The recipe's augment/pad options reach the training loader."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dualprune.errors import ConfigError
from dualprune.pipeline.stages import augmentation
from dualprune.train.config import TrainConfig, parse


@pytest.mark.parametrize(
    ("mode", "default", "expected"),
    [
        ("auto", True, {"augment": True, "pad": 3, "flip": True}),
        ("auto", False, {"augment": False, "pad": 3, "flip": False}),
        ("none", True, {"augment": False, "pad": 3, "flip": False}),
        ("shift", False, {"augment": True, "pad": 3, "flip": False}),
        ("shift_flip", False, {"augment": True, "pad": 3, "flip": True}),
    ],
)
def test_augmentation_modes(mode: str, default: bool, expected: dict[str, object]) -> None:
    cfg = TrainConfig(augment=mode, pad=3)
    assert augmentation(cfg, SimpleNamespace(augment=default)) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [({"augment": "mirror"}, "augment: Input should be 'auto'"), ({"pad": 0}, "pad: Input should")],
)
def test_bad_augment_options_are_one_line(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(TrainConfig, data, "pretrain")
    assert expected in str(info.value) and "\n" not in str(info.value)
