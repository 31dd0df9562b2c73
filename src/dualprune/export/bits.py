"""Bit streams: unsigned integers of any width from 1 to 32 bits, packed back to back.

A stream is a flat uint8 tensor. Fields are written least significant bit first:
bit j of the stream is bit (j mod 8) of byte ⌊j/8⌋, and an integer of width w
starting at bit s occupies bits s … s + w − 1, its lowest bit first. A field may
start anywhere (no byte alignment), so m fields of width w take exactly m·w bits
and a stream of B bits takes ⌈B/8⌉ bytes, the last byte padded with zero bits;
this is how :mod:`dualprune.size.storage` counts a layer (docs/algorithms.md §4).

Fields of 8, 16 or 32 bits that start on a byte (fp32 values, scales) are copied
as little-endian bytes; all others are expanded to bits in chunks of about a
million, so packing a layer never needs more memory than a few times its size.
Whole tensors that are not packed (biases, BatchNorm statistics) are stored as
their little-endian bytes (:func:`tensor_bytes`, :func:`tensor_from_bytes`).
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

__all__ = [
    "BitReader",
    "BitWriter",
    "float_codes",
    "float_from_codes",
    "tensor_bytes",
    "tensor_from_bytes",
]

_CHUNK_BITS = 1 << 23  # bits expanded at a time
_BYTE_SHIFTS = torch.arange(8, dtype=torch.uint8)
_WHOLE = {8: torch.uint8, 16: torch.int16, 32: torch.int32}  # widths copied byte for byte
_LITTLE = sys.byteorder == "little"


def _shifts(width: int) -> Tensor:
    return torch.arange(width, dtype=torch.int64)


def _check_width(width: int) -> None:
    if not 1 <= width <= 32:
        raise ValueError(f"field width {width} is outside 1 … 32 bits")


class BitWriter:
    """Append fields of fixed width to a stream (module docstring for the bit order).

    Example:
        >>> w = BitWriter(); w.write(torch.tensor([5, 1]), 3); w.write(torch.tensor([1]), 1)
        >>> w.bits, w.getvalue().tolist()
        (7, [77])
    """

    def __init__(self) -> None:
        self._chunks: list[Tensor] = []  # full bytes written so far
        self._carry = torch.zeros(0, dtype=torch.uint8)  # < 8 pending bits, one per element
        self.bits = 0  # bits written

    def write(self, values: Tensor, width: int) -> None:
        """Append every entry of ``values`` (integers in 0 … 2^width − 1) as ``width`` bits."""
        _check_width(width)
        flat = values.reshape(-1).to(torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << width):
            raise ValueError(f"a value does not fit in {width} unsigned bits")
        if _LITTLE and width in _WHOLE and not self._carry.numel():  # aligned: copy the bytes
            if width > 8:
                flat = torch.where(flat >= 1 << (width - 1), flat - (1 << width), flat)
            self._chunks.append(flat.to(_WHOLE[width]).view(torch.uint8))
            self.bits += flat.numel() * width
            return
        step = max(1, _CHUNK_BITS // width)
        shifts = _shifts(width)
        for start in range(0, flat.numel(), step):
            part = flat[start : start + step]
            bits = ((part.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)  # (m·w,)
            self._push(bits)
        self.bits += flat.numel() * width

    def _push(self, bits: Tensor) -> None:
        bits = torch.cat([self._carry, bits])
        full = bits.numel() // 8 * 8
        if full:
            octets = bits[:full].view(-1, 8) << _BYTE_SHIFTS  # (bytes, 8)
            self._chunks.append(octets.sum(1, dtype=torch.uint8))
        self._carry = bits[full:].clone()

    def getvalue(self) -> Tensor:
        """The stream so far, ⌈bits/8⌉ bytes (uint8), the last byte padded with zero bits."""
        chunks = list(self._chunks)
        if self._carry.numel():
            last = (self._carry << _BYTE_SHIFTS[: self._carry.numel()]).sum(dtype=torch.uint8)
            chunks.append(last.reshape(1))
        if not chunks:
            return torch.zeros(0, dtype=torch.uint8)
        return torch.cat(chunks)


class BitReader:
    """Read fields back from a stream written by :class:`BitWriter`, front to back.

    Args:
        data: The stream (uint8, 1-D).

    Raises:
        ValueError: A read past the end of the stream.
    """

    def __init__(self, data: Tensor) -> None:
        self._data = data.reshape(-1).to(torch.uint8)
        self.pos = 0  # bits read

    @property
    def bits(self) -> int:
        """Bits in the stream (8 per byte, padding included)."""
        return self._data.numel() * 8

    def read(self, count: int, width: int) -> Tensor:
        """The next ``count`` fields of ``width`` bits, as int64 (shape (count,))."""
        _check_width(width)
        if count < 0 or self.pos + count * width > self.bits:
            raise ValueError(
                f"stream of {self.bits} bits has no {count} fields of {width} bits "
                f"at bit {self.pos}"
            )
        if _LITTLE and width in _WHOLE and self.pos % 8 == 0:  # aligned: view the bytes
            lo = self.pos // 8
            raw = self._data[lo : lo + count * width // 8].clone().view(_WHOLE[width])
            self.pos += count * width
            return raw.to(torch.int64) & ((1 << width) - 1)
        out = torch.empty(count, dtype=torch.int64)
        step = max(1, _CHUNK_BITS // width)
        shifts = _shifts(width)
        for start in range(0, count, step):
            m = min(step, count - start)
            first = self.pos + start * width  # bit where this chunk starts
            lo, hi = first // 8, -(-(first + m * width) // 8)
            octets = self._data[lo:hi]
            bits = ((octets.unsqueeze(1) >> _BYTE_SHIFTS) & 1).reshape(-1)  # (bytes·8,)
            offset = first - lo * 8
            fields = bits[offset : offset + m * width].view(m, width).to(torch.int64)
            out[start : start + m] = (fields << shifts).sum(1)
        self.pos += count * width
        return out


def float_codes(values: Tensor) -> Tensor:
    """The 32 bits of each fp32 value as an unsigned integer in 0 … 2^32 − 1 (int64)."""
    raw = values.detach().reshape(-1).to(torch.float32).contiguous().view(torch.int32)
    return raw.to(torch.int64) & 0xFFFFFFFF


def float_from_codes(codes: Tensor) -> Tensor:
    """The inverse of :func:`float_codes`: fp32 values from their 32-bit patterns."""
    signed = torch.where(codes >= 1 << 31, codes - (1 << 32), codes)
    return signed.to(torch.int32).view(torch.float32)


def tensor_bytes(t: Tensor) -> Tensor:
    """The entries of ``t`` row-major as little-endian bytes (uint8, numel · itemsize)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8)
    if not _LITTLE and flat.element_size() > 1:
        raw = raw.view(-1, flat.element_size()).flip(1).reshape(-1)
    return raw


def tensor_from_bytes(data: Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """The inverse of :func:`tensor_bytes`: a tensor of ``dtype`` and ``shape`` (a copy).

    Raises:
        ValueError: ``data`` does not hold numel · itemsize bytes.
    """
    size = torch.empty(0, dtype=dtype).element_size()
    n = torch.Size(shape).numel()
    raw = data.reshape(-1).to(torch.uint8)
    if raw.numel() != n * size:
        raise ValueError(f"{raw.numel()} bytes stored for {n} entries of {dtype}")
    if not _LITTLE and size > 1:
        raw = raw.view(-1, size).flip(1).reshape(-1)
    return raw.clone().view(dtype).reshape(shape)
