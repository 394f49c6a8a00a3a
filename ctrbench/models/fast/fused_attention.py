"""MIAN's multi-head self-attention over the valid steps as one native kernel per direction
(``fused_attention.cpp``, built on first use by :mod:`ctrbench.native`).

For every history row and head the kernel computes ``softmax(Q K^T / sqrt(d)) V`` over the row's
own valid steps only, and the backward recomputes the probabilities from two saved numbers per
query (the largest score and the inverse of the softmax's sum), so no ``[heads, T, T]`` tensor
is written to memory and no step is padded. Why: the torch path
(:mod:`~ctrbench.models.fast.packed_attention`) runs MIAN's 8 heads of width 4 as batched
products of ``[T, 4] x [4, T]`` matrices and a softmax between them, each a pass over
``[R h, T, T]`` tensors; at batch 1024 those passes took ~31 ms of a ~96 ms training step
here (``docs/performance.md`` §2, eighth round).

CPU, float32, forward and backward single-threaded and deterministic (the same bits at any
thread count). Other dtypes (float64, bf16 autocast) and devices take the torch paths.

Plain reference: :meth:`ctrbench.models.sequence.MaskedSelfAttention.mix` over the padded batch,
at the valid steps (``tests/test_fast_native_attention.py``: values and gradients, edge lengths).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ctrbench import native

STEM = "fused_attention"  # the kernel's name in ctrbench.native.SOURCES
_POINTER, _INT, _INT64, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "ctrbench_attention_forward": [_POINTER, _POINTER, _INT64, _INT, _INT, _FLOAT, _POINTER,
                                   _POINTER, _INT],
    "ctrbench_attention_backward": [_POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _INT64,
                                    _INT, _INT, _FLOAT, _POINTER, _INT],
    "ctrbench_attention_max_head_dim": [],
}


def _library() -> ctypes.CDLL | None:
    return native.load_typed(STEM, _SIGNATURES)


def usable(qkv: torch.Tensor, head_dim: int) -> bool:
    """Whether :func:`fused_attention` can take ``qkv``: a float32 CPU tensor outside autocast,
    a built library, and a head width the kernel supports."""
    if qkv.device.type != "cpu" or qkv.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    library = _library()
    return library is not None and head_dim <= library.ctrbench_attention_max_head_dim()


@dataclass(frozen=True)
class RowPacking:
    """The valid steps of a ``[B, T]`` mask packed by row: packed row ``n`` is step
    ``step_of[n]`` of batch row ``row_of[n]``, rows in batch order, steps ascending; row ``b``'s
    steps are packed rows ``offsets[b] .. offsets[b + 1] - 1`` (the layout
    :func:`fused_attention` takes). All index tensors int64."""

    places: torch.Tensor  # (N,): flat index b * T + t of each valid step in [B * T]
    offsets: torch.Tensor  # (B + 1,)
    row_of: torch.Tensor  # (N,)
    step_of: torch.Tensor  # (N,)
    lengths: torch.Tensor  # (B,): valid steps per row
    mask: torch.Tensor  # (B, T)
    rows: int  # B
    steps: int  # T

    @staticmethod
    def of(mask: torch.Tensor) -> RowPacking:
        """The packing of the valid steps of ``mask [B, T]`` (bool)."""
        rows, steps = mask.shape
        places = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
        lengths = mask.sum(dim=1)  # (B,)
        offsets = torch.zeros(rows + 1, dtype=torch.int64, device=mask.device)
        torch.cumsum(lengths, dim=0, out=offsets[1:])  # (B + 1,)
        return RowPacking(places, offsets, places // max(steps, 1), places % max(steps, 1),
                          lengths, mask, rows, steps)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...]`` -> ``[N, ...]``."""
        return x.reshape(self.rows * self.steps, *x.shape[2:]).index_select(0, self.places)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` -> ``[B, T, ...]``, zeros at the other steps."""
        out = packed.new_zeros(self.rows * self.steps, *packed.shape[1:])
        return out.index_copy_(0, self.places, packed).view(self.rows, self.steps,
                                                            *packed.shape[1:])

    def sum(self, packed: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` -> ``[B, ...]``: each row's sum over its valid steps (0 if none)."""
        return packed.new_zeros(self.rows, *packed.shape[1:]).index_add(0, self.row_of, packed)

    def mean(self, packed: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` -> ``[B, ...]``: each row's mean over its valid steps (0 if none)."""
        count = self.lengths.clamp_min(1).to(packed.dtype)  # (B,)
        return self.sum(packed) / count.view(-1, *([1] * (packed.dim() - 1)))


def attention_forward(qkv: torch.Tensor, offsets: torch.Tensor, heads: int,
                      head_lanes: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's forward (no autograd): contiguous ``qkv [N, 3D]``, ``offsets [B + 1]`` ->
    context ``[N, D]`` and the statistics ``[N, heads, 2]`` that :func:`attention_backward`
    takes (each query's largest score and the inverse of its softmax's sum). ``head_lanes=False``
    runs the per-head layout even where the head-lane one is built (for comparisons)."""
    rows, width = offsets.shape[0] - 1, qkv.shape[1] // 3
    head_dim = width // heads
    out = qkv.new_empty(qkv.shape[0], width)  # (N, D)
    stats = qkv.new_empty(qkv.shape[0], heads, 2)  # (N, h, 2)
    native.check(_library().ctrbench_attention_forward(
        qkv.data_ptr(), offsets.data_ptr(), rows, heads, head_dim, head_dim ** -0.5,
        out.data_ptr(), stats.data_ptr(), int(head_lanes)), "attention forward")
    return out, stats


def attention_backward(qkv: torch.Tensor, offsets: torch.Tensor, out: torch.Tensor,
                       stats: torch.Tensor, grad: torch.Tensor, heads: int,
                       head_lanes: bool = True) -> torch.Tensor:
    """The kernel's backward (no autograd): :func:`attention_forward`'s inputs and outputs
    (and its ``head_lanes``) and the context's gradient ``grad [N, D]`` -> ``grad_qkv [N, 3D]``."""
    grad = grad.contiguous()
    grad_qkv = torch.empty_like(qkv)  # (N, 3D): every valid step's slots are written
    head_dim = qkv.shape[1] // 3 // heads
    native.check(_library().ctrbench_attention_backward(
        qkv.data_ptr(), out.data_ptr(), stats.data_ptr(), grad.data_ptr(),
        offsets.data_ptr(), offsets.shape[0] - 1, heads, head_dim, head_dim ** -0.5,
        grad_qkv.data_ptr(), int(head_lanes)), "attention backward")
    return grad_qkv


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, offsets: torch.Tensor, heads: int) -> torch.Tensor:
        qkv = qkv.contiguous()
        out, stats = attention_forward(qkv, offsets, heads)
        ctx.heads = heads
        ctx.save_for_backward(qkv, offsets, out, stats)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        qkv, offsets, out, stats = ctx.saved_tensors
        return attention_backward(qkv, offsets, out, stats, grad, ctx.heads), None, None


def fused_attention(qkv: torch.Tensor, offsets: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention of each valid step over its own row's valid steps.

    ``qkv [N, 3D]`` (float32, CPU): the valid steps packed by row (:class:`RowPacking`), the
    last dim ``[q | k | v]``, each ``heads`` blocks of ``D / heads``; ``offsets [B + 1]``
    -> context ``[N, D]`` (before the output projection). Differentiable in ``qkv`` (once).
    Check :func:`usable` first."""
    return _FusedAttention.apply(qkv, offsets, heads)
