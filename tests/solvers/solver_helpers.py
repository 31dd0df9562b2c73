"""Small models, fixed data and a plain training loop shared by the solver tests.

The loop is the one the solver docs prescribe (docs/design.md): per batch
``loss [+ penalty()]``, ``backward()``, ``[regularize()]``, ``opt.step()``,
``solver.step(loss)``; per epoch ``solver.update()``. Everything is seeded and
runs on CPU, so two runs of the same loop are bitwise identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualprune.solvers import Solver


class Net(nn.Module):
    """Two 3×3 convs and two Linears: conv1 (4, 2, 3, 3), conv2 (8, 4, 3, 3), fc1, fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))  # (B, 4, 8, 8)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 4)  # (B, 8, 2, 2)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 16)
        return self.fc2(x)  # (B, 4)


class WideNet(nn.Module):
    """Enough layers for one structure each (every conv is 3×3, every in-count a multiple of 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)
        self.c5 = nn.Conv2d(8, 8, 3, padding=1)
        self.f1 = nn.Linear(32, 16)
        self.f2 = nn.Linear(16, 16)
        self.f3 = nn.Linear(16, 16)
        self.f4 = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        for conv in (self.c1, self.c2, self.c3, self.c4, self.c5):
            x = torch.tanh(conv(x))  # (B, 8, 4, 4) after c1
        x = F.avg_pool2d(x, 2).flatten(1)  # (B, 32)
        for fc in (self.f1, self.f2, self.f3):
            x = torch.tanh(fc(x))  # (B, 16)
        return self.f4(x)  # (B, 4)


def make(cls: type[nn.Module], seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A freshly initialised model, the same for the same seed."""
    torch.manual_seed(seed)
    return cls().to(dtype)


def data(shape: tuple[int, ...], batches: int = 3, size: int = 8, seed: int = 1) -> list:
    """``batches`` fixed (x, y) minibatches of ``size`` inputs of ``shape``, 4 classes."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, *shape, generator=g), torch.randint(0, 4, (size,), generator=g))
        for _ in range(batches)
    ]


def train(
    model: nn.Module,
    solver: Solver,
    opt: torch.optim.Optimizer,
    batches: list,
    epochs: int,
    *,
    mode: str = "regularize",
    pass_loss: bool = True,
) -> list:
    """The documented loop; returns the records of the updates that ran."""
    records = []
    for _ in range(epochs):
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            total = loss + solver.penalty() if mode == "penalty" else loss
            opt.zero_grad()
            total.backward()
            if mode == "regularize":
                solver.regularize()
            opt.step()
            if (rec := solver.step(loss if pass_loss else None)) is not None:
                records.append(rec)
        if (rec := solver.update()) is not None:
            records.append(rec)
    return records


def solver_tensors(solver: Solver) -> list[tuple[str, Tensor]]:
    """Every tensor a solver holds (state and attributes), named, to check requires_grad."""
    out = [(f"{kind}/{n}", t) for kind, d in solver._tensors().items() for n, t in d.items()]
    for attr, value in vars(solver).items():
        if isinstance(value, Tensor):
            out.append((attr, value))
        elif isinstance(value, dict):
            out += [(f"{attr}/{k}", t) for k, t in value.items() if isinstance(t, Tensor)]
    return out
