"""One prunable weight as a bit stream, exactly as :mod:`dualprune.storage` counts it (§4).

Let W be the weight (n entries, k nonzero, read row-major), b_w the bits of a
stored value, s the number of scales α and m the number of stored values. The
stream of a layer is three fields back to back (:mod:`~dualprune.export.bits`):

    scales   s × 32 bits    α as fp32 (s = 0, 1 or one per output channel)
    values   m × b_w bits   a quantized value is the index j of its level ℓ_j in
                            ``Quantization.level_values()`` (b_w = ⌈log₂ L⌉); an
                            unquantized one is its fp32 bit pattern (b_w = 32)
    index    none:      nothing, m = n (every entry stored, zeros included)
             bitmask:   n × 1 bit, 1 = nonzero, m = k
             relative:  m × b_idx bits, the gaps g between stored entries, m = k + p
                        (p padding entries of gap 2^b_idx − 1 holding the value 0)

so it has exactly ``layer_storage(W, constraint).total_bits`` bits: the code
(none / bitmask / relative), b_idx and p are the ones that
:func:`~dualprune.storage.layer_storage` chose, and the gaps come from
:func:`~dualprune.storage.relative_gaps`.

A quantized entry decodes to ``(ℓ_j · α)`` computed in fp32 (at least) and cast to
W's dtype, the arithmetic of :class:`~dualprune.enforce.LevelGrid` and
:meth:`Quantization.codes`. Encoding checks that every nonzero entry decodes to
itself bit for bit; the scales come from the masks when given, else they are
recovered from W (:func:`_recovered_scales`: α within two ulps of v*/ℓ for the
largest entry v* of a row, checked on the row's distinct values).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dualprune.constraints import Constraint, Quantization, from_dict
from dualprune.errors import CheckpointError, ConfigError, DualpruneError
from dualprune.export.bits import BitReader, BitWriter, float_codes, float_from_codes
from dualprune.storage import (
    SCALE_BITS,
    Storage,
    code_bits,
    layer_storage,
    relative_gaps,
    relative_padding,
    scale_count,
    value_part,
)

__all__ = ["decode_layer", "encode_layer", "stream_bytes"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _quantizer(key: str, constraint: Constraint | None) -> Quantization | None:
    q = value_part(constraint)
    if q is not None and not isinstance(q, Quantization):
        raise ConfigError(f"'{key}': the packed format stores Quantization values only, got {q!r}")
    return q


def _decode_values(codes: Tensor, alpha: Tensor, levels: Tensor, dtype: torch.dtype) -> Tensor:
    """ℓ[codes] · α in fp32 (or wider), cast to ``dtype``; codes and α broadcast."""
    calc = torch.promote_types(dtype, torch.float32)
    return (levels.to(calc)[codes] * alpha.to(calc)).to(dtype)


def _fit_codes(key: str, w: Tensor, q: Quantization, given: Tensor | None) -> tuple[Tensor, Tensor]:
    """Level indices of W (rows, n/rows) and α (rows,) fp32 such that every nonzero decodes exactly.

    Raises:
        ConfigError: W is not on the grid {α·ℓ} (with the given scales, or any
            scale recovered from W).
    """
    rows = w.shape[0] if q.scale == "channel" else 1
    x = w.reshape(rows, -1)  # (rows, n/rows)
    nz = x != 0
    levels = q.level_values()  # float64, ascending
    mids = (levels[1:] + levels[:-1]) / 2
    if q.scale == "none":
        alpha = torch.ones(rows, dtype=torch.float32)
    elif given is not None:
        alpha = given.detach().cpu().reshape(rows).to(torch.float32)
    else:
        alpha = _recovered_scales(x, q, levels, mids)
    codes = _nearest(x, alpha, mids)
    back = _decode_values(codes, alpha.unsqueeze(1), levels, w.dtype)
    wrong = ((back != x) & nz).any(1)  # (rows,)
    if bool(wrong.any()):
        row = int(wrong.nonzero()[0])
        where = f" (output channel {row})" if q.scale == "channel" else ""
        raise ConfigError(
            f"'{key}' is not on the grid of {q!r}{where}: some nonzero weights are no α·ℓ; "
            "project it first (masks.apply(model)) or pass the masks that hold its scales"
        )
    zero = (levels == 0).nonzero()
    if zero.numel():
        codes[~nz] = int(zero[0])
    return codes, alpha


def _recovered_scales(x: Tensor, q: Quantization, levels: Tensor, mids: Tensor) -> Tensor:
    """α per row (rows,) fp32 under which every nonzero of x (rows, n/rows) is fl(α·ℓ) exactly.

    Let v* be the largest entry of a row. It sits on some level ℓ, and x = fl(α·ℓ)
    puts α within about one ulp of v*/ℓ; so for each nonzero level ℓ (the largest
    first), fl(v*/ℓ) and its fp32 neighbours up to two ulps away are tried on the
    row's distinct values, and the first α under which they all decode exactly
    is kept. Level sets of more than 256 levels try only the level that the refitted
    α of ``q.codes`` gives v*. Rows without nonzeros get α = 0; rows where nothing
    fits keep α = 0 and are refused by the caller's check.
    """
    rows = x.shape[0]
    alpha = torch.zeros(rows, dtype=torch.float32)
    distinct = [torch.unique(r[r != 0]) for r in x]
    width = max(d.numel() for d in distinct)
    if width == 0:
        return alpha
    table = torch.zeros(rows, width, dtype=x.dtype)  # (rows, distinct values), zero padded
    used = torch.zeros(rows, width, dtype=torch.bool)
    for i, d in enumerate(distinct):
        table[i, : d.numel()], used[i, : d.numel()] = d, True
    top = table.abs().argmax(1, keepdim=True)
    vstar = table.gather(1, top).reshape(rows).double()  # (rows,) signed
    nonzero = levels[levels != 0]
    if nonzero.numel() <= 256:
        tries = [lv.expand(rows) for lv in nonzero[nonzero.abs().argsort(descending=True)]]
    else:
        refit = q.codes(x, mask=x != 0)[1].detach().reshape(rows).to(torch.float32)
        tries = [levels[_nearest(vstar.unsqueeze(1), refit, mids).reshape(rows)]]
    found = ~used.any(1)
    up, down = torch.tensor(float("inf")), torch.tensor(0.0)
    for lv in tries:
        base = (vstar / lv).to(torch.float32)
        near = [torch.nextafter(base, up), torch.nextafter(base, down)]
        for cand in (base, *near, torch.nextafter(near[0], up), torch.nextafter(near[1], down)):
            back = _decode_values(_nearest(table, cand, mids), cand.unsqueeze(1), levels, x.dtype)
            ok = ~found & (cand > 0) & ((back == table) | ~used).all(1)
            alpha[ok] = cand[ok]
            found |= ok
        if bool(found.all()):
            break
    return alpha


def _nearest(x: Tensor, alpha: Tensor, mids: Tensor) -> Tensor:
    """Index of the nearest level of x/α per entry (rows broadcast over α)."""
    a = alpha.double().unsqueeze(1)
    safe = torch.where(a > 0, a, torch.ones((), dtype=torch.float64))
    return torch.searchsorted(mids, (x.double() / safe).contiguous(), right=True)


def encode_layer(
    key: str, weight: Tensor, constraint: Constraint | None, scales: Tensor | None = None
) -> tuple[Tensor, dict[str, Any], Storage]:
    """Pack one weight W (module docstring): its stream, manifest entry and storage figure.

    Args:
        key: The parameter name (for messages).
        weight: W as it is (after the hard prune; its zeros are what is pruned).
        constraint: Its constraint; the quantization part gives the levels and b_w.
        scales: α as the masks hold it, or ``None`` to recover it from W.

    Returns:
        ``(stream, entry, storage)``: the uint8 stream of ⌈total_bits/8⌉ bytes, the
        JSON-ready entry :func:`decode_layer` needs, and ``layer_storage(W, constraint)``.

    Raises:
        ConfigError: W is not fp32/fp16/bf16, or not on its quantization grid.
    """
    w = weight.detach().cpu()
    dtype = next((n for n, d in _DTYPES.items() if d == w.dtype), None)
    if dtype is None:
        raise ConfigError(
            f"'{key}' has dtype {w.dtype}; the packed format holds float32, float16 or "
            "bfloat16 weights (convert the model with model.float())"
        )
    q = _quantizer(key, constraint)
    st = layer_storage(w, constraint)
    flat = w.reshape(-1)
    nz = flat != 0
    writer = BitWriter()
    zero_code = 0  # +0.0 for fp32 values, the index of level 0 for quantized ones
    if q is None:
        codes = float_codes(flat)
    else:
        codes2d, alpha = _fit_codes(key, w, q, scales)
        codes = codes2d.reshape(-1)
        zero = (q.level_values() == 0).nonzero()
        zero_code = int(zero[0]) if zero.numel() else 0
        count = scale_count(w, constraint)
        writer.write(float_codes(alpha[:count]), SCALE_BITS)
    if st.index_kind == "none":
        stored = codes
    elif st.index_kind == "bitmask":
        stored = codes[nz]
    else:
        top = 2**st.index_bits_per_entry - 1
        gaps = relative_gaps(nz)
        pads = torch.div(gaps - 1, top, rounding_mode="floor")
        m = int(nz.sum()) + relative_padding(gaps, st.index_bits_per_entry)
        last = torch.cumsum(pads + 1, 0) - 1  # slot of each nonzero after its padding
        index = torch.full((m,), top, dtype=torch.int64)
        index[last] = gaps - pads * top
        stored = torch.full((m,), zero_code, dtype=torch.int64)
        stored[last] = codes[nz]
    if stored.numel():
        writer.write(stored, st.bits)
    if st.index_kind == "bitmask":
        writer.write(nz.to(torch.int64), 1)
    elif st.index_kind == "relative" and index.numel():
        writer.write(index, st.index_bits_per_entry)
    entry: dict[str, Any] = {"shape": list(w.shape)}  # b_w and s follow from q and the shape
    if dtype != "float32":
        entry["dtype"] = dtype
    if q is not None:
        entry["q"] = {k: v for k, v in q.to_dict().items() if k != "type"}
    entry.update(index=st.index_kind, b_idx=st.index_bits_per_entry, m=int(stored.numel()))
    return writer.getvalue(), entry, st


def decode_layer(key: str, data: Tensor, entry: dict[str, Any]) -> Tensor:
    """The weight stored by :func:`encode_layer`, bit for bit.

    Raises:
        CheckpointError: A malformed entry or a stream that does not match it.
    """
    try:
        return _decode(data, entry)
    except (DualpruneError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(f"packed weight '{key}' is corrupt ({first})") from None


def _parse(entry: dict[str, Any]) -> tuple[tuple[int, ...], Quantization | None, str, int, int]:
    """(shape, quantizer, index code, b_idx, m) of a manifest entry."""
    shape = tuple(int(d) for d in entry["shape"])
    kind, width, m = entry["index"], int(entry["b_idx"]), int(entry["m"])
    if kind not in ("none", "bitmask", "relative"):
        raise CheckpointError(f"unknown index code {kind!r}")
    if min((m, width, *shape), default=0) < 0 or (kind == "relative" and not 1 <= width <= 32):
        raise CheckpointError(f"bad sizes in {entry!r}")
    q = None
    if entry.get("q") is not None:
        q = from_dict({"type": "quantization", **entry["q"]})
        if not isinstance(q, Quantization):
            raise CheckpointError(f"quantizer {entry['q']!r} is not a quantization")
    return shape, q, kind, width, m


def stream_bytes(entry: dict[str, Any]) -> int:
    """Bytes of the stream that ``entry`` describes: ⌈(32·s + m·b_w + index bits)/8⌉.

    The index takes n bits (bitmask), m·b_idx bits (relative) or none, as
    :func:`encode_layer` writes it; so the stream's length follows from the entry.

    Raises:
        CheckpointError: A malformed entry.
    """
    try:
        shape, q, kind, width, m = _parse(entry)
    except CheckpointError:
        raise
    except (DualpruneError, ValueError, KeyError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(f"malformed packed entry ({first})") from None
    bits = SCALE_BITS * scale_count(shape, q) + m * code_bits(q)
    if kind == "bitmask":
        bits += torch.Size(shape).numel()
    elif kind == "relative":
        bits += m * width
    return -(-bits // 8)


def _decode(data: Tensor, entry: dict[str, Any]) -> Tensor:
    shape, q, kind, width, m = _parse(entry)
    dtype = _DTYPES[entry.get("dtype", "float32")]
    n = int(torch.Size(shape).numel())
    b, s = code_bits(q), scale_count(shape, q)
    reader = BitReader(data)
    alpha = float_from_codes(reader.read(s, SCALE_BITS)) if s else torch.ones(1)
    codes = reader.read(m, b) if m else torch.zeros(0, dtype=torch.int64)
    if kind == "none":
        positions = torch.arange(n)
        if m != n:
            raise CheckpointError(f"{m} values stored for {n} entries")
    elif kind == "bitmask":
        bitmask = reader.read(n, 1) if n else torch.zeros(0, dtype=torch.int64)
        positions = bitmask.nonzero().reshape(-1)
        if positions.numel() != m:
            raise CheckpointError(f"bitmask marks {positions.numel()} entries for {m} values")
    else:  # relative
        gaps = reader.read(m, width) if m else torch.zeros(0, dtype=torch.int64)
        positions = torch.cumsum(gaps, 0) - 1
        if m and (int(gaps.min()) < 1 or int(positions[-1]) >= n):
            raise CheckpointError("relative indices run past the end of the weight")
    if -(-reader.pos // 8) != data.numel():
        raise CheckpointError(f"{data.numel()} bytes stored for {reader.pos} bits")
    out = torch.zeros(n, dtype=dtype)
    if q is None:
        out[positions] = float_from_codes(codes).to(dtype)
        return out.view(shape)
    levels = q.level_values()
    if codes.numel() and int(codes.max()) >= levels.numel():
        raise CheckpointError(f"a level index exceeds the {levels.numel()} levels of {q!r}")
    if q.scale == "channel":
        rows = shape[0]
        if alpha.numel() != rows:
            raise CheckpointError(f"{alpha.numel()} scales stored for {rows} output channels")
        alpha = alpha[positions // max(1, n // rows)]
    out[positions] = _decode_values(codes, alpha, levels, dtype)
    return out.view(shape)
