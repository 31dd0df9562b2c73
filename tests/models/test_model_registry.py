"""The registry table and its verbs: names, spec, create, and the errors users can cause."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from dualprune import models
from dualprune.errors import ConfigError, UnknownNameError

EXPECTED = {
    "lenet5",
    "lenet300",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "resnet18_cifar",
    "vgg16_cifar",
    "mobilenetv2_cifar",
}


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_names_sorted_and_complete() -> None:
    names = models.names()
    assert names == sorted(names)
    assert set(names) == EXPECTED


def test_names_pattern() -> None:
    assert models.names("resnet*") == [
        "resnet110",
        "resnet18_cifar",
        "resnet20",
        "resnet32",
        "resnet56",
    ]
    assert models.names("nothing*") == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spec_fields(name: str) -> None:
    spec = models.spec(name)
    assert isinstance(spec, models.ModelSpec)
    assert spec.name == name
    assert spec.num_classes == 10
    assert len(spec.input_shape) == 3 and all(d > 0 for d in spec.input_shape)
    assert spec.family and spec.description and spec.paper
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 100  # type: ignore[misc]


def test_default_num_classes_comes_from_spec() -> None:
    assert models.create("lenet300").fc3.out_features == models.spec("lenet300").num_classes


def test_create_returns_fresh_modules() -> None:
    a, b = models.create("lenet5"), models.create("lenet5")
    assert isinstance(a, nn.Module) and a is not b
    assert a.training


@pytest.mark.parametrize("bad", ["resnet21", "resnt20", "ResNet20", ""])
def test_unknown_name(bad: str) -> None:
    with pytest.raises(UnknownNameError) as exc:
        models.create(bad)
    message = _one_line(exc)
    assert f"'{bad}'" in message and "resnet20" in message and "timm:NAME" in message
    with pytest.raises(UnknownNameError):
        models.spec(bad)


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'resnet20'"):
        models.create("resnt20")


def test_unknown_name_is_a_keyerror_and_non_string_names_too() -> None:
    with pytest.raises(KeyError):
        models.create("nope")
    with pytest.raises(UnknownNameError):
        models.create(20)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_bad_num_classes(bad: object) -> None:
    with pytest.raises(ConfigError) as exc:
        models.create("lenet5", num_classes=bad)  # type: ignore[arg-type]
    message = _one_line(exc)
    assert "num_classes" in message and repr(bad) in message and ">= 1" in message


def test_unknown_option_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        models.create("resnet20", widht=2)
    message = _one_line(exc)
    assert "'widht'" in message and "in_channels" in message and "num_classes" in message


def test_option_fixed_by_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="fixed by the name"):
        models.create("resnet20", blocks=(1, 1, 1))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet20", {"in_channels": 0}),
        ("vgg16_cifar", {"in_channels": 1.0}),
        ("mobilenetv2_cifar", {"in_channels": -3}),
        ("lenet5", {"image_size": 8}),
        ("lenet300", {"image_size": 0}),
    ],
)
def test_bad_option_values(name: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as exc:
        models.create(name, **options)
    key, value = next(iter(options.items()))
    message = _one_line(exc)
    assert key in message and str(value) in message
