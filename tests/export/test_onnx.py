"""ONNX export, checked with onnxruntime (docs/export.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from export_helpers import narrow_conv
from torch import Tensor, nn

from dualprune import models
from dualprune.errors import ConfigError, UnknownNameError
from dualprune.export import (
    export_onnx,
)
from dualprune.export.onnx import onnx_outputs

# ---- ONNX ---------------------------------------------------------------------------------


def _need_onnx() -> None:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)


def test_onnx_dynamo_export_matches_and_keeps_batch_free(tmp_path: Path) -> None:
    _need_onnx()
    torch.manual_seed(0)
    model = models.create("lenet5", image_size=16)
    model.train()
    info = export_onnx(model, torch.zeros(1, 1, 16, 16), tmp_path / "m.onnx")
    assert model.training  # mode restored
    assert info.exporter == "dynamo" and info.file_bytes == (tmp_path / "m.onnx").stat().st_size
    assert info.max_abs_error is not None and info.max_abs_error <= 1e-4
    x = torch.randn(5, 1, 16, 16)
    (y,) = onnx_outputs(tmp_path / "m.onnx", (x,))
    with torch.no_grad():
        assert torch.allclose(y, model.eval()(x), atol=1e-5)


def test_onnx_torchscript_export_of_a_narrowed_model(tmp_path: Path) -> None:
    _need_onnx()
    torch.manual_seed(0)
    model = models.create("lenet5")
    model.conv1 = narrow_conv(model.conv1, out=12)
    model.conv2 = narrow_conv(model.conv2, inp=12)
    full = export_onnx(
        models.create("lenet5"),
        torch.zeros(1, 1, 28, 28),
        tmp_path / "full.onnx",
        exporter="torchscript",
    )
    small = export_onnx(
        model, torch.zeros(1, 1, 28, 28), tmp_path / "small.onnx", exporter="torchscript"
    )
    assert small.max_abs_error is not None and small.max_abs_error <= 1e-4
    assert small.file_bytes < full.file_bytes  # 8 × 5 × 5 × 50 fewer conv2 weights


class _TwoFaced(nn.Module):
    """Adds 1 while it is being exported: an export that does not match eager PyTorch."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return x + 1
        return x


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_check_catches_a_mismatch(tmp_path: Path, exporter: str) -> None:
    _need_onnx()
    with pytest.raises(ConfigError, match="does not match PyTorch"):
        export_onnx(_TwoFaced(), torch.zeros(2, 3), tmp_path / "m.onnx", exporter=exporter)
    assert not list(tmp_path.iterdir())  # no file left behind
    info = export_onnx(
        _TwoFaced(), torch.zeros(2, 3), tmp_path / "m.onnx", check=False, exporter=exporter
    )
    assert info.max_abs_error is None and (tmp_path / "m.onnx").is_file()


class _Untraceable(nn.Module):
    """Branches on a tensor's value: torch.export cannot trace it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 2 if bool(x.sum() > 0) else x


def test_onnx_exporter_failure_names_the_other_exporter(tmp_path: Path) -> None:
    _need_onnx()
    with pytest.raises(ConfigError, match="exporter='dynamo' failed.*try exporter='torchscript'"):
        export_onnx(_Untraceable(), torch.ones(1, 3), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_onnx_missing_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript fails
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"pip install 'dualprune\[export\]'"):
        export_onnx(nn.Linear(3, 2), torch.zeros(1, 3), tmp_path / "m.onnx")


def test_onnx_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="dynamo"):
        export_onnx(nn.Linear(3, 2), torch.zeros(1, 3), tmp_path / "m.onnx", exporter="dynamic")
    _need_onnx()
    with pytest.raises(ConfigError, match="example_input"):
        export_onnx(nn.Linear(3, 2), [torch.zeros(1, 3)], tmp_path / "m.onnx")  # type: ignore[arg-type]
