"""Sparse execution of pruned Linear and Conv2d layers on CPU (compressed-row formats).

An irregularly pruned weight W (docs/algorithms.md §4) saves MACs only if the
zeros are skipped. These layers store W as a compressed sparse matrix and run
``torch.sparse.mm``, which touches the nonzeros only:

* **CSR** (compressed sparse rows): one column index per nonzero plus one row
  pointer per row — any zero pattern;
* **BSR** (block CSR): the same over b×b blocks, one index per block — used only
  when the zero pattern is *exactly* a union of b×b blocks (every block is all
  zero or all nonzero; see :func:`exact_block_size`), as block pruning leaves it.
  Only square blocks: the CPU kernel (MKL) supports no others.

Layouts of the computation (shapes in comments):

* ``SparseLinear``: y = (W_s · xᵀ)ᵀ + b — the sparse matrix is the left operand,
  the only sparse × dense product the CPU kernels run fast;
* ``SparseConv2d``: im2col without ``unfold``: one strided view of the (padded)
  input gathers the patches straight into a (C·kh·kw, B·Ho·Wo) matrix in a single
  copy, then y = W_s · cols with W_s = W.reshape(O, C·kh·kw). On LeNet-5's two
  convs at 95% sparsity (batch 1 and 64, one thread) the whole layer ran 1.6–3.4×
  faster this way than with ``F.unfold`` and the transpose W_s · cols then needs.

Both are inference-only (no gradients reach the weight) and raise in training
mode. Whether sparse is faster than dense depends on the layer, the batch size
and the machine — :mod:`dualprune.speed.sparsify` measures it and swaps only the
layers that gain.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualprune.errors import ConfigError

__all__ = [
    "LAYOUTS",
    "SparseConv2d",
    "SparseLinear",
    "dense_layer",
    "exact_block_size",
    "sparse_layer",
    "supported_layer",
    "unsupported_reason",
]

LAYOUTS = ("csr", "bsr")
_TORCH_LAYOUT = {"csr": torch.sparse_csr, "bsr": torch.sparse_bsr}
BLOCK_SIZES = (64, 32, 16, 8, 4, 2)


def exact_block_size(matrix: Tensor, sizes: Sequence[int] = BLOCK_SIZES) -> int | None:
    """The largest b in ``sizes`` such that each b×b block of ``matrix`` is all zero or all nonzero.

    b must divide both dimensions, and at least one block must be zero (a
    matrix without zero blocks is dense). None when no size qualifies.
    """
    if matrix.dim() != 2:
        raise ConfigError(f"exact_block_size needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    rows, cols = matrix.shape
    nz = matrix != 0
    for b in sorted(sizes, reverse=True):
        if b < 2 or rows % b or cols % b:
            continue
        count = nz.view(rows // b, b, cols // b, b).sum((1, 3))  # nonzeros per block
        if bool(((count == 0) | (count == b * b)).all()) and bool((count == 0).any()):
            return b
    return None


def _plain(t: Tensor | None) -> Tensor | None:
    """A detached copy that is a normal tensor even when made under ``inference_mode``.

    (Inference tensors cannot be changed in place outside it: ``load_state_dict``
    into the layer would fail.)
    """
    if t is None:
        return None
    with torch.inference_mode(False):
        return t.detach().clone()


def _compress(matrix: Tensor, block: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """(row pointers, column indices, values) of ``matrix`` in CSR (``block`` None) or
    b×b BSR (new tensors)."""
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta": known
        if block is None:
            s = matrix.detach().to_sparse_csr()
        else:
            s = matrix.detach().contiguous().to_sparse_bsr((block, block))
    return s.crow_indices(), s.col_indices(), s.values()


class _SparseMatrix(nn.Module):
    """A weight held as a CSR/BSR matrix of shape (rows, cols): three dense buffers.

    The buffers (``crow_indices``, ``col_indices``, ``values``) make the module
    copyable, savable and movable like any other; the sparse tensor the kernel
    needs is built from them on first use and rebuilt when a buffer is replaced.
    """

    crow_indices: Tensor
    col_indices: Tensor
    values: Tensor

    def __init__(self, matrix: Tensor, layout: str, block: int | None) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ConfigError(f"layout '{layout}' is unknown; use one of {', '.join(LAYOUTS)}")
        if layout == "bsr":
            if block is None:
                block = exact_block_size(matrix)
            if block is None or exact_block_size(matrix, (block,)) != block:
                raise ConfigError(
                    f"layout 'bsr' needs a weight whose zeros form whole square blocks "
                    f"(block={block}); its {tuple(matrix.shape)} matrix has none — use 'csr'"
                )
        self.layout = layout
        self.block = block if layout == "bsr" else None
        self.matrix_shape = (int(matrix.shape[0]), int(matrix.shape[1]))
        crow, col, values = _compress(matrix, self.block)
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        self.register_buffer("values", values)
        self._cache: tuple[tuple[Tensor, ...], Tensor] | None = None

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_cache"] = None  # sparse tensors cannot be deep-copied; rebuilt on use
        return state

    def matrix(self) -> Tensor:
        """The weight as a ``torch.sparse_csr``/``sparse_bsr`` tensor (rows, cols).

        It shares memory with the buffers (in-place changes show); it is rebuilt
        when a buffer is replaced (``.to()``, assignment).
        """
        key = (self.crow_indices, self.col_indices, self.values)
        c = self._cache
        if c is not None and all(k is m for k, m in zip(c[0], key, strict=True)):
            return c[1]
        s = torch.sparse_compressed_tensor(
            *key,
            self.matrix_shape,
            layout=_TORCH_LAYOUT[self.layout],
            check_invariants=True,  # once per (re)build: buffers may come from a file
        )
        self._cache = (key, s)
        return s

    @property
    def nnz(self) -> int:
        """Stored values (for BSR: whole blocks, so nonzeros)."""
        return self.values.numel()

    @property
    def sparsity(self) -> float:
        """Fraction of the matrix's entries that are not stored."""
        return 1.0 - self.nnz / math.prod(self.matrix_shape)

    def dense_matrix(self) -> Tensor:
        """The weight as a dense (rows, cols) tensor."""
        return self.matrix().to_dense()

    def _check_mode(self) -> None:
        if self.training:
            raise ConfigError(
                f"{type(self).__name__} is inference-only (its weight gets no gradients); "
                "call .eval() first, or train the dense layer (dense_layer(...))"
            )

    def extra_repr(self) -> str:
        block = f", block={self.block}" if self.block else ""
        return f"layout={self.layout}{block}, sparsity={self.sparsity:.3f}"


def _product(w: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
    """W_s · x (+ b as a column), (rows, N): the sparse matrix is the left operand."""
    if bias is None:
        return torch.sparse.mm(w, x)
    return torch.addmm(bias.view(-1, 1), w, x)


class SparseLinear(_SparseMatrix):
    """y = x Wᵀ + b with W (out, in) stored sparse (CSR or exact-block BSR).

    Built with :meth:`from_dense`; outputs equal ``nn.Linear``'s to float rounding.
    """

    bias: Tensor | None

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        layout: str = "csr",
        block: int | None = None,
    ) -> None:
        if weight.dim() != 2:
            raise ConfigError(f"SparseLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        super().__init__(weight, layout, block)
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        self.register_buffer("bias", _plain(bias))

    @classmethod
    def from_dense(
        cls, layer: nn.Linear, layout: str = "csr", block: int | None = None
    ) -> SparseLinear:
        """The sparse version of ``layer`` (its weight and bias are copied)."""
        return cls(layer.weight, layer.bias, layout, block)

    def forward(self, x: Tensor) -> Tensor:
        """(*, in) → (*, out)."""
        self._check_mode()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        z = _product(self.matrix(), x2.t(), self.bias)  # (out, N)
        return z.t().contiguous().view(*lead, self.out_features)  # no copy for N = 1

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the same weight and bias."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(self.dense_matrix())
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer.to(self.values.device)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SparseConv2d(_SparseMatrix):
    """Conv2d (groups = 1) as y = W_s · im2col(x) + b, W_s = W.reshape(O, C·kh·kw) sparse.

    Stride, padding (numbers, ``"same"``, ``"valid"``; any ``padding_mode``),
    dilation and bias follow ``nn.Conv2d``. Built with :meth:`from_dense`.
    """

    bias: Tensor | None

    def __init__(self, conv: nn.Conv2d, layout: str = "csr", block: int | None = None) -> None:
        reason = unsupported_reason(conv)
        if reason is not None:
            raise ConfigError(reason)
        w = conv.weight.detach()
        super().__init__(w.reshape(w.shape[0], -1), layout, block)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = _pair(conv.kernel_size)
        self.stride = _pair(conv.stride)
        self.dilation = _pair(conv.dilation)
        self.padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        self.padding_mode = conv.padding_mode
        self.register_buffer("bias", _plain(conv.bias))

    @classmethod
    def from_dense(
        cls, conv: nn.Conv2d, layout: str = "csr", block: int | None = None
    ) -> SparseConv2d:
        """The sparse version of ``conv`` (its weight and bias are copied)."""
        return cls(conv, layout, block)

    def _pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) as ``F.pad`` takes them."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if isinstance(self.padding, str):  # "same" (the one other string nn.Conv2d takes):
            # total d·(k−1), the extra one on the right/bottom
            (kh, kw), (dh, dw) = self.kernel_size, self.dilation
            th, tw = dh * (kh - 1), dw * (kw - 1)
            return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) or (C, H, W) → (B, O, Ho, Wo) or (O, Ho, Wo)."""
        self._check_mode()
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        pads = self._pads()
        if any(pads):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pads, mode=mode)
        b, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        s_b, s_c, s_h, s_w = x.stride()
        patches = x.as_strided(  # (C, kh, kw, B, Ho, Wo): a view, no copy yet
            (c, kh, kw, b, ho, wo),
            (s_c, dh * s_h, dw * s_w, s_b, sh * s_h, sw * s_w),
        )
        cols = patches.reshape(c * kh * kw, b * ho * wo)  # the one im2col copy
        z = _product(self.matrix(), cols, self.bias)  # (O, B·Ho·Wo)
        z = z.view(self.out_channels, b, ho, wo).transpose(0, 1)  # (B, O, Ho, Wo)
        return z.contiguous()  # no copy for B = 1

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same weight, bias and hyperparameters."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
        )
        with torch.no_grad():
            conv.weight.copy_(self.dense_matrix().view_as(conv.weight))
            if self.bias is not None and conv.bias is not None:  # both or neither
                conv.bias.copy_(self.bias)
        return conv.to(self.values.device)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` gets no sparse version (None if it can have one).

    Only exact ``nn.Linear`` and ``nn.Conv2d`` with groups = 1 on CPU in float32
    or float64: a subclass may run a different forward; a grouped or depthwise
    conv would need one sparse product per group, each over a handful of
    inputs, which cannot amortise the index decoding; other conv types have no
    im2col route here.
    """
    kind = type(module).__name__
    if type(module) not in (nn.Linear, nn.Conv2d):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            return f"{kind} subclasses {type(module).__mro__[1].__name__}; its forward may differ"
        return f"{kind} has no sparse version (only Linear and Conv2d)"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return (
            f"Conv2d with groups={module.groups} stays dense: one sparse product per group over "
            f"{module.in_channels // module.groups} input channel(s) cannot pay for its indices"
        )
    w = module.weight
    if w.device.type != "cpu":
        return f"weight on {w.device.type}: sparse execution here is CPU-only"
    if w.dtype not in (torch.float32, torch.float64):
        return f"weight dtype {w.dtype} unsupported (float32 or float64)"
    return None


def supported_layer(module: nn.Module) -> nn.Linear | nn.Conv2d:
    """``module`` itself, as the Linear or Conv2d that has a sparse version.

    Raises:
        ConfigError: it has none (the message is :func:`unsupported_reason`'s).
    """
    reason = unsupported_reason(module)
    if reason is not None:
        raise ConfigError(reason)
    assert isinstance(module, (nn.Linear, nn.Conv2d))  # unsupported_reason admits no other
    return module


def sparse_layer(
    module: nn.Module, layout: str = "csr", block: int | None = None
) -> SparseLinear | SparseConv2d:
    """The sparse equivalent of a Linear or Conv2d (see :func:`unsupported_reason`).

    Raises:
        ConfigError: the module has no sparse version, or ``layout="bsr"`` on a
            weight whose zeros are not whole square blocks.
    """
    layer = supported_layer(module)
    if isinstance(layer, nn.Linear):
        return SparseLinear.from_dense(layer, layout, block)
    return SparseConv2d.from_dense(layer, layout, block)


def dense_layer(module: SparseLinear | SparseConv2d) -> nn.Linear | nn.Conv2d:
    """Back to the dense ``nn.Linear``/``nn.Conv2d``."""
    return module.to_dense()
