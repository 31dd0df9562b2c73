"""ONNX export, checked against PyTorch with onnxruntime (docs/export.md).

The module given is exported as it is: pass the compacted model to get a
physically smaller graph. ONNX stores every weight densely in fp32, so pruned
zeros and quantization levels take as much room as any weight; the file size
reflects the compacted shapes only (the packed format counts sparsity and bits).

Two exporters of ``torch.onnx`` are offered. ``"dynamo"`` (the default, the one
PyTorch maintains; needs ``onnxscript``) traces with ``torch.export``;
``"torchscript"`` is the older tracer (faster, deprecated by PyTorch, kept for
older torch versions). Both export every model of the zoo with outputs within
2e-6 of PyTorch's. The batch dimension is dynamic by default.

The optional packages (``onnx``, ``onnxscript``, ``onnxruntime``) are imported
only here and only when called: ``pip install dualprune[export]``.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from dualprune.errors import ConfigError, UnknownNameError, did_you_mean

__all__ = ["EXPORTERS", "OnnxExport", "export_onnx", "onnx_outputs"]

#: ``exporter=`` values: torch.onnx's dynamo exporter or its TorchScript tracer.
EXPORTERS = ("dynamo", "torchscript")
#: Tolerance of the check: max |Δ| ≤ TOLERANCE · max(1, max |y|).
TOLERANCE = 1e-4


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: The ``.onnx`` file.
        file_bytes: Its size.
        exporter: ``"dynamo"`` or ``"torchscript"``.
        max_abs_error: max |y_onnx − y_torch| over the checked inputs (``None``
            when not checked).
    """

    path: Path
    file_bytes: int
    exporter: str
    max_abs_error: float | None


def _need(module: str, why: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{why} needs the optional package '{module}'; install it with "
            "pip install 'dualprune[export]'"
        ) from None


def _as_tuple(example_input: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise ConfigError(
            "example_input must be a tensor or a tuple of tensors (one batch of inputs), "
            f"got {type(example_input).__name__}"
        )
    return inputs


def _flat_outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(isinstance(t, Tensor) for t in out):
        return list(out)
    raise ConfigError(
        f"the model returns {type(out).__name__}; ONNX export handles a tensor or a "
        "tuple of tensors"
    )


def _names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}{i}" for i in range(count)]


def _export(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    path: str,
    exporter: str,
    n_out: int,
    dynamic_batch: bool,
) -> None:
    in_names, out_names = _names("input", len(inputs)), _names("output", n_out)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # the dynamo exporter logs every op it skips
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            if exporter == "dynamo":
                batch = torch.export.Dim.DYNAMIC
                shapes = tuple({0: batch} for _ in inputs) if dynamic_batch else None
                torch.onnx.export(
                    model,
                    inputs,
                    path,
                    input_names=in_names,
                    output_names=out_names,
                    dynamo=True,
                    dynamic_shapes=shapes,
                    external_data=False,
                    verbose=False,
                )
            else:
                axes = {n: {0: "batch"} for n in in_names + out_names} if dynamic_batch else None
                torch.onnx.export(
                    model,
                    inputs,
                    path,
                    input_names=in_names,
                    output_names=out_names,
                    dynamo=False,
                    dynamic_axes=axes,
                )
    finally:
        onnx_log.setLevel(level)


def onnx_outputs(path: str | os.PathLike[str], inputs: tuple[Tensor, ...]) -> list[Tensor]:
    """Run the ONNX file on ``inputs`` with onnxruntime (CPU) and return its outputs.

    Raises:
        ConfigError: onnxruntime is not installed.
    """
    ort = _need("onnxruntime", "checking an ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]  # unused inputs may be dropped
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=False)}
    return [torch.from_numpy(y) for y in session.run(None, feed)]


def _check_inputs(inputs: tuple[Tensor, ...], dynamic_batch: bool) -> list[tuple[Tensor, ...]]:
    """The example, and a seeded random batch of another size (float inputs, dynamic batch)."""
    batches = [inputs]
    if dynamic_batch and all(t.is_floating_point() and t.dim() > 0 for t in inputs):
        g = torch.Generator().manual_seed(0)
        batches.append(
            tuple(
                torch.randn(t.shape[0] + 1, *t.shape[1:], generator=g, dtype=t.dtype)
                for t in inputs
            )
        )
    return batches


def export_onnx(
    model: nn.Module,
    example_input: Tensor | tuple[Tensor, ...],
    path: str | os.PathLike[str],
    check: bool = True,
    exporter: str = "dynamo",
    dynamic_batch: bool = True,
) -> OnnxExport:
    """Export ``model`` (in eval mode) to ONNX and check it with onnxruntime.

    The check runs the file on the example and on a seeded random batch of
    another size, and requires max |y_onnx − y_torch| ≤ 1e-4 · max(1, max |y_torch|)
    for every output. The model's training mode is restored afterwards; the file
    is written atomically (nothing is left at ``path`` when export or check fails).

    Args:
        model: The module to export (the compacted model for a smaller graph).
        example_input: One batch of inputs: a tensor or a tuple of tensors.
        path: The ``.onnx`` file to write.
        check: Compare onnxruntime's outputs with PyTorch's.
        exporter: ``"dynamo"`` (default) or ``"torchscript"`` (module docstring).
        dynamic_batch: Leave the first dimension of inputs and outputs free.

    Returns:
        An :class:`OnnxExport` (file size and the largest difference found).

    Raises:
        ConfigError: An optional package is missing (``pip install 'dualprune[export]'``),
            a bad ``example_input``, an exporter that fails on the model, or outputs
            that differ beyond the tolerance.
        UnknownNameError: An unknown ``exporter``.

    Example:
        >>> info = export_onnx(small, torch.zeros(1, 3, 32, 32), "model.onnx")
        >>> info.max_abs_error < 1e-4
        True
    """
    if exporter not in EXPORTERS:
        raise UnknownNameError(
            f"unknown ONNX exporter '{exporter}'{did_you_mean(exporter, EXPORTERS)}"
        )
    _need("onnx", "ONNX export")
    if exporter == "dynamo":
        _need("onnxscript", "ONNX export with exporter='dynamo'")
    if check:
        _need("onnxruntime", "checking an ONNX export")
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    inputs = _as_tuple(example_input)
    was_training = model.training
    model.eval()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad():
            n_out = len(_flat_outputs(model(*inputs)))
        try:
            _export(model, inputs, tmp, exporter, n_out, dynamic_batch)
        except Exception as err:  # torch.export and the TorchScript tracer raise many types
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ConfigError(
                f"ONNX export of {type(model).__name__} with exporter='{exporter}' failed "
                f"({first}); try exporter='{other}'"
            ) from err
        error = _compare(model, tmp, _check_inputs(inputs, dynamic_batch)) if check else None
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        model.train(was_training)
    return OnnxExport(path, path.stat().st_size, exporter, error)


def _compare(model: nn.Module, path: str, batches: list[tuple[Tensor, ...]]) -> float:
    worst = 0.0
    for batch in batches:
        with torch.no_grad():
            want = [y.detach().cpu().float() for y in _flat_outputs(model(*batch))]
        got = onnx_outputs(path, batch)
        if len(got) != len(want):
            raise ConfigError(f"the ONNX graph has {len(got)} outputs, PyTorch {len(want)}")
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            if tuple(a.shape) != tuple(b.shape):
                raise ConfigError(
                    f"ONNX output {i} has shape {tuple(a.shape)}, PyTorch {tuple(b.shape)} "
                    f"(input batch {tuple(batch[0].shape)})"
                )
            diff = float((a.float() - b).abs().max()) if b.numel() else 0.0
            bound = TOLERANCE * max(1.0, float(b.abs().max()) if b.numel() else 0.0)
            if not diff <= bound:  # also catches NaN
                raise ConfigError(
                    f"ONNX export of {type(model).__name__} does not match PyTorch: output {i} "
                    f"differs by {diff:.3g} > {bound:.3g}; try exporter='torchscript' or "
                    "check=False to keep it anyway"
                )
            worst = max(worst, diff)
    return worst
