"""Honest storage of a compressed model: values, index and scales (docs/algorithms.md §4).

Let W be a prunable weight with n entries of which k are nonzero, b_w the bits of
one stored value and b_idx the bits of one relative index. A layer is stored in
the cheapest of three codes:

    none      n · b_w                       every entry, zeros included (no index)
    bitmask   k · b_w + n                   the nonzeros plus 1 bit per entry
    relative  (k + p) · (b_w + b_idx)       the nonzeros plus p padding zeros, each
                                            with a b_idx-bit gap (Deep Compression)

plus 32 bits per quantization scale α, against dense fp32 = 32 · n. ``none`` is
only possible when 0 is a value the code can hold (fp32, uniform, ternary, pow2,
level lists containing 0), ``bitmask`` always; ``relative`` needs a padding zero
only where a gap is too long, so it is possible without a 0 level when p = 0.

Relative indices (Han et al. 2016, §3): the nonzeros are read in row-major order
of W (flat, across rows, no row pointers). With positions q_1 < … < q_k and
q_0 = −1, the gaps are g_j = q_j − q_{j−1} ≥ 1; a b_idx-bit gap holds 1 … 2^b_idx − 1,
so a gap g is written as ⌈g / (2^b_idx − 1)⌉ − 1 padding entries of the largest gap
(each a stored zero: a value slot and an index) followed by the entry itself.
Zeros after the last nonzero cost nothing (the decoder knows n). b_idx is searched
over 1 … 16 per layer.

What is stored is the weight as it is: its nonzeros decide k and the gaps, the
constraint decides b_w and the scales. So build reports after the hard prune (the
weights projected onto S). A value that the quantizer rounded to 0 inside the
sparsity support (a ternary 0) is treated like a pruned entry: the index skips
it. This is what an encoder that sees W does, and never costs more than storing
it as a 2-bit code (its place in a gap is never dearer than a stored slot). The
code width stays the quantizer's (ternary: 2 bits, ⌈log₂ 3⌉) even though a sparse
ternary layer only stores ±1 — a conservative count.

ADMM-NN's storage break-even (§4): a sparse layer with relative indices is no
larger than dense b_w-bit storage once W has compression n/k ≥ (b_w + b_idx)/b_w
(padding ignored), i.e. a pruning ratio ≥ b_idx/(b_w + b_idx). Reported per layer
with the b_idx that suits the layer's gaps.

References:
    Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
    Ren et al., "ADMM-NN", ASPLOS 2019 (break-even pruning ratio).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from dualprune.constraints import Constraint, Intersection
from dualprune.plan import prunable_layers

__all__ = [
    "DENSE_BITS",
    "MAX_INDEX_BITS",
    "SCALE_BITS",
    "ModelStorage",
    "Storage",
    "code_bits",
    "layer_storage",
    "model_storage",
    "relative_gaps",
    "relative_padding",
    "scale_count",
    "value_part",
]

#: Bits of one unquantized value (fp32), of one scale α, and the largest relative index searched.
DENSE_BITS = 32
SCALE_BITS = 32
MAX_INDEX_BITS = 16


@dataclass(frozen=True)
class Storage:
    """Bits needed to store one layer's weight (module docstring).

    Attributes:
        entries: n, the entries of the weight.
        nonzero: k, its nonzeros.
        bits: b_w, bits of one stored value (32 unquantized).
        dense_bits: 32 · n, the fp32 weight.
        value_bits: stored values × b_w (padding zeros included).
        index_bits: bits of the index (0 for ``"none"``).
        index_kind: ``"none"``, ``"bitmask"`` or ``"relative"``, the cheapest possible.
        index_bits_per_entry: width of one index entry: 0, 1 (one per weight entry)
            or b_idx (one per stored value).
        scale_bits: 32 bits per quantization scale α.
        padding: padding zeros stored by the relative code (0 otherwise).
        relative_index_bits: b_idx that makes relative indices cheapest for this
            layer (``None`` when no width works: a gap needs padding but 0 is no level).
    """

    entries: int
    nonzero: int
    bits: int
    dense_bits: int
    value_bits: int
    index_bits: int
    index_kind: str
    index_bits_per_entry: int
    scale_bits: int
    padding: int = 0
    relative_index_bits: int | None = None

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
        """ADMM-NN storage break-even compression (b_w + b_idx)/b_w, b_idx = relative_index_bits.

        ``None`` for a layer without zeros (no gaps to size b_idx on) or when no
        relative width is possible.
        """
        if self.relative_index_bits is None or self.nonzero == self.entries:
            return None
        return (self.bits + self.relative_index_bits) / self.bits

    @property
    def break_even_pruning(self) -> float | None:
        """The same as a pruning ratio: b_idx / (b_w + b_idx)."""
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


def relative_gaps(nonzero: Tensor) -> Tensor:
    """Gaps g_j = q_j − q_{j−1} (q_0 = −1) between the nonzeros of a flattened mask (int64)."""
    positions = torch.nonzero(nonzero.reshape(-1)).reshape(-1)  # (k,)
    prev = torch.cat([positions.new_full((1,), -1), positions[:-1]])
    return positions - prev


def relative_padding(gaps: Tensor, index_bits: int) -> int:
    """p = Σ_j (⌈g_j / M⌉ − 1) = Σ_j ⌊(g_j − 1)/M⌋ padding zeros, M = 2^index_bits − 1."""
    if gaps.numel() == 0:
        return 0
    top = 2**index_bits - 1
    return int(torch.div(gaps - 1, top, rounding_mode="floor").sum())


def layer_storage(weight: Tensor, constraint: Constraint | None = None) -> Storage:
    """The cheapest honest storage of ``weight`` under ``constraint`` (module docstring).

    Args:
        weight: the weight as it is (after the hard prune: its zeros are what is pruned).
        constraint: its constraint; the quantization part gives b_w and the scales,
            ``None`` (or no quantization part) means fp32 values.

    Returns:
        A :class:`Storage`. Ties go to the simpler code (none, then bitmask, then
        relative); a weight without zeros is always stored with no index.

    Example:
        >>> w = torch.zeros(10, 4); w[0, :2] = 1.0
        >>> s = layer_storage(w, Quantization(bits=4))
        >>> (s.index_kind, s.value_bits, s.index_bits, s.scale_bits)
        ('relative', 8, 2, 32)
    """
    n = weight.numel()
    nz = weight.detach() != 0
    k = int(nz.sum())
    b = code_bits(constraint)
    zero_ok = _zero_is_a_level(constraint)
    scales = SCALE_BITS * scale_count(weight, constraint)
    base = {"entries": n, "nonzero": k, "bits": b, "dense_bits": DENSE_BITS * n}
    # (total without scales, order for ties, kind, value bits, index bits, width, padding)
    options: list[tuple[int, int, str, int, int, int, int]] = []
    if k == n or zero_ok:
        options.append((n * b, 0, "none", n * b, 0, 0, 0))
    best_rel: tuple[int, int, int] | None = None  # (cost, b_idx, padding)
    gaps = relative_gaps(nz)
    for width in range(1, MAX_INDEX_BITS + 1):
        pad = relative_padding(gaps, width)
        if pad and not zero_ok:
            continue
        cost = (k + pad) * (b + width)
        if best_rel is None or cost < best_rel[0]:
            best_rel = (cost, width, pad)
    if k < n:
        options.append((k * b + n, 1, "bitmask", k * b, n, 1, 0))
        if best_rel is not None:
            cost, width, pad = best_rel
            options.append((cost, 2, "relative", (k + pad) * b, (k + pad) * width, width, pad))
    _, _, kind, values, index, per_entry, pad = min(options)
    return Storage(
        **base,
        value_bits=values,
        index_bits=index,
        index_kind=kind,
        index_bits_per_entry=per_entry,
        scale_bits=scales,
        padding=pad,
        relative_index_bits=None if best_rel is None else best_rel[1],
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
            name: layer_storage(m.weight, constraints.get(name)) for name, m in prunable.items()
        }
    weights = {id(m.weight) for m in prunable.values()}
    seen: set[int] = set()
    other = 0
    for p in model.parameters():
        if id(p) not in weights and id(p) not in seen:
            seen.add(id(p))
            other += p.numel()
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return ModelStorage(layers=dict(layers), other_params=other, buffers=buffers)
