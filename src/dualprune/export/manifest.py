"""The manifest of a packed file: every tensor's name, shape, dtype and code in a few bytes.

The payload of a packed file opens with the manifest, so that its fixed cost is
tens of bytes for LeNet-5 and a few hundred for ResNet-20 (docs/export.md).
Integers are unsigned LEB128 varints (7 bits a byte, the low group first, the
high bit set while more follow); a signed value v is zigzag coded first
(2v for v ≥ 0, −2v − 1 otherwise)::

    manifest  := G  group × G
    group     := shared  len  bytes[len]        module name: the first ``shared`` bytes
                                                of the previous group's name, then these
                 leaves:byte  [E  (len bytes[len]) × E]
                 record × (leaves present)
    record    := flags:byte  [rank  dim × rank]  [zigzag value]  [layer]
    layer     := [quantizer]  code:byte  [m  [p]]
    quantizer := q:byte  [bits]  [L  f64 × L | len bytes[len]]

Tensor keys are grouped by module (``layer1.0.bn1`` + ``weight``, ``bias``, …). Bit
i of ``leaves`` marks the standard leaf ``LEAVES[i]`` (i < 5, in that order); bit
7 says E other leaf names follow. ``flags``: bits 0-3 the dtype (``DTYPES``
index), bit 4 a packed weight (:mod:`~dualprune.export.layercode` stream), bit 5
an explicit shape (otherwise the shape is (d,) with d the first dimension of the
last record of rank ≥ 1: a bias or BatchNorm vector after its weight), bit 6 an
integer scalar held here as ``value`` (``num_batches_tracked``; it has no bytes
in the payload), bit 7 a quantized layer (the quantizer follows). ``code`` is the
index code (0 none, 1 bitmask, 2 relative, 3 rice) plus 4 × its parameter (b_idx
of relative indices, r of the Rice code, 0 otherwise); ``m``, the number of
stored values, is absent for ``none`` (m = n); ``p``, present for relative and
rice, is the number of escape fields p or of unary ones U. ``q``: bits
0-1 the scale (tensor, channel, none), bits 2-4 the levels (0 by bits, 1 binary,
2 ternary, 3 pow2, 4 a list of L float64 values, 5 another name), bit 5 ``bits``
follows. Offsets and lengths are not stored: each record's bytes follow from it
(:func:`~dualprune.export.layercode.stream_bytes`, numel · itemsize, or 0).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import torch

from dualprune.errors import CheckpointError, ConfigError

__all__ = ["DTYPES", "LEAVES", "Record", "decode_manifest", "encode_manifest"]

#: Leaf names a group marks with one bit each, in this order.
LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
#: dtype codes (flags bits 0-3).
DTYPES = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
_INTEGER = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})
_EXTRA = 0x80
_PACKED, _SHAPE, _VALUE, _QUANT = 0x10, 0x20, 0x40, 0x80
_CODES = ("none", "bitmask", "relative", "rice")  # storage.INDEX_KINDS
_PARAMETER = frozenset({"relative", "rice"})  # codes with a parameter and p
_SCALES = ("tensor", "channel", "none")
_LEVEL_NAMES = {"binary": 1, "ternary": 2, "pow2": 3}
_LIST, _NAMED, _BITS = 4, 5, 0x20


@dataclass(frozen=True)
class Record:
    """One state-dict entry as the manifest describes it.

    Attributes:
        key: The state-dict key (``"layer1.0.conv1.weight"``).
        shape: Its shape.
        dtype: Its dtype (one of :data:`DTYPES`).
        layer: For a packed weight, the entry of
            :func:`~dualprune.export.layercode.encode_layer` (``shape``, ``dtype``,
            ``q``, ``index``, ``b_idx``, ``m`` and, for relative and rice, ``p``);
            else ``None``.
        value: For an integer scalar held in the manifest, its value; else ``None``.
    """

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    layer: dict[str, Any] | None = None
    value: int | None = None

    @staticmethod
    def inline(dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
        """Whether a tensor of this dtype and shape is held in the manifest (integer scalar)."""
        return dtype in _INTEGER and shape == ()


class _Out:
    def __init__(self) -> None:
        self.buf = bytearray()

    def uint(self, v: int) -> None:
        if v < 0:
            raise ValueError(f"{v} is negative")
        while v >= 0x80:
            self.buf.append(v & 0x7F | 0x80)
            v >>= 7
        self.buf.append(v)

    def text(self, s: str | bytes) -> None:
        raw = s.encode() if isinstance(s, str) else s
        self.uint(len(raw))
        self.buf += raw


class _In:
    def __init__(self, buf: memoryview | bytes) -> None:
        self.buf, self.pos = buf, 0

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ValueError("the manifest ends early")
        self.pos += 1
        return int(self.buf[self.pos - 1])

    def uint(self) -> int:
        v = 0
        for shift in range(0, 70, 7):
            b = self.byte()
            v |= (b & 0x7F) << shift
            if b < 0x80:
                return v
        raise ValueError("a varint runs past 10 bytes")

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ValueError("the manifest ends early")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos])


def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    if (f"{module}.{leaf}" if module else leaf) != key:
        raise ConfigError(f"state-dict key '{key}' cannot be stored; keys are 'module.name'")
    return module, leaf


def _shared(a: bytes, b: bytes) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_manifest(records: list[Record]) -> tuple[bytes, list[Record]]:
    """The manifest of ``records`` (module docstring) and the records in its order.

    The payload must hold each record's bytes in the returned order (groups in
    order of first appearance; in a group the standard leaves first).

    Raises:
        ConfigError: A dtype outside :data:`DTYPES` or a key that is no ``module.name``.
    """
    groups: dict[str, dict[str, Record]] = {}
    for r in records:
        module, leaf = _split(r.key)
        groups.setdefault(module, {})[leaf] = r
        if r.dtype not in DTYPES:
            raise ConfigError(
                f"'{r.key}' has dtype {r.dtype}; the packed format holds "
                f"{', '.join(str(d).removeprefix('torch.') for d in DTYPES)}"
            )
    out, ordered, previous, dim = _Out(), [], b"", None
    out.uint(len(groups))
    for module, leaves in groups.items():
        name = module.encode()
        shared = _shared(previous, name)
        out.uint(shared)
        out.text(name[shared:])
        previous = name
        extra = [leaf for leaf in leaves if leaf not in LEAVES]
        mask = sum(1 << i for i, leaf in enumerate(LEAVES) if leaf in leaves)
        out.buf.append(mask | (_EXTRA if extra else 0))
        if extra:
            out.uint(len(extra))
            for leaf in extra:
                out.text(leaf)
        for leaf in [leaf for leaf in LEAVES if leaf in leaves] + extra:
            r = leaves[leaf]
            ordered.append(r)
            dim = _write_record(out, r, dim)
    return bytes(out.buf), ordered


def _write_record(out: _Out, r: Record, dim: int | None) -> int | None:
    """Write one record; returns the first dimension that the next default shape uses."""
    if r.value is not None and not Record.inline(r.dtype, r.shape):
        raise ConfigError(f"'{r.key}' ({r.dtype}, shape {r.shape}) cannot be held as a value")
    flags = DTYPES.index(r.dtype)
    default = len(r.shape) == 1 and r.shape[0] == dim
    if r.value is not None:
        flags |= _VALUE
    elif not default:
        flags |= _SHAPE
    q = r.layer.get("q") if r.layer is not None else None
    flags |= (_PACKED if r.layer is not None else 0) | (_QUANT if q is not None else 0)
    out.buf.append(flags)
    if flags & _SHAPE:
        out.uint(len(r.shape))
        for d in r.shape:
            out.uint(d)
    if r.value is not None:
        out.uint(2 * r.value if r.value >= 0 else -2 * r.value - 1)
    if r.layer is not None:
        if q is not None:
            _write_quantizer(out, r.key, q)
        kind = r.layer["index"]
        param = int(r.layer["b_idx"]) if kind in _PARAMETER else 0
        if kind not in _CODES or not 0 <= param < 64:
            raise ConfigError(f"'{r.key}': index code {kind!r} with parameter {param}")
        out.buf.append(_CODES.index(kind) | param << 2)
        if kind != "none":
            out.uint(int(r.layer["m"]))
        if kind in _PARAMETER:
            out.uint(int(r.layer["p"]))
    return r.shape[0] if r.shape else dim


def _write_quantizer(out: _Out, key: str, q: dict[str, Any]) -> None:
    unknown = sorted(set(q) - {"bits", "levels", "scale"})
    if unknown or q.get("scale", "tensor") not in _SCALES:
        raise ConfigError(f"'{key}': the packed format cannot store the quantizer {q!r}")
    levels, bits = q.get("levels"), q.get("bits")
    if levels is None:
        code = 0
    elif isinstance(levels, str):
        code = _LEVEL_NAMES.get(levels, _NAMED)
    else:
        code = _LIST
    out.buf.append(_SCALES.index(q.get("scale", "tensor")) | code << 2 | (_BITS if bits else 0))
    if bits:
        out.uint(int(bits))
    if code == _LIST and levels is not None:  # a list: levels is neither None nor a name
        out.uint(len(levels))
        out.buf += struct.pack(f"<{len(levels)}d", *(float(x) for x in levels))
    elif code == _NAMED and isinstance(levels, str):  # a name _LEVEL_NAMES lacks
        out.text(levels)


def decode_manifest(buf: memoryview | bytes) -> tuple[list[Record], int]:
    """The records of a manifest at the start of ``buf``, in payload order, and its length.

    Raises:
        CheckpointError: A manifest that is cut short or malformed.
    """
    try:
        return _decode(_In(buf))
    except (ValueError, IndexError, struct.error) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(f"its manifest is corrupt ({first})") from None


def _decode(src: _In) -> tuple[list[Record], int]:
    records: list[Record] = []
    previous, dim = b"", None
    for _ in range(src.uint()):
        shared = src.uint()
        if shared > len(previous):
            raise ValueError(f"a name shares {shared} bytes with '{previous.decode()}'")
        name = previous[:shared] + src.raw(src.uint())
        previous, module = name, name.decode()
        mask = src.byte()
        leaves = [leaf for i, leaf in enumerate(LEAVES) if mask >> i & 1]
        if mask & _EXTRA:
            leaves += [src.raw(src.uint()).decode() for _ in range(src.uint())]
        for leaf in leaves:
            r = _read_record(src, f"{module}.{leaf}" if module else leaf, dim)
            dim = r.shape[0] if r.shape else dim
            records.append(r)
    return records, src.pos


def _read_record(src: _In, key: str, dim: int | None) -> Record:
    flags = src.byte()
    if flags & 0x0F >= len(DTYPES):
        raise ValueError(f"'{key}' has dtype code {flags & 0x0F}")
    dtype = DTYPES[flags & 0x0F]
    value = None
    if flags & _SHAPE:
        shape = tuple(src.uint() for _ in range(src.uint()))
    elif flags & _VALUE:
        shape = ()
    elif dim is None:
        raise ValueError(f"'{key}' has no shape")
    else:
        shape = (dim,)
    if flags & _VALUE:
        z = src.uint()
        value = z // 2 if z % 2 == 0 else -(z + 1) // 2
    if not flags & _PACKED:
        return Record(key, shape, dtype, value=value)
    layer: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}
    if flags & _QUANT:
        layer["q"] = _read_quantizer(src)
    code = src.byte()
    kind = _CODES[code & 3]
    if kind not in _PARAMETER and code >> 2:
        raise ValueError(f"'{key}' has index code {code:#x}")
    n = torch.Size(shape).numel()
    layer.update(index=kind, b_idx={"none": 0, "bitmask": 1}.get(kind, code >> 2))
    layer["m"] = src.uint() if kind != "none" else n
    if kind in _PARAMETER:
        layer["p"] = src.uint()
    return Record(key, shape, dtype, layer=layer)


def _read_quantizer(src: _In) -> dict[str, Any]:
    q = src.byte()
    scale, code = q & 3, q >> 2 & 7
    if scale >= len(_SCALES) or code > _NAMED:
        raise ValueError(f"quantizer byte {q:#x} is unknown")
    out: dict[str, Any] = {}
    if q & _BITS:
        out["bits"] = src.uint()
    if code == _LIST:
        count = src.uint()
        out["levels"] = list(struct.unpack(f"<{count}d", src.raw(8 * count)))
    elif code == _NAMED:
        out["levels"] = src.raw(src.uint()).decode()
    elif code:
        out["levels"] = next(k for k, v in _LEVEL_NAMES.items() if v == code)
    out["scale"] = _SCALES[scale]
    return out
