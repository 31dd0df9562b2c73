"""Honest storage of a compressed model: values, index and scales (docs/algorithms.md §4).

Let W be a prunable weight with n entries of which k are nonzero, b_w = ⌈log₂ L⌉
the bits of one of its L quantization levels and b_nz the bits of one nonzero
value (below). A layer is stored in the cheapest of four codes:

    none      n · b_w                   every entry, zeros included (no index)
    bitmask   k · b_nz + n              the nonzeros plus 1 bit per entry
    relative  k · b_nz + (k + p)·b_idx  the nonzeros plus a b_idx-bit gap each and
                                        p escape fields for gaps longer than 2^b_idx − 1
    rice      k · b_nz + U + k·(1 + r)  the nonzeros plus a Golomb–Rice code of each
                                        gap with parameter r (U ones of unary quotients)

plus 32 bits per quantization scale α, against dense fp32 = 32 · n. ``none`` is
only possible when 0 is a value the code can hold (fp32, uniform, ternary, pow2,
level lists containing 0), the three sparse codes always. The gap codes, their
exact bit counts and the fields written are those of :mod:`dualprune.size.indexcodes`:
gaps g_j = q_j − q_{j−1} (q_0 = −1) between the nonzero positions read row-major
(flat, across rows, no row pointers); zeros after the last nonzero cost nothing.
b_idx is searched over 1 … 16 and r over 0 … 16 per layer; both are kept in the
packed file's manifest, like the code itself, not in these bits.

Nonzero-only values. Where an index marks the nonzeros (bitmask, relative, rice)
a stored value is never 0, so it is coded among the L' nonzero levels only:
b_nz = ⌈log₂ L'⌉ (ternary {−α, 0, +α}: 1 bit, the sign; a uniform b-bit quantizer
with L levels including 0: ⌈log₂(L − 1)⌉; a level list without 0 keeps ⌈log₂ L⌉;
a single nonzero level: 0 bits). Unquantized values stay at 32 bits. The dense
``none`` code stores zeros too and keeps b_w.

What is stored is the weight as it is: its nonzeros decide k and the gaps, the
constraint decides the levels and the scales. So build reports after the hard
prune (the weights projected onto S). A value that the quantizer rounded to 0
inside the sparsity support (a ternary 0) is treated like a pruned entry: the
index skips it, as an encoder that sees W does.

ADMM-NN's storage break-even (§4): a sparse layer with relative indices is no
larger than dense b_w-bit storage once W has compression n/k ≥ (b_nz + b_idx)/b_w
(escapes ignored), i.e. a pruning ratio ≥ 1 − b_w/(b_nz + b_idx). Reported per
layer with the b_idx that suits the layer's gaps; with b_nz = b_w (fp32, 8-bit
uniform) it is the paper's (b_w + b_idx)/b_w.

References:
    Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
    Ren et al., "ADMM-NN", ASPLOS 2019 (break-even pruning ratio).
    Golomb 1966, Rice 1979 (the gap code; :mod:`dualprune.size.indexcodes`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from torch import Tensor, nn

from dualprune.constraints import Constraint, Intersection
from dualprune.plan import layer_weight, prunable_layers
from dualprune.size.indexcodes import (
    MAX_INDEX_BITS,
    MAX_RICE_PARAMETER,
    best_relative,
    best_rice,
    relative_gaps,
    relative_padding,
)

__all__ = [
    "DENSE_BITS",
    "INDEX_KINDS",
    "MAX_INDEX_BITS",
    "MAX_RICE_PARAMETER",
    "SCALE_BITS",
    "ModelStorage",
    "Storage",
    "code_bits",
    "layer_storage",
    "model_storage",
    "nonzero_code_bits",
    "relative_gaps",
    "relative_padding",
    "scale_count",
    "value_part",
]

#: Bits of one unquantized value (fp32) and of one scale α.
DENSE_BITS = 32
SCALE_BITS = 32
#: The codes of a layer, in the order that breaks ties (the simpler first).
INDEX_KINDS = ("none", "bitmask", "relative", "rice")


@dataclass(frozen=True)
class Storage:
    """Bits needed to store one layer's weight (module docstring).

    Attributes:
        entries: n, the entries of the weight.
        nonzero: k, its nonzeros.
        bits: b_w = ⌈log₂ L⌉, bits of one value of the dense code (32 unquantized).
        nonzero_bits: b_nz, bits of one value where the index marks the nonzeros
            (⌈log₂ L'⌉ for the L' nonzero levels; 32 unquantized).
        dense_bits: 32 · n, the fp32 weight.
        value_bits: n · b_w for ``"none"``, k · b_nz for the sparse codes.
        index_bits: bits of the index (0 for ``"none"``).
        index_kind: ``"none"``, ``"bitmask"``, ``"relative"`` or ``"rice"``, the cheapest.
        index_bits_per_entry: the chosen code's parameter: 0 (none), 1 (bitmask:
            one bit per weight entry), b_idx (relative: bits of one field) or r
            (rice: the low bits of each gap, after its unary quotient).
        scale_bits: 32 bits per quantization scale α.
        padding: p, the escape fields of the chosen relative index (0 otherwise).
        relative_index_bits: b_idx that makes relative indices cheapest for this layer.
        rice_parameter: r that makes the Rice index cheapest for this layer.
        rice_bits: index bits of that Rice index, U + k·(1 + r).
    """

    entries: int
    nonzero: int
    bits: int
    nonzero_bits: int
    dense_bits: int
    value_bits: int
    index_bits: int
    index_kind: str
    index_bits_per_entry: int
    scale_bits: int
    padding: int = 0
    relative_index_bits: int | None = None
    rice_parameter: int | None = None
    rice_bits: int | None = None

    @property
    def total_bits(self) -> int:
        """value_bits + index_bits + scale_bits."""
        return self.value_bits + self.index_bits + self.scale_bits

    @property
    def bytes(self) -> int:
        """⌈total_bits / 8⌉."""
        return -(-self.total_bits // 8)

    @property
    def ratio(self) -> float:
        """dense_bits / total_bits (∞ for a layer that costs nothing)."""
        return self.dense_bits / self.total_bits if self.total_bits else math.inf

    @property
    def break_even(self) -> float | None:
        """ADMM-NN storage break-even compression (b_nz + b_idx)/b_w, b_idx = relative_index_bits.

        ``None`` for a layer without zeros (no gaps to size b_idx on).
        """
        if self.relative_index_bits is None or self.nonzero == self.entries:
            return None
        return (self.nonzero_bits + self.relative_index_bits) / self.bits

    @property
    def break_even_pruning(self) -> float | None:
        """The same as a pruning ratio: 1 − b_w / (b_nz + b_idx)."""
        be = self.break_even
        return None if be is None else 1.0 - 1.0 / be

    def as_dict(self) -> dict[str, object]:
        """Fields and derived figures as plain data (∞ written as ``None``)."""
        ratio = self.ratio
        return {
            **asdict(self),
            "total_bits": self.total_bits,
            "bytes": self.bytes,
            "ratio": ratio if math.isfinite(ratio) else None,
            "break_even": self.break_even,
            "break_even_pruning": self.break_even_pruning,
        }


def value_part(constraint: Constraint | None) -> Constraint | None:
    """The quantization part of a constraint (itself, or an intersection's value part)."""
    if constraint is None:
        return None
    if isinstance(constraint, Intersection):
        return constraint.value
    return constraint if constraint.restricts_values else None


def _levels(constraint: Constraint | None) -> Tensor | None:
    q = value_part(constraint)
    level_values = getattr(q, "level_values", None)
    return None if level_values is None else level_values()


def code_bits(constraint: Constraint | None) -> int:
    """b_w = ⌈log₂ L⌉ for L quantization levels (b for b-bit uniform and pow2,
    1 binary, 2 ternary); 32 (fp32) without a quantization part."""
    levels = _levels(constraint)
    if levels is None:
        return DENSE_BITS
    return max(1, math.ceil(math.log2(levels.numel())))


def nonzero_code_bits(constraint: Constraint | None) -> int:
    """b_nz = ⌈log₂ L'⌉ for the L' nonzero levels (0 for one), 32 without a quantization part.

    Ternary: 1 (the sign); uniform b-bit (L = 2^b − 1 levels with 0): ⌈log₂(L − 1)⌉,
    i.e. 1 for b = 2 and b otherwise; a level list without 0: ⌈log₂ L⌉.
    """
    levels = _levels(constraint)
    if levels is None:
        return DENSE_BITS
    count = int((levels != 0).sum())
    return math.ceil(math.log2(count)) if count > 1 else 0


def _zero_is_a_level(constraint: Constraint | None) -> bool:
    levels = _levels(constraint)
    return levels is None or bool((levels == 0).any())


def scale_count(weight: Tensor | tuple[int, ...], constraint: Constraint | None) -> int:
    """Number of scales α stored: 1 per tensor, shape[0] per channel, 0 unscaled/unquantized."""
    q = value_part(constraint)
    scale = getattr(q, "scale", None)
    if q is None or scale in (None, "none"):
        return 0
    shape = tuple(weight.shape) if isinstance(weight, Tensor) else tuple(weight)
    return int(shape[0]) if scale == "channel" and shape else 1


def layer_storage(weight: Tensor, constraint: Constraint | None = None) -> Storage:
    """The cheapest honest storage of ``weight`` under ``constraint`` (module docstring).

    Args:
        weight: the weight as it is (after the hard prune: its zeros are what is pruned).
        constraint: its constraint; the quantization part gives b_w, b_nz and the
            scales, ``None`` (or no quantization part) means fp32 values.

    Returns:
        A :class:`Storage`. Ties go to the simpler code (the order of
        :data:`INDEX_KINDS`), then to the smaller b_idx or r; a weight without
        zeros is always stored with no index.

    Example:
        >>> w = torch.zeros(10, 4); w[0, :2] = 1.0
        >>> s = layer_storage(w, Quantization(bits=4))
        >>> (s.index_kind, s.value_bits, s.index_bits, s.scale_bits)
        ('relative', 8, 2, 32)
    """
    n = weight.numel()
    nz = weight.detach() != 0
    k = int(nz.sum())
    b, b_nz = code_bits(constraint), nonzero_code_bits(constraint)
    scales = SCALE_BITS * scale_count(weight, constraint)
    gaps = relative_gaps(nz)
    rel_bits, width, pad = best_relative(gaps)
    rice_index, r, _ = best_rice(gaps)
    # (total without scales, order for ties, kind, value bits, index bits, parameter, padding)
    options: list[tuple[int, int, str, int, int, int, int]] = []
    if k == n or _zero_is_a_level(constraint):
        options.append((n * b, 0, "none", n * b, 0, 0, 0))
    if k < n:
        values = k * b_nz
        options.append((values + n, 1, "bitmask", values, n, 1, 0))
        options.append((values + rel_bits, 2, "relative", values, rel_bits, width, pad))
        options.append((values + rice_index, 3, "rice", values, rice_index, r, 0))
    _, _, kind, values, index, param, pad = min(options)
    return Storage(
        entries=n,
        nonzero=k,
        bits=b,
        nonzero_bits=b_nz,
        dense_bits=DENSE_BITS * n,
        value_bits=values,
        index_bits=index,
        index_kind=kind,
        index_bits_per_entry=param,
        scale_bits=scales,
        padding=pad,
        relative_index_bits=width,
        rice_parameter=r,
        rice_bits=rice_index,
    )


@dataclass(frozen=True)
class ModelStorage:
    """Storage of a whole model: prunable layers coded, everything else fp32.

    Attributes:
        layers: :class:`Storage` of every prunable layer, by module name.
        other_params: entries of the parameters that are not a prunable weight
            (biases, BatchNorm γ/β, embeddings, ...), 32 bits each.
        buffers: entries of floating-point buffers (BatchNorm running mean and
            variance, needed at inference), 32 bits each; integer buffers
            (``num_batches_tracked``) are not counted.
    """

    layers: dict[str, Storage] = field(default_factory=dict)
    other_params: int = 0
    buffers: int = 0

    @property
    def other_bits(self) -> int:
        """32 · (other_params + buffers)."""
        return DENSE_BITS * (self.other_params + self.buffers)

    @property
    def prunable_dense_bits(self) -> int:
        """Σ 32 · n over prunable layers."""
        return sum(s.dense_bits for s in self.layers.values())

    @property
    def prunable_bits(self) -> int:
        """Σ total_bits over prunable layers (values + indices + scales)."""
        return sum(s.total_bits for s in self.layers.values())

    @property
    def dense_bits(self) -> int:
        """The whole fp32 model: prunable dense bits + other bits."""
        return self.prunable_dense_bits + self.other_bits

    @property
    def total_bits(self) -> int:
        """The whole compressed model: prunable bits + other bits."""
        return self.prunable_bits + self.other_bits

    @property
    def prunable_bytes(self) -> int:
        """Σ of each prunable layer's bytes (each layer starts on a byte)."""
        return sum(s.bytes for s in self.layers.values())

    @property
    def bytes(self) -> int:
        """prunable_bytes + 4 bytes per other entry."""
        return self.prunable_bytes + self.other_bits // 8

    @property
    def dense_bytes(self) -> int:
        """dense_bits / 8."""
        return self.dense_bits // 8

    @property
    def ratio(self) -> float:
        """dense_bytes / bytes over the whole model, indices and scales counted."""
        return self.dense_bytes / self.bytes if self.bytes else math.inf

    @property
    def ratio_prunable(self) -> float:
        """prunable dense bytes / prunable_bytes, indices and scales counted."""
        nbytes = self.prunable_bytes
        return self.prunable_dense_bits / 8 / nbytes if nbytes else math.inf


def model_storage(
    model: nn.Module,
    constraints: Mapping[str, Constraint | None] | None = None,
    layers: Mapping[str, Storage] | None = None,
) -> ModelStorage:
    """Storage of ``model``: :func:`layer_storage` per prunable layer, the rest at 32 bits.

    Args:
        model: the model (after the hard prune).
        constraints: constraint per module name (as from ``Plan.resolve``); layers
            absent from it are stored as fp32.
        layers: :class:`Storage` already computed per module name (skips the work).
    """
    prunable = prunable_layers(model)
    constraints = constraints or {}
    if layers is None:
        layers = {
            name: layer_storage(layer_weight(m), constraints.get(name))
            for name, m in prunable.items()
        }
    weights = {id(layer_weight(m)) for m in prunable.values()}
    seen: set[int] = set()
    other = 0
    for p in model.parameters():
        if id(p) not in weights and id(p) not in seen:
            seen.add(id(p))
            other += p.numel()
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return ModelStorage(layers=dict(layers), other_params=other, buffers=buffers)
