"""Masks: the compressed set fixed at hard prune, applied and enforced while retraining.

After hard pruning (docs/algorithms.md §1) every constrained weight W_i has a fixed
support M_i (True = kept) and, when quantized, fixed scales α_i. :class:`Masks` holds
them per parameter name (``"layer1.0.conv1.weight"``), projects a model onto them
(:meth:`Masks.apply`), keeps it there while it retrains (:meth:`Masks.attach`: pruned
weights stay exactly 0, quantized ones stay on α·ℓ with a straight-through estimator;
the hooks live in :mod:`dualprune.masks.enforce`), counts (:meth:`Masks.sparsity`, §4) and
saves them (safetensors, :mod:`dualprune.masks.file`). See docs/masks.md.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dualprune.constraints import Constraint, Intersection, Quantization
from dualprune.constraints.base import shape_text
from dualprune.errors import (
    CheckpointError,
    ConfigError,
    DualpruneError,
    UnknownNameError,
    did_you_mean,
)
from dualprune.masks import file as maskfile
from dualprune.masks.enforce import EnforcedParam, LevelGrid
from dualprune.plan import layer_weight, weight_key

__all__ = ["FORMAT", "Masks"]

FORMAT = maskfile.FORMAT  # ``format`` entry of Masks.state_dict() and of the files it saves
_SHOWN = 8  # names listed in an error message


def _listed(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Masks:
    """Fixed supports M (and quantization levels with fixed scales α) of a pruned model.

    Args:
        masks: Parameter name → bool tensor of the parameter's shape (True = kept).
        quantizers: Parameter name → the :class:`~dualprune.constraints.Quantization`
            its kept entries are snapped to (for an intersection, its ``.value``).
        scales: Parameter name → α as :meth:`Quantization.codes` returns it (shape ()
            or (out, 1, …, 1) for ``scale="channel"``). A quantizer without scales
            gets them fitted on the weight at the first :meth:`attach`/:meth:`apply`
            (``codes(W, mask=M)``); they stay fixed from then on.

    Raises:
        ConfigError: A mask that is not a bool tensor, a quantizer or scales without
            a mask, a quantizer that is not a Quantization, or scales of the wrong shape.

    Example:
        >>> masks = solver.hard_prune()  # or Masks.from_constraints(model, plan.resolve(model))
        >>> masks.attach(model)          # pruned weights stay 0, levels stay levels
        >>> ...                          # retrain with any optimizer
        >>> masks.detach(); masks.save("masks.safetensors")
    """

    def __init__(
        self,
        masks: Mapping[str, Tensor],
        quantizers: Mapping[str, Quantization] | None = None,
        scales: Mapping[str, Tensor] | None = None,
    ) -> None:
        self._setup(masks, quantizers or {}, scales or {}, {}, None)

    def _setup(
        self,
        masks: Mapping[str, Any],
        quantizers: Mapping[str, Any],
        scales: Mapping[str, Any],
        latent: Mapping[str, Any],
        origin: str | None,
    ) -> None:
        self._origin = origin  # "masks file 'x'" / "masks state_dict" → CheckpointError
        for what, table in (("masks", masks), ("quantizers", quantizers), ("scales", scales)):
            if not isinstance(table, Mapping):
                raise self._error(f"{what} must map parameter names to values, got {table!r}")
        self._masks: dict[str, Tensor] = {}
        for name, m in masks.items():
            if not isinstance(name, str) or name == "total":
                raise self._error(f"mask name {name!r} is not allowed; use a parameter name")
            if not isinstance(m, Tensor) or m.dtype != torch.bool:
                got = f"dtype {m.dtype}" if isinstance(m, Tensor) else type(m).__name__
                raise self._error(
                    f"mask '{name}' has {got}; masks are bool tensors (True = kept): "
                    "pass m.bool() or m != 0"
                )
            self._masks[name] = m.detach().clone()
        self._quantizers: dict[str, Quantization] = {}
        for name, q in quantizers.items():
            self._need_mask(name, "quantizer")
            if not isinstance(q, Quantization):
                raise self._error(
                    f"quantizer of '{name}' is {q!r}, not a Quantization; for an "
                    "intersection pass its .value or use Masks.from_constraints"
                )
            self._quantizers[name] = q
        self._scales: dict[str, Tensor] = {}
        for name, s in scales.items():
            self._need_mask(name, "scales")
            self._scales[name] = self._checked_scales(name, s)
        self._latent: dict[str, Tensor] = {}  # from load_state_dict, used by the next attach
        for name, t in latent.items():
            if (
                name not in self._quantizers
                or not isinstance(t, Tensor)
                or t.shape != masks[name].shape
            ):
                raise self._error(f"latent weight of '{name}' does not match a quantized mask")
            self._latent[name] = t.detach().clone()
        self._model: nn.Module | None = None
        self._layers: dict[str, EnforcedParam] = {}
        self._by_id: dict[int, EnforcedParam] = {}
        self._step_handle: Any = None

    def _error(self, message: str) -> DualpruneError:
        if self._origin is None:
            return ConfigError(message)
        return CheckpointError(f"{self._origin}: {message}")

    def _need_mask(self, name: object, what: str) -> None:
        if name not in self._masks:
            raise self._error(
                f"{what} given for '{name}' but it has no mask; add a mask "
                "(torch.ones_like(weight, dtype=torch.bool) to quantize without pruning)"
            )

    def _checked_scales(self, name: str, s: object) -> Tensor:
        q, shape = self._quantizers.get(name), tuple(self._masks[name].shape)
        if q is None:
            raise self._error(f"scales given for '{name}' but it has no quantizer; drop them")
        want = (shape[0], *[1] * (len(shape) - 1)) if q.scale == "channel" and shape else ()
        if not isinstance(s, Tensor) or not s.is_floating_point() or tuple(s.shape) != want:
            got = shape_text(tuple(s.shape)) if isinstance(s, Tensor) else type(s).__name__
            raise self._error(
                f"scales of '{name}' are {got}; {q!r} on a {shape_text(shape)} weight "
                f"needs a float tensor of shape {want}"
            )
        if not bool(torch.isfinite(s).all() and (s >= 0).all()):
            raise self._error(f"scales of '{name}' must be finite and >= 0, got {s.tolist()}")
        return s.detach().clone()

    @classmethod
    def from_constraints(cls, model: nn.Module, constraints: Mapping[str, Constraint]) -> Masks:
        """Masks of Π_S at the current weights: what a solver's hard prune fixes (§1).

        For each module name k (keys as :meth:`dualprune.Plan.resolve` returns them)
        with weight W: M = ``constraint.mask(W)``; the value part (the constraint
        itself if it is a Quantization, ``Intersection.value`` otherwise) becomes the
        quantizer with α from ``codes(W, mask=M)``, the scales Π_S(W) uses. Call it
        right before W ← Π_S(W); ``apply`` then leaves the projected model unchanged.

        Raises:
            ConfigError: A key that is no module with a ``weight`` of ``model``, or a
                value that is not a constraint.
            ConstraintError: A constraint that cannot apply to its layer.
        """
        if not isinstance(constraints, Mapping):
            raise ConfigError(
                f"constraints must map module names to constraints, got {constraints!r}"
            )
        modules = dict(model.named_modules())
        owners = [n for n, m in modules.items() if isinstance(getattr(m, "weight", None), Tensor)]
        masks, quantizers, scales = {}, {}, {}
        for name, c in constraints.items():
            if name not in owners:
                raise ConfigError(
                    f"constraint key '{name}' is not a module with a weight in "
                    f"{type(model).__name__}{_hint(str(name), owners)}; layers: {_listed(owners)}"
                )
            if not isinstance(c, Constraint):
                raise ConfigError(f"constraint of '{name}' is {c!r}, not a Constraint")
            key = weight_key(name)
            w = layer_weight(modules[name]).detach()
            c.check(w, key)
            with torch.no_grad():
                keep = c.mask(w).to(torch.bool)
                value = c.value if isinstance(c, Intersection) else c
                if value is not None and value.restricts_values:
                    if not isinstance(value, Quantization):
                        raise ConfigError(f"'{key}': Masks only hold Quantization value sets")
                    quantizers[key] = value
                    scales[key] = value.codes(w, mask=keep)[1]
            masks[key] = keep
        return cls(masks, quantizers, scales)

    # ---- what it holds ----------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """The masked parameter names, in the order given."""
        return tuple(self._masks)

    @property
    def quantizers(self) -> dict[str, Quantization]:
        """Parameter name → its quantizer (quantized parameters only)."""
        return dict(self._quantizers)

    @property
    def scales(self) -> dict[str, Tensor]:
        """Parameter name → fixed scales α (those fitted so far)."""
        return dict(self._scales)

    def __getitem__(self, name: str) -> Tensor:
        """The bool mask of ``name`` (True = kept); do not modify it."""
        if name not in self._masks:
            raise UnknownNameError(f"no mask for '{name}'{did_you_mean(name, list(self._masks))}")
        return self._masks[name]

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def __repr__(self) -> str:
        state = f", attached to {type(self._model).__name__}" if self._model is not None else ""
        return (
            f"Masks({len(self)} parameters, sparsity {self.sparsity()['total']:.4f}, "
            f"{len(self._quantizers)} quantized{state})"
        )

    def sparsity(self) -> dict[str, float]:
        """Fraction of entries masked out, per parameter and ``"total"`` (§4).

        Fractions of weights (never of channels): 1 − |M|/numel, and Σ pruned / Σ numel
        for ``"total"``. Kept entries that happen to be 0 (a quantization level 0)
        count as kept; ``dualprune.size.metrics`` counts the zeros of the weights instead.
        """
        out, pruned, total = {}, 0, 0
        for name, m in self._masks.items():
            k = int(m.sum())
            out[name] = (m.numel() - k) / m.numel() if m.numel() else 0.0
            pruned, total = pruned + m.numel() - k, total + m.numel()
        out["total"] = pruned / total if total else 0.0
        return out

    # ---- use on a model ---------------------------------------------------------------

    def _resolve(self, model: nn.Module) -> list[EnforcedParam]:
        """Check every mask against ``model`` (all before any change), fit missing scales."""
        params = dict(model.named_parameters())
        known = list(params)
        for name, m in self._masks.items():
            p = params.get(name)
            if p is None:
                raise self._error(
                    f"mask '{name}' names no parameter of {type(model).__name__}"
                    f"{_hint(name, known)}; parameters: {_listed(known)}"
                )
            if p.shape != m.shape:
                raise self._error(
                    f"mask of '{name}' has shape {shape_text(tuple(m.shape))} but the "
                    f"parameter is {shape_text(tuple(p.shape))}; masks must match their weight"
                )
            if name in self._quantizers:
                self._quantizers[name].check(p, name)
        layers = []
        for name, m in self._masks.items():
            p, grid = params[name], None
            q = self._quantizers.get(name)
            if q is not None:
                if name not in self._scales:
                    self._scales[name] = q.codes(p.detach(), mask=m.to(p.device))[1]
                grid = LevelGrid(q, self._scales[name], p)
            prefix, _, _ = name.rpartition(".")
            layers.append(EnforcedParam(name, model.get_submodule(prefix), p, m, grid))
        return layers

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """W ← Π_S(W) in place: W ⊙ M, quantized entries snapped to α·ℓ with the fixed α.

        On a model these masks are attached to, only weights that left S since the
        last hook are projected (the latent weights are kept).

        Raises:
            ConfigError: (CheckpointError for loaded masks) a name the model does not
                have or a mask whose shape differs from its parameter's.
        """
        if model is self._model:
            for layer in self._layers.values():
                if layer.dirty():
                    layer.settle()
            return
        for layer in self._resolve(model):
            layer.param.copy_(layer.project(layer.param))

    def attach(self, model: nn.Module) -> Masks:
        """Keep ``model`` in S while it trains: W ← Π_S(W) now, then hooks.

        Per parameter (:mod:`dualprune.masks.enforce`, docs/masks.md): a forward pre-hook
        projects a weight changed since the last hook; a post-accumulate-grad hook
        masks the gradient and, for quantized layers, hands the optimizer the latent
        float weight (STE); an optimizer step post-hook (any ``torch.optim``
        optimizer) puts W back into S after every step, so pruned weights are exactly
        0 whatever momentum or Adam moments the optimizer holds.

        Every check runs before any hook is registered. Attaching again to the same
        model is a no-op; to another model, a ConfigError (detach first). Latent
        weights from :meth:`load_state_dict` are restored (exact resume).

        Returns:
            ``self``, so that ``masks = Masks.load(path).attach(model)`` works.

        Raises:
            ConfigError: (CheckpointError for loaded masks) as :meth:`apply`.
        """
        if self._model is not None:
            if self._model is model:
                return self
            raise ConfigError(
                f"masks are already attached to a {type(self._model).__name__}; "
                "call detach() before attaching them to another model"
            )
        layers = self._resolve(model)
        with torch.no_grad():
            for layer in layers:
                latent = self._latent.pop(layer.name, None)
                if latent is not None and layer.grid is not None:
                    layer.param.copy_(latent)
                layer.settle()
        for layer in layers:
            layer.attach()
        self._layers = {layer.name: layer for layer in layers}
        self._by_id = {id(layer.param): layer for layer in layers}
        self._step_handle = register_optimizer_step_post_hook(self._after_step)
        self._model = model
        return self

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                layer = self._by_id.get(id(p))
                if layer is not None and layer.param is p:
                    layer.after_step()

    def detach(self, model: nn.Module | None = None) -> None:
        """Remove every hook, leaving the weights exactly in S (zeros and levels).

        Idempotent: detaching masks that are not attached does nothing.

        Raises:
            ConfigError: ``model`` is given and is not the model the masks are attached to.
        """
        if self._model is None:
            return
        if model is not None and model is not self._model:
            raise ConfigError(
                f"masks are attached to another {type(self._model).__name__}; "
                "call detach() on the model they were attached to"
            )
        for layer in self._layers.values():
            layer.detach()
        self._step_handle.remove()
        self._model, self._layers, self._by_id, self._step_handle = None, {}, {}, None

    # ---- state ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (loads with ``torch.load(weights_only=True)``).

        ``{"format": FORMAT, "state": {name: {"mask", "scales"?, "latent"?}},
        "quantizers": {name: spec}}``. While attached, quantized layers also carry
        their latent float weight so that a resumed retraining is exact.
        """
        state: dict[str, dict[str, Tensor]] = {}
        for name, m in self._masks.items():
            entry = {"mask": m.cpu()}
            if name in self._scales:
                entry["scales"] = self._scales[name].detach().cpu()
            layer = self._layers.get(name)
            latent = layer.current_latent() if layer else self._latent.get(name)
            if latent is not None:
                entry["latent"] = latent.cpu()
            state[name] = entry
        quantizers = {n: q.to_dict() for n, q in self._quantizers.items()}
        return {"format": FORMAT, "state": state, "quantizers": quantizers}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the content by :meth:`state_dict`'s output (detach first).

        Raises:
            CheckpointError: Not a masks state dict, or inconsistent entries.
            ConfigError: The masks are attached.
        """
        if self._model is not None:
            raise ConfigError("cannot load a state dict into attached masks; call detach() first")
        self._load(state_dict, "masks state_dict")

    def _load(self, sd: Mapping[str, Any], origin: str) -> None:
        fresh = object.__new__(type(self))  # validate fully before replacing anything
        fresh._setup(*maskfile.parse(sd, origin), origin)
        vars(self).update(vars(fresh))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a safetensors file atomically (layout in :mod:`dualprune.masks.file`).

        Masks (uint8 0/1), scales and each quantizer's ``to_dict()``; not the latent
        weights: the file describes the compressed set. Read it with :meth:`load`.
        """
        maskfile.write(path, self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Masks:
        """Read a file written by :meth:`save` (safetensors: nothing is unpickled).

        Raises:
            CheckpointError: The file is missing, truncated, corrupt or not a masks
                file, or its entries are inconsistent (one line naming the file).
        """
        masks = object.__new__(cls)
        masks._load(maskfile.read(path), f"masks file '{Path(path)}'")
        return masks
