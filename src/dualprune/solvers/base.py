"""The protocol every solver follows, and what all of them share.

A solver never owns the training loop (docs/design.md). Any loop calls

    loss = f(W) [+ solver.penalty()]        # either the penalty in the loss ...
    loss.backward(); [solver.regularize()]  # ... or its gradient added to .grad
    optimizer.step(); solver.step(loss)     # after every batch
    solver.update(train_loss)               # after every epoch

and, at the end, ``masks = solver.hard_prune()``. ``step`` and ``update`` count
batches and epochs; the solver performs its Z/dual step when its cadence says
so (every ``update_every`` epochs, or every ``update_every_batches`` batches).
Each Z/dual step appends a plain dict to :attr:`Solver.history` (per-layer
||W−Z||_F/||W||_F, ρ and, for SLR, s^k and the surrogate conditions).

``state_dict()`` holds every tensor and counter, so a run stopped after any
epoch resumes with the same masks.

``coupled=`` adds one :class:`~dualprune.constraints.Coupled` set S_G over the
tensors that coupled channels tie across layers; the solver then moves those
tensors too (keys and the combined projection: :mod:`dualprune.solvers.coupled`).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dualprune.constraints import Constraint
from dualprune.constraints.coupled import Coupled
from dualprune.errors import CheckpointError, ConfigError, ConstraintError, PlanError
from dualprune.masks.masks import Masks
from dualprune.plan import Plan, layer_weight, module_of, prunable_layers, weight_key
from dualprune.solvers.coupled import JointSet
from dualprune.solvers.settings import Cadence, flat

__all__ = ["Solver", "relative_residual", "resolve_constraints"]


def resolve_constraints(
    model: nn.Module, plan: Plan | Mapping[str, Constraint], *, allow_empty: bool = False
) -> dict[str, Constraint]:
    """``{layer name: constraint}`` from a Plan, or a checked mapping of layer names.

    Args:
        model: The network.
        plan: A Plan or ``{layer name: Constraint}``.
        allow_empty: Accept a plan that constrains no layer (a solver with
            ``coupled=`` only).

    Raises:
        PlanError: the plan constrains no layer, or a name is not a prunable layer.
    """
    if isinstance(plan, Plan):
        constraints = plan.resolve(model)
    elif isinstance(plan, Mapping):
        layers = prunable_layers(model)
        constraints = {}
        for name, c in plan.items():
            if name not in layers:
                raise PlanError(
                    f"layer '{name}' is not a prunable (Conv1d/Conv2d/Linear) layer of the "
                    f"model; prunable: {', '.join(layers)}"
                )
            if not isinstance(c, Constraint):
                raise PlanError(f"layer '{name}': {c!r} is not a Constraint")
            c.check(layer_weight(layers[name]), weight_key(name))
            constraints[name] = c
    else:
        raise PlanError(f"plan must be a Plan or a dict of layer -> Constraint, got {plan!r}")
    if not constraints and not allow_empty:
        raise PlanError("the plan constrains no layer; give it at least one pattern or a default")
    return constraints


def check_coupled(model: nn.Module, coupled: object) -> Coupled | None:
    """``coupled`` checked against the model's parameters (None passes through).

    Raises:
        ConstraintError: not a Coupled, or a tied slice the model does not have.
    """
    if coupled is None:
        return None
    if not isinstance(coupled, Coupled):
        raise ConstraintError(
            f"coupled={coupled!r} is not a Coupled set; build one with "
            "dp.Coupled(dp.channel_groups(model, x), ratio) or dp.coupled_from_model(...)"
        )
    coupled.check(dict(model.named_parameters()))
    return coupled


class Solver(abc.ABC):
    """Base class: layers, cadence, bookkeeping, hard prune and state.

    Args:
        model: The network; only its constrained weights (and tied tensors) are touched.
        plan: A :class:`~dualprune.Plan` or ``{layer name: Constraint}``; None or
            empty when ``coupled`` is given.
        coupled: A :class:`~dualprune.constraints.Coupled` set over tensors tied by
            coupled channels (residual adds, concatenations, depthwise convs).
        cadence: When the Z/dual step runs (:class:`~dualprune.solvers.settings.Cadence`:
            every N epochs, or every N batches).

    Raises:
        PlanError, ConstraintError: the plan or the coupled set does not fit the model,
            or neither is given.
        ConfigError: a bad cadence.
    """

    name: str = "solver"

    def __init__(
        self,
        model: nn.Module,
        plan: Plan | Mapping[str, Constraint] | None = None,
        *,
        coupled: Coupled | None = None,
        cadence: Cadence = Cadence(),
    ) -> None:
        if not isinstance(cadence, Cadence):
            raise ConfigError(f"cadence={cadence!r} is not a Cadence; use Cadence(every=...)")
        self.model = model
        if plan is None and coupled is None:
            raise PlanError("a solver needs a plan, coupled=..., or both; got neither")
        self.coupled = check_coupled(model, coupled)
        self.constraints = resolve_constraints(
            model, {} if plan is None else plan, allow_empty=self.coupled is not None
        )
        modules = dict(model.named_modules())
        self.modules: dict[str, nn.Module] = {n: modules[n] for n in self.constraints}
        self.joint = JointSet(self.constraints, self.coupled)
        # (owner module, attribute) of every key's tensor: no tensor is held here
        self._owners: dict[str, tuple[nn.Module, str]] = {
            k: (model.get_submodule(module_of(k)), k.rpartition(".")[2]) for k in self.joint.keys
        }
        self.cadence = cadence
        self.epochs = 0  # calls of update()
        self.batches = 0  # calls of step()
        self.updates = 0  # Z/dual steps done
        self.history: list[dict[str, Any]] = []
        self._loss_sum: Tensor | float = 0.0
        self._loss_n = 0
        self._first_loss: Tensor | float | None = None

    # ---- what subclasses provide --------------------------------------------------------

    @abc.abstractmethod
    def _update(self, train_loss: float | None) -> dict[str, Any]:
        """One Z/dual step; return its diagnostics (plain data)."""

    def expect_updates(self, updates: int) -> None:  # noqa: B027 (most solvers need not know)
        """Told by a pipeline how many Z/dual steps the stage will run (before the first).

        Solvers whose schedule spans the whole stage (``Magnitude`` without
        ``steps``) use it; the others ignore it.
        """

    def penalty(self) -> Tensor:
        """The term to add to the loss (0 for solvers without one); graph through W only."""
        return torch.zeros(())

    def regularize(self) -> None:  # noqa: B027 (no penalty by default)
        """Add the penalty's gradient to each W's ``.grad`` (call after ``backward()``)."""

    # ---- the hooks a loop calls ---------------------------------------------------------

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        """Every tensor W_t the solver moves, by key (:mod:`dualprune.solvers.coupled`).

        Parameter names (``"conv1.weight"``): constrained layers' weights in plan
        order, then the tensors only a coupled set ties.
        """
        return {k: getattr(m, attr) for k, (m, attr) in self._owners.items()}

    def step(self, loss: Tensor | float | None = None) -> dict[str, Any] | None:
        """Call after every optimizer step; returns the update record if one ran now."""
        self.batches += 1
        if loss is not None:  # kept as a tensor: no device sync on the per-step path
            value = (loss.detach() if isinstance(loss, Tensor) else torch.tensor(loss)).double()
            if self._first_loss is None:
                self._first_loss = value
            self._loss_sum = self._loss_sum + value
            self._loss_n += 1
        per = self.cadence.every_batches
        if per is not None and self.batches % per == 0:
            return self._run_update(None)
        return None

    def update(self, train_loss: float | None = None) -> dict[str, Any] | None:
        """Call after every epoch; runs the Z/dual step when the cadence says so.

        Args:
            train_loss: mean training loss f(W) of the epoch (default: the mean of the
                losses passed to :meth:`step` since the last update).

        Returns:
            The update's diagnostics, or None if no update was due.
        """
        self.epochs += 1
        if self.cadence.every_batches is None and self.epochs % self.cadence.every == 0:
            return self._run_update(train_loss)
        return None

    def _run_update(self, train_loss: float | None) -> dict[str, Any]:
        if train_loss is None and self._loss_n:
            train_loss = float(self._loss_sum) / self._loss_n
        with torch.no_grad():
            record = self._update(train_loss)
        self.updates += 1
        record = {"update": self.updates, "epoch": self.epochs, "batch": self.batches, **record}
        if train_loss is not None:
            record["train_loss"] = train_loss
        self.history.append(record)
        self._loss_sum, self._loss_n = 0.0, 0
        return record

    @property
    def first_loss(self) -> float | None:
        """The loss of the first batch passed to :meth:`step` (None before one)."""
        return None if self._first_loss is None else float(self._first_loss)

    @property
    def diagnostics(self) -> dict[str, Any]:
        """The last update's record (empty before the first update)."""
        return self.history[-1] if self.history else {}

    def settings(self) -> dict[str, Any]:
        """The solver's settings as flat plain data (the keys a recipe uses)."""
        return flat(self.cadence)

    # ---- the end ------------------------------------------------------------------------

    @torch.no_grad()
    def hard_prune(self) -> Masks:
        """W ← Z in place, Z the combined projection of W; return the fixed masks.

        Without ``coupled`` that is W_i ← Π_{S_i}(W_i) per constrained layer. With
        it, the masks are the per-layer masks ANDed with the coupled ones (biases
        and BatchNorm γ, β of the removed channels included), so ``masks.attach``
        keeps the removed channels at zero and :func:`dualprune.compact` removes
        them. The masks (support and, for quantized layers, levels and scales) are
        taken from the weights before the projection, with the same rule the
        projection uses, so ``masks.apply(model)`` leaves the pruned model unchanged.
        """
        joint = self._final_joint()
        W = {k: p.detach() for k, p in self.weights.items()}
        masks = joint.hard_masks(self.model, W)
        weights = self.weights
        for k, z in joint.project(W).items():
            weights[k].copy_(z)
        return masks

    def _final_joint(self) -> JointSet:
        return self.joint

    @torch.no_grad()
    def residuals(self) -> dict[str, float]:
        """||W_t − Z_t||_F / ||W_t||_F per key, Z = the combined projection of W now."""
        W = {k: p.detach() for k, p in self.weights.items()}
        Z = self._final_joint().project(W)
        return {k: relative_residual(W[k] - Z[k], W[k]) for k in W}

    # ---- state --------------------------------------------------------------------------

    def _tensors(self) -> dict[str, dict[str, Tensor]]:
        """Named per-layer tensors of the solver state (subclasses add theirs)."""
        return {}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """Every tensor and counter of the solver (tensors cloned; safe for ``torch.save``)."""
        return {
            "solver": self.name,
            "layers": list(self.constraints),
            "constraints": {n: c.to_dict() for n, c in self.constraints.items()},
            "coupled": None if self.coupled is None else self.coupled.to_dict(),
            "counters": {
                "epochs": self.epochs,
                "batches": self.batches,
                "updates": self.updates,
                "loss_sum": float(self._loss_sum),
                "loss_n": self._loss_n,
                "first_loss": self.first_loss,
            },
            "history": copy.deepcopy(self.history),
            "tensors": {
                kind: {n: t.detach().clone() for n, t in per_layer.items()}
                for kind, per_layer in self._tensors().items()
            },
            "extra": copy.deepcopy(self._extra_state()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from the same solver kind on the same plan.

        Raises:
            CheckpointError: another solver kind, other layers or constraints, or other shapes.
        """
        if state.get("solver") != self.name:
            raise CheckpointError(
                f"solver state is from '{state.get('solver')}', not '{self.name}'; "
                "resume with the same solver"
            )
        if list(state.get("layers", [])) != list(self.constraints):
            raise CheckpointError(
                f"solver state covers layers {state.get('layers')}, this plan covers "
                f"{list(self.constraints)}; resume with the same plan"
            )
        for n, spec in state.get("constraints", {}).items():
            if spec != self.constraints[n].to_dict():
                raise CheckpointError(
                    f"solver state constrains layer '{n}' with {spec}, this plan with "
                    f"{self.constraints[n].to_dict()}; resume with the same plan"
                )
        spec = None if self.coupled is None else self.coupled.to_dict()
        if state.get("coupled") != spec:
            theirs = "no coupled set" if state.get("coupled") is None else "another coupled set"
            ours = "none" if spec is None else repr(self.coupled)
            raise CheckpointError(
                f"solver state has {theirs}, this solver has {ours}; resume with the same "
                "coupled groups, ratio, multiple_of and roles"
            )
        mine = self._tensors()
        for kind, per_layer in state["tensors"].items():
            if kind not in mine:
                raise CheckpointError(f"solver state has unknown tensors '{kind}'")
            for n, t in per_layer.items():
                if n not in mine[kind]:
                    raise CheckpointError(f"solver state '{kind}' has unknown key '{n}'")
                if t.shape != mine[kind][n].shape:
                    raise CheckpointError(
                        f"solver state '{kind}' of '{n}' has shape {tuple(t.shape)}, "
                        f"the model's is {tuple(mine[kind][n].shape)}"
                    )
                mine[kind][n].copy_(t)
        c = state["counters"]
        self.epochs, self.batches, self.updates = c["epochs"], c["batches"], c["updates"]
        self._loss_sum, self._loss_n, self._first_loss = c["loss_sum"], c["loss_n"], c["first_loss"]
        self.history = copy.deepcopy(list(state["history"]))
        self._load_extra_state(state.get("extra", {}))

    def __repr__(self) -> str:
        tied = f", {len(self.coupled.groups)} coupled groups" if self.coupled is not None else ""
        return (
            f"{type(self).__name__}({len(self.constraints)} layers{tied}, {self.updates} updates)"
        )


def relative_residual(diff: Tensor, ref: Tensor) -> float:
    """||diff||_F / ||ref||_F (0 when both vanish)."""
    num, den = float(diff.norm()), float(ref.norm())
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))
