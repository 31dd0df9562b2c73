"""One prunable weight as a bit stream, exactly as :mod:`dualprune.size.storage` counts it (§4).

Let W be the weight (n entries, k nonzero, read row-major), s the number of
scales α, b_w = ⌈log₂ L⌉ the bits of a level and b_nz = ⌈log₂ L'⌉ the bits of a
nonzero level (L' of them). The stream of a layer is three fields back to back
(:mod:`~dualprune.export.bits`), with no alignment between them:

    scales   s × 32 bits     α as fp32 (s = 0, 1 or one per output channel)
    values   none:    n × b_w bits, entry j of a level ℓ_j of
                      ``Quantization.level_values()`` for every entry, zeros included
             others:  k × b_nz bits, the index of each nonzero's level among the
                      nonzero levels only (ternary: 1 bit, the sign)
                      unquantized values are their fp32 bit pattern (32 bits) in both
    index    none:      nothing
             bitmask:   n × 1 bit, 1 = nonzero
             relative:  (k + p) × b_idx bits, the fields of
                        :func:`~dualprune.size.indexcodes.relative_fields` (0 = escape:
                        advance 2^b_idx − 1 positions, no value)
             rice:      U + k bits of unary quotients, then k × r remainder bits
                        (:func:`~dualprune.size.indexcodes.rice_fields`)

so it has exactly ``layer_storage(W, constraint).total_bits`` bits: the code and
its parameter (b_idx or r) are the ones :func:`~dualprune.size.storage.layer_storage`
chose. The manifest entry holds the code, its parameter (``b_idx``: 0, 1, b_idx
or r), the stored values ``m`` (n or k) and, for relative and rice, ``p`` (the
escapes p, or the unary ones U), from which the stream's length follows.

A quantized entry decodes to ``(ℓ_j · α)`` computed in fp32 (at least) and cast to
W's dtype, the arithmetic of :class:`~dualprune.masks.enforce.LevelGrid` and
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
from dualprune.size.indexcodes import (
    relative_fields,
    relative_gaps,
    relative_positions,
    rice_fields,
    rice_positions,
)
from dualprune.size.storage import (
    INDEX_KINDS,
    SCALE_BITS,
    Storage,
    code_bits,
    layer_storage,
    nonzero_code_bits,
    scale_count,
    value_part,
)

__all__ = ["decode_layer", "encode_layer", "stream_bits", "stream_bytes"]

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


def _write(writer: BitWriter, values: Tensor, width: int) -> None:
    """Append ``values`` at ``width`` bits (nothing for width 0 or no values)."""
    if width and values.numel():
        writer.write(values, width)


def _read(reader: BitReader, count: int, width: int) -> Tensor:
    """The next ``count`` fields of ``width`` bits (zeros for width 0)."""
    if not width or not count:
        return torch.zeros(count, dtype=torch.int64)
    return reader.read(count, width)


def encode_layer(
    key: str, weight: Tensor, constraint: Constraint | None, scales: Tensor | None = None
) -> tuple[Tensor, dict[str, Any], Storage]:
    """Pack one weight W (module docstring): its stream, manifest entry and storage figure.

    Args:
        key: The parameter name (for messages).
        weight: W as it is (after the hard prune; its zeros are what is pruned).
        constraint: Its constraint; the quantization part gives the levels, b_w and b_nz.
        scales: α as the masks hold it, or ``None`` to recover it from W.

    Returns:
        ``(stream, entry, storage)``: the uint8 stream of ⌈total_bits/8⌉ bytes
        holding exactly ``storage.total_bits`` bits, the JSON-ready entry
        :func:`decode_layer` needs, and ``layer_storage(W, constraint)``.

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
    if q is None:
        codes = float_codes(flat)
        nonzero_codes = codes[nz]
    else:
        codes2d, alpha = _fit_codes(key, w, q, scales)
        codes = codes2d.reshape(-1)
        rank = torch.cumsum(q.level_values() != 0, 0) - 1  # level j → its rank among ℓ ≠ 0
        nonzero_codes = rank[codes[nz]]
        writer.write(float_codes(alpha[: scale_count(w, constraint)]), SCALE_BITS)
    kind, param = st.index_kind, st.index_bits_per_entry
    entry: dict[str, Any] = {"shape": list(w.shape)}  # b_w, b_nz and s follow from q and shape
    if dtype != "float32":
        entry["dtype"] = dtype
    if q is not None:
        entry["q"] = {k: v for k, v in q.to_dict().items() if k != "type"}
    entry.update(index=kind, b_idx=param, m=st.nonzero if kind != "none" else st.entries)
    if kind == "none":
        _write(writer, codes, st.bits)
    else:
        _write(writer, nonzero_codes, st.nonzero_bits)
    gaps = relative_gaps(nz)
    if kind == "bitmask":
        _write(writer, nz.to(torch.int64), 1)
    elif kind == "relative":
        fields = relative_fields(gaps, param)
        _write(writer, fields, param)
        entry["p"] = fields.numel() - st.nonzero
    elif kind == "rice":
        unary, remainders = rice_fields(gaps, param)
        _write(writer, unary, 1)
        _write(writer, remainders, param)
        entry["p"] = unary.numel() - st.nonzero
    if writer.bits != st.total_bits:  # the file must be the count, bit for bit
        raise RuntimeError(f"'{key}': {writer.bits} bits written, {st.total_bits} counted")
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


def _parse(
    entry: dict[str, Any],
) -> tuple[tuple[int, ...], Quantization | None, str, int, int, int]:
    """(shape, quantizer, index code, its parameter, m, p) of a manifest entry."""
    shape = tuple(int(d) for d in entry["shape"])
    kind, param, m = entry["index"], int(entry["b_idx"]), int(entry["m"])
    p = int(entry.get("p", 0))
    if kind not in INDEX_KINDS:
        raise CheckpointError(f"unknown index code {kind!r}")
    n = torch.Size(shape).numel()
    bad = min((m, param, p, *shape), default=0) < 0 or m > n
    bad |= (kind == "relative" and not 1 <= param <= 32) or (kind == "rice" and param > 31)
    if bad or (kind == "none" and m != n) or (kind in ("none", "bitmask") and p):
        raise CheckpointError(f"bad sizes in {entry!r}")
    q: Quantization | None = None
    if entry.get("q") is not None:
        c = from_dict({"type": "quantization", **entry["q"]})
        if not isinstance(c, Quantization):
            raise CheckpointError(f"quantizer {entry['q']!r} is not a quantization")
        q = c
    return shape, q, kind, param, m, p


def _index_bits(kind: str, n: int, m: int, param: int, p: int) -> int:
    """Bits of the index: 0, n, (m + p)·b_idx or p + m·(1 + r) (storage's formulas)."""
    return {"none": 0, "bitmask": n, "relative": (m + p) * param, "rice": p + m * (1 + param)}[kind]


def stream_bits(entry: dict[str, Any]) -> int:
    """Bits of the stream that ``entry`` describes: 32·s + m·b (b_w or b_nz) + index bits.

    Equal to ``layer_storage(W, constraint).total_bits`` of the weight it was written for.

    Raises:
        CheckpointError: A malformed entry.
    """
    try:
        shape, q, kind, param, m, p = _parse(entry)
    except CheckpointError:
        raise
    except (DualpruneError, ValueError, KeyError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(f"malformed packed entry ({first})") from None
    b = code_bits(q) if kind == "none" else nonzero_code_bits(q)
    n = torch.Size(shape).numel()
    return SCALE_BITS * scale_count(shape, q) + m * b + _index_bits(kind, n, m, param, p)


def stream_bytes(entry: dict[str, Any]) -> int:
    """Bytes of the stream that ``entry`` describes: ⌈:func:`stream_bits` / 8⌉.

    Raises:
        CheckpointError: A malformed entry.
    """
    return -(-stream_bits(entry) // 8)


def _positions(reader: BitReader, kind: str, n: int, m: int, param: int, p: int) -> Tensor:
    """Read the index; the flat positions of the m stored values."""
    if kind == "none":
        return torch.arange(n)
    if kind == "bitmask":
        positions = _read(reader, n, 1).nonzero().reshape(-1)
        if positions.numel() != m:
            raise CheckpointError(f"bitmask marks {positions.numel()} entries for {m} values")
        return positions
    if kind == "relative":
        positions = relative_positions(_read(reader, m + p, param), param)
    else:  # rice
        unary = _read(reader, m + p, 1)
        positions = rice_positions(unary, _read(reader, m, param), param)
    if positions.numel() != m or (m and int(positions[-1]) >= n):
        raise CheckpointError(f"{kind} indices give {positions.numel()} of {m} entries in {n}")
    return positions


def _decode(data: Tensor, entry: dict[str, Any]) -> Tensor:
    shape, q, kind, param, m, p = _parse(entry)
    dtype = _DTYPES[entry.get("dtype", "float32")]
    n = int(torch.Size(shape).numel())
    b = code_bits(q) if kind == "none" else nonzero_code_bits(q)
    s = scale_count(shape, q)
    reader = BitReader(data)
    alpha = float_from_codes(reader.read(s, SCALE_BITS)) if s else torch.ones(1)
    codes = _read(reader, m, b)
    positions = _positions(reader, kind, n, m, param, p)
    if -(-reader.pos // 8) != data.numel():
        raise CheckpointError(f"{data.numel()} bytes stored for {reader.pos} bits")
    out = torch.zeros(n, dtype=dtype)
    if q is None:
        out[positions] = float_from_codes(codes).to(dtype)
        return out.view(shape)
    levels = q.level_values()
    if kind != "none":
        levels = levels[levels != 0]
    if codes.numel() and int(codes.max()) >= levels.numel():
        raise CheckpointError(f"a level index exceeds the {levels.numel()} levels of {q!r}")
    if q.scale == "channel":
        rows = shape[0]
        if alpha.numel() != rows:
            raise CheckpointError(f"{alpha.numel()} scales stored for {rows} output channels")
        alpha = alpha[positions // max(1, n // rows)]
    out[positions] = _decode_values(codes, alpha, levels, dtype)
    return out.view(shape)
