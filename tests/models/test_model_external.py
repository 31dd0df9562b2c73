"""Library models (timm:NAME, torchvision:NAME): missing-library errors, fake libraries."""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import pytest
from torch import nn

from dualprune import models
from dualprune.errors import ConfigError, UnknownNameError


def _fake_timm() -> types.ModuleType:
    lib = types.ModuleType("timm")

    def create_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
        model = nn.Linear(4, num_classes)
        model.created_with = (name, kwargs)  # type: ignore[assignment]
        return model

    lib.create_model = create_model  # type: ignore[attr-defined]
    lib.list_models = lambda: ["resnet50", "vit_tiny_patch16_224"]  # type: ignore[attr-defined]
    return lib


def _fake_torchvision(with_registry: bool) -> tuple[types.ModuleType, types.ModuleType]:
    top, sub = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    top.models = sub  # type: ignore[attr-defined]

    def resnet18(num_classes: int = 1000) -> nn.Module:
        return nn.Linear(4, num_classes)

    sub.resnet18 = resnet18  # type: ignore[attr-defined]
    if with_registry:
        sub.list_models = lambda: ["resnet18"]  # type: ignore[attr-defined]
        sub.get_model = lambda name, **kw: getattr(sub, name)(**kw)  # type: ignore[attr-defined]
    return top, sub


@pytest.mark.parametrize("prefix", ["timm", "torchvision"])
def test_missing_library_says_how_to_install(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, prefix, None)  # makes the import fail
    monkeypatch.setitem(sys.modules, f"{prefix}.models", None)
    for call in (models.create, models.spec):
        with pytest.raises(ConfigError) as exc:
            call(f"{prefix}:resnet18")
        message = str(exc.value)
        assert "\n" not in message
        assert f"'{prefix}:resnet18'" in message and f"pip install {prefix}" in message


def test_unknown_prefix_and_empty_model() -> None:
    with pytest.raises(UnknownNameError, match="allowed prefixes: timm:, torchvision:"):
        models.create("keras:resnet50")
    with pytest.raises(ConfigError, match="no model after the colon"):
        models.create("timm:")


def test_timm_model_from_fake_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", _fake_timm())
    model = models.create("timm:resnet50", num_classes=7, drop_rate=0.1)
    assert model.out_features == 7
    assert model.created_with == ("resnet50", {"drop_rate": 0.1})
    assert models.create("timm:resnet50").out_features == 1000  # library default
    spec = models.spec("timm:resnet50")
    assert (spec.family, spec.num_classes, spec.input_shape) == ("timm", 1000, (3, 224, 224))
    assert spec.builder(num_classes=3).out_features == 3
    assert "timm:resnet50" not in models.names()


def test_timm_unknown_model_suggests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", _fake_timm())
    with pytest.raises(UnknownNameError, match="did you mean 'resnet50'") as exc:
        models.create("timm:resnet5")
    assert "timm.list_models()" in str(exc.value)


@pytest.mark.parametrize("with_registry", [True, False])
def test_torchvision_model_from_fake_library(
    with_registry: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    top, sub = _fake_torchvision(with_registry)
    monkeypatch.setitem(sys.modules, "torchvision", top)
    monkeypatch.setitem(sys.modules, "torchvision.models", sub)
    assert models.create("torchvision:resnet18", num_classes=100).out_features == 100
    if with_registry:
        with pytest.raises(UnknownNameError, match="torchvision.models.list_models"):
            models.create("torchvision:resnet19")


def test_library_bad_num_classes_checked_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", _fake_timm())
    with pytest.raises(ConfigError, match="num_classes=0"):
        models.create("timm:resnet50", num_classes=0)


def test_importing_the_zoo_imports_no_optional_library() -> None:
    code = (
        "import sys, dualprune.models as m; m.create('lenet5'); "
        "print(sorted({'timm', 'torchvision'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
