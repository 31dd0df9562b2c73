"""Export a compressed model: packed (as small as its storage figure), ONNX, or safetensors.

Three formats (docs/export.md), each a function of the model and what is known
about its compression; none of them imports the solvers or the pipeline.

* :func:`save_packed` / :func:`load_packed`: every prunable weight in the code
  that :mod:`dualprune.size.storage` counts (values, a bitmask, relative or
  Golomb–Rice index, scales α), so the file is the storage figure of the report
  (docs/algorithms.md §4); weights come back bit for bit.
* :func:`export_onnx`: an ONNX graph of the module given (the compacted model
  for a smaller one), checked against PyTorch with onnxruntime. Needs the
  optional packages of ``pip install 'dualprune[export]'``.
* :func:`save_torch` / :func:`load_torch`: the state dict of a possibly
  compacted zoo model plus the sizes of its resized layers, rebuilt without
  unpickling anything.

>>> from dualprune.export import save_packed, load_packed
>>> info = save_packed(model, "model.packed.safetensors", masks=masks)
>>> load_packed("model.packed.safetensors", models.create("lenet5"))
"""

from dualprune.export.onnx import EXPORTERS, OnnxExport, export_onnx
from dualprune.export.packed import PackedInfo, load_packed, read_manifest, save_packed
from dualprune.export.torchfmt import load_torch, save_torch

__all__ = [
    "EXPORTERS",
    "OnnxExport",
    "PackedInfo",
    "export_onnx",
    "load_packed",
    "load_torch",
    "read_manifest",
    "save_packed",
    "save_torch",
]
