"""The model zoo: models constructible by name, timm-style.

>>> from dualprune import models
>>> models.names("resnet2*")
['resnet20']
>>> net = models.create("resnet20", num_classes=100)
>>> models.spec("lenet5").input_shape
(1, 28, 28)

Every built-in model uses only standard layers (``Conv2d``, ``BatchNorm2d``,
``Linear``, ReLU, pooling, flatten) so that torch-pruning's dependency graph
can trace it. The catalogue with parameter counts is in docs/models.md
(regenerate it with ``python -m dualprune.models``).
"""

from dualprune.models.base import ModelSpec, count_parameters
from dualprune.models.registry import MODELS, create, names, spec

__all__ = ["MODELS", "ModelSpec", "count_parameters", "create", "names", "spec"]
