"""What :func:`dualprune.compact` did: a per-layer account, as plain data and as a table.

A :class:`CompactionResult` says, for every Conv/Linear layer (and every other module
owning a masked parameter), its weight shape before and after, how many pruned
entries compaction removed and how many stay in place, and why they stay. Pruned
entries are the masked-out ones (``~M``) when masks were given, the zero weights
otherwise. It round-trips through :meth:`CompactionResult.as_dict` (JSON-ready: the
compacted module keeps it as ``dualprune_compaction``) so that export can rebuild
the architecture: ``shapes`` holds every state-dict entry whose shape changed or
that is new (a bias a fold added), ``removed`` the positions cut from each
parameter, in the original numbering. See docs/compact.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dualprune.errors import CheckpointError, ConfigError
from dualprune.masks.masks import Masks

__all__ = [
    "RESULT_ATTRIBUTE",
    "CompactionResult",
    "LayerCompaction",
    "drop_positions",
    "leftover_reasons",
]

#: The attribute of a compacted module that holds :meth:`CompactionResult.as_dict`.
RESULT_ATTRIBUTE = "dualprune_compaction"

_OUT = "not in a removable group (a model output, or an ignored layer)"
_IN = "they read the model input (or channels no removable group covers)"
_SCATTERED = "not whole output or input channels (irregular, column, block or N:M zeros)"


@dataclass(frozen=True)
class LayerCompaction:
    """One layer's account.

    Attributes:
        name: Module name, e.g. ``"layer1.0.conv1"``.
        kind: Module class, e.g. ``"Conv2d"``.
        shape_before: Weight shape before compaction (``()`` for a module without one).
        shape_after: Weight shape after.
        pruned: Pruned entries over the module's masked parameters (its weight's zeros
            without masks).
        pruned_removed: How many of them compaction removed.
        macs_before: MACs per sample before (0 for modules that are not Conv/Linear).
        macs_after: MACs per sample after.
        fold: Where constants of removed channels were folded: ``"bias"``, ``"new
            bias"``, ``"running_mean of 'bn'"``, or ``""``.
        reasons: Why the other pruned entries stay, e.g. ``"3 output channels: ..."``.
    """

    name: str
    kind: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    pruned: int
    pruned_removed: int
    macs_before: int = 0
    macs_after: int = 0
    fold: str = ""
    reasons: tuple[str, ...] = ()

    @property
    def pruned_kept(self) -> int:
        """Pruned entries that stay in place as zeros."""
        return self.pruned - self.pruned_removed

    def as_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples), with ``pruned_kept`` included."""
        return {
            "name": self.name,
            "kind": self.kind,
            "shape_before": list(self.shape_before),
            "shape_after": list(self.shape_after),
            "pruned": self.pruned,
            "pruned_removed": self.pruned_removed,
            "pruned_kept": self.pruned_kept,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "fold": self.fold,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class CompactionResult:
    """What compaction removed and kept, per layer, with the model totals.

    Attributes:
        model: Class name of the model.
        layers: One :class:`LayerCompaction` per layer, in ``named_modules()`` order.
        params_before: All parameters before (biases and BatchNorm included).
        params_after: All parameters after.
        macs_before: MACs per sample of the Conv/Linear layers before
            (:func:`dualprune.size.metrics.dense_macs`).
        macs_after: The same after.
        removed: Parameter name → dim → positions removed along it (original numbering).
        shapes: State-dict key → shape after, for every entry whose shape changed or
            that is new.
    """

    model: str
    layers: tuple[LayerCompaction, ...]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    removed: Mapping[str, Mapping[int, tuple[int, ...]]] = field(default_factory=dict)
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def kept_zeros(self) -> tuple[str, ...]:
        """Names of the layers where pruned entries stay in place."""
        return tuple(layer.name for layer in self.layers if layer.pruned_kept)

    def shrink_masks(self, masks: Masks) -> Masks:
        """``masks`` cut like the model was: they fit (and leave unchanged) the compacted model.

        Every mask loses the positions :attr:`removed` lists for its parameter;
        per-channel scales α lose the removed output channels; quantizers are kept.
        Use them to retrain or export the compacted model with its remaining zeros
        and quantization levels held fixed.

        Raises:
            ConfigError: A mask whose shape does not match this plan's removals.
        """
        cut, scales = {}, {}
        for name in masks.names:
            dims = self.removed.get(name, {})
            m = masks[name]
            if any(d >= m.dim() or (ix and max(ix) >= m.shape[d]) for d, ix in dims.items()):
                raise ConfigError(
                    f"mask of '{name}' has shape {tuple(m.shape)}, too small for the positions "
                    "this plan removed from it; pass the masks the model was compacted with"
                )
            cut[name] = drop_positions(m, dims)
            if name in masks.scales:
                alpha = masks.scales[name]
                scales[name] = (
                    drop_positions(alpha, {0: dims[0]}) if alpha.dim() and 0 in dims else alpha
                )
        return Masks(cut, masks.quantizers, scales)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; :meth:`from_dict` reads it back."""
        return {
            "model": self.model,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "layers": [layer.as_dict() for layer in self.layers],
            "removed": {
                p: {str(d): list(ix) for d, ix in dims.items()} for p, dims in self.removed.items()
            },
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "kept_zeros": list(self.kept_zeros),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompactionResult:
        """The plan :meth:`as_dict` described (e.g. a module's ``dualprune_compaction``).

        Raises:
            CheckpointError: ``d`` is not such a dict.
        """
        try:
            layers = tuple(
                LayerCompaction(
                    name=row["name"],
                    kind=row["kind"],
                    shape_before=tuple(row["shape_before"]),
                    shape_after=tuple(row["shape_after"]),
                    pruned=int(row["pruned"]),
                    pruned_removed=int(row["pruned_removed"]),
                    macs_before=int(row["macs_before"]),
                    macs_after=int(row["macs_after"]),
                    fold=str(row["fold"]),
                    reasons=tuple(row["reasons"]),
                )
                for row in d["layers"]
            )
            return cls(
                model=str(d["model"]),
                layers=layers,
                params_before=int(d["params_before"]),
                params_after=int(d["params_after"]),
                macs_before=int(d["macs_before"]),
                macs_after=int(d["macs_after"]),
                removed={
                    p: {int(k): tuple(ix) for k, ix in dims.items()}
                    for p, dims in d["removed"].items()
                },
                shapes={k: tuple(v) for k, v in d["shapes"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(
                f"not a compaction plan dict (missing or bad entry {e}); pass "
                "CompactionResult.as_dict() output, e.g. a compacted module's dualprune_compaction"
            ) from None

    @classmethod
    def from_module(cls, module: nn.Module) -> CompactionResult:
        """The plan a compacted module carries (its ``dualprune_compaction``).

        Raises:
            AttributeError: ``module`` carries none (it is not from :func:`~dualprune.compact`).
            CheckpointError: what it carries is no :meth:`as_dict` output.
        """
        return cls.from_dict(getattr(module, RESULT_ATTRIBUTE))

    def __str__(self) -> str:
        """A table: one line per layer, then why zeros stay, then the totals."""
        head = (
            "layer",
            "type",
            "shape before",
            "shape after",
            "pruned",
            "removed",
            "stays",
            "fold",
        )
        rows = [
            (
                r.name or "(model)",
                r.kind,
                _shape(r.shape_before),
                _shape(r.shape_after),
                f"{r.pruned:,}",
                f"{r.pruned_removed:,}",
                f"{r.pruned_kept:,}",
                r.fold,
            )
            for r in self.layers
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        lines = [
            "  ".join(
                str(x).ljust(w) if i < 4 or i == 7 else str(x).rjust(w)
                for i, (x, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in (head, *rows)
        ]
        why = [
            line
            for r in self.layers
            if r.reasons
            for line in (f"  {r.name or '(model)'}:", *(f"    {x}" for x in r.reasons))
        ]
        if why:
            lines += ["", "pruned entries that stay in place, and why:", *why]
        ratio = self.params_before / self.params_after if self.params_after else float("inf")
        lines += [
            "",
            f"parameters {self.params_before:,} -> {self.params_after:,} ({ratio:.2f}x fewer); "
            f"MACs per sample {_si(self.macs_before)} -> {_si(self.macs_after)}",
        ]
        return "\n".join(lines)


def leftover_reasons(
    param: str,
    pruned: Tensor,
    removed: Mapping[int, Sequence[int]],
    cause: Mapping[tuple[str, int, int], str],
    depthwise: bool = False,
) -> list[str]:
    """Why the pruned entries of ``param`` that compaction left stay, counted by reason.

    Whole output channels (``pruned[o]`` all True) and whole input channels
    (``pruned[:, c]`` all True, not for depthwise weights) take the reason their
    coupled channel stays for (``cause[(param, dim, position)]``); the remaining
    entries are scattered zeros no channel removal can take.

    Args:
        param: Parameter name.
        pruned: Bool tensor of its pruned entries (original shape).
        removed: Dim → positions compaction removed.
        cause: (param, dim, position) → why that coupled channel stays.
        depthwise: Dim 1 of a depthwise weight is not an input channel.

    Returns:
        Lines such as ``"2 output channels: read by 'fc' and depends on the input"``.
    """
    if pruned.dim() == 0:
        return [f"1 entry: {_SCATTERED}"] if bool(pruned) else []
    keep = [
        [i for i in range(pruned.shape[d]) if i not in set(removed.get(d, ()))]
        for d in range(min(pruned.dim(), 2))
    ]
    rest = pruned
    for d, kept in enumerate(keep):
        rest = rest.index_select(d, torch.tensor(kept, dtype=torch.long))
    counts: Counter[str] = Counter()
    empty = torch.zeros(rest.shape[0], dtype=torch.bool)  # no entries: none whole
    whole_out = rest.reshape(rest.shape[0], -1).all(1) if rest.numel() else empty
    for i in whole_out.nonzero().flatten().tolist():
        counts["output channel|" + cause.get((param, 0, keep[0][i]), _OUT)] += 1
    rest = rest & ~whole_out.view(-1, *[1] * (rest.dim() - 1))
    if pruned.dim() >= 2 and not depthwise:
        cols = pruned.index_select(0, torch.tensor(keep[0], dtype=torch.long))
        cols = cols.index_select(1, torch.tensor(keep[1], dtype=torch.long))
        whole_in = cols.transpose(0, 1).reshape(cols.shape[1], -1).all(1)
        whole_in &= rest.transpose(0, 1).reshape(rest.shape[1], -1).any(1)  # not yet explained
        for j in whole_in.nonzero().flatten().tolist():
            counts["input channel|" + cause.get((param, 1, keep[1][j]), _IN)] += 1
        rest = rest & ~whole_in.view(1, -1, *[1] * (rest.dim() - 2))
    lines = []
    for key, n in counts.items():
        what, why = key.split("|", 1)
        lines.append(f"{n:,} {what}{'s' if n != 1 else ''}: {why}")
    scattered = int(rest.sum())
    if scattered:
        lines.append(f"{scattered:,} entr{'ies' if scattered != 1 else 'y'}: {_SCATTERED}")
    return lines


def drop_positions(t: Tensor, dims: Mapping[int, Sequence[int]]) -> Tensor:
    """``t`` without the given positions along each dim."""
    for d, gone in dims.items():
        drop = set(gone)
        keep = torch.tensor([i for i in range(t.shape[d]) if i not in drop], dtype=torch.long)
        t = t.index_select(d, keep.to(t.device))
    return t


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape) if shape else "-"


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:g}"
