"""MIAN's field interaction (IUIM / ICIM) as one native kernel per direction
(``fused_fields.cpp``, built on first use by :mod:`ctrbench.native`).

For every row the kernel scores the ``F`` fields against the item, softmax-weights them and
returns ``R = [item * sum_j a_j ; sum_j a_j fields_j]`` and the weights ``a``; the backward
returns the gradients of the item, the fields, the score vectors and their biases. Why: the
torch path is ~15 small ops forward and ~20 backward on tensors of a few KB, each at the dispatch
floor. Forward + backward (``torch.autograd.grad`` of ``R``), I = 32, F = 5, D = 16, one
thread: 195 -> 54 us at batch 128, 747 -> 122 us at 1024 (kernels alone ~5 + 7 and ~27 + 43 us;
the rest is autograd and ctypes); forward alone 67 -> 16 and 275 -> 44 us.

CPU, float32, outside autocast, single-threaded and deterministic (the same bits at any thread
count); other dtypes and devices take the torch path. tanh and exp are the kernel's vector ones
(within ~1e-7 of libm's), so the float32 bits differ from the torch path's by rounding.

Plain reference: :meth:`ctrbench.models.mian.FieldInteraction.forward`'s torch path
(``tests/test_fast_fused_fields.py``: values, the field weights and every gradient against the
float64 reference, widths on both sides of the 16-lane vectors, one to eight fields, zero to 128
rows, saturated scores).
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from ctrbench import native

STEM = "fused_fields"  # the kernel's name in ctrbench.native.SOURCES
_POINTER, _INT, _INT64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    # item, fields, weight, bias, rows, F, I, D, out, alpha, scores
    "ctrbench_fields_forward": [_POINTER, _POINTER, _POINTER, _POINTER, _INT64, _INT, _INT,
                                _INT, _POINTER, _POINTER, _POINTER],
    # grad_out, item, fields, weight, alpha, scores, rows, F, I, D,
    # grad_item, grad_fields, grad_weight, grad_bias (None: not computed)
    "ctrbench_fields_backward": [_POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER,
                                 _INT64, _INT, _INT, _INT, _POINTER, _POINTER, _POINTER,
                                 _POINTER],
}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def usable(item: torch.Tensor, fields: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`field_interaction` can take ``item [B, I]`` and ``fields [B, F, D]`` with
    score vectors ``weight [F, I + D]`` (the bias shares its device and dtype): float32 CPU
    tensors outside autocast, consistent shapes, a built library."""
    for tensor in (item, fields, weight):
        if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
            return False
    if torch.is_autocast_enabled("cpu"):
        return False
    if item.dim() != 2 or fields.dim() != 3 or weight.dim() != 2:
        return False
    rows, count, width = fields.shape
    if item.shape[0] != rows or count < 1 or tuple(weight.shape) != (count, item.shape[1] + width):
        return False
    return library() is not None


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _FusedFields(torch.autograd.Function):
    @staticmethod
    def forward(ctx, item: torch.Tensor, fields: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        item, fields = item.contiguous(), fields.contiguous()
        weight, bias = weight.contiguous(), bias.contiguous()
        (rows, width), (count, dim) = item.shape, fields.shape[1:]
        out = item.new_empty(rows, width + dim)  # (B, I + D)
        alpha = item.new_empty(rows, count)  # (B, F)
        scores = item.new_empty(rows, count)  # (B, F): tanh scores
        native.check(library().ctrbench_fields_forward(
            item.data_ptr(), fields.data_ptr(), weight.data_ptr(), bias.data_ptr(), rows, count,
            width, dim, out.data_ptr(), alpha.data_ptr(), scores.data_ptr()), "field interaction")
        ctx.save_for_backward(item, fields, weight, alpha, scores)
        ctx.mark_non_differentiable(alpha)
        return out, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_alpha: torch.Tensor | None) -> tuple:
        item, fields, weight, alpha, scores = ctx.saved_tensors
        wants = ctx.needs_input_grad
        grad = grad.contiguous()
        (rows, width), (count, dim) = item.shape, fields.shape[1:]
        grads = [torch.empty_like(t) if w else None
                 for t, w in zip((item, fields, weight), wants)]
        grads.append(weight.new_empty(count) if wants[3] else None)
        native.check(library().ctrbench_fields_backward(
            grad.data_ptr(), item.data_ptr(), fields.data_ptr(), weight.data_ptr(),
            alpha.data_ptr(), scores.data_ptr(), rows, count, width, dim,
            *(_pointer(g) for g in grads)), "field interaction backward")
        return tuple(grads)


def field_interaction(item: torch.Tensor, fields: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IUIM / ICIM over ``item [B, I]`` and ``fields [B, F, D]`` with score vectors
    ``weight [F, I + D]`` and biases ``bias [F]`` -> ``R [B, I + D]``, field weights
    ``a [B, F]`` (not differentiable). Check :func:`usable` first."""
    return _FusedFields.apply(item, fields, weight, bias)
