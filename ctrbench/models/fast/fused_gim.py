"""MIAN's Global Interaction Module (GIM) as one native kernel per direction (``fused_gim.cpp``,
built on first use by :mod:`ctrbench.native`).

For every row the kernel projects each of the ``P`` parts to the common width ``G``, scores and
softmax-weights the projections and sums them, and the backward returns the gradients of the
parts, the ``P`` projections' weights and biases and the score vectors, with no op dispatched
per part. Why: the torch path runs ``P`` = 7 small ``addmm`` forward and 14 ``mm`` and 7 sums
backward, plus the stack, scores and softmax, each at the dispatch floor at batch 128: GIM's
forward + backward took ~680 us there (~7% of MIAN's training step) for ~6 MFLOP.

CPU, float32, outside autocast, single-threaded and deterministic (the same bits at any thread
count); other dtypes and devices, more than ``ctrbench_gim_max_parts`` parts or ``G`` above
``ctrbench_gim_max_width`` take the torch path.

Plain reference: :meth:`ctrbench.models.mian.GlobalInteraction.forward`'s torch path
(``tests/test_fast_native_gim.py``: values, the part weights and every gradient against the
float64 reference, widths and ``G`` on both sides of the 16-lane vectors, one part, rows not a
multiple of the kernel's row blocks).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from ctrbench import native

STEM = "fused_gim"  # the kernel's name in ctrbench.native.SOURCES
_POINTER, _INT, _INT64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "ctrbench_gim_forward": [_POINTER, _POINTER, _POINTER, _POINTER, _INT, _INT, _POINTER,
                             _POINTER, _INT64, _POINTER, _POINTER, _POINTER, _POINTER],
    "ctrbench_gim_backward": [_POINTER, _POINTER, _POINTER, _POINTER, _INT, _INT, _POINTER,
                              _POINTER, _POINTER, _POINTER, _INT64, _POINTER, _POINTER,
                              _POINTER, _POINTER, _POINTER],
    "ctrbench_gim_max_width": [],
    "ctrbench_gim_max_parts": [],
}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def usable(parts: Sequence[torch.Tensor], weight: torch.Tensor, width: int) -> bool:
    """Whether :func:`fused_gim` can take ``parts`` (``[B, w_p]`` each) with the module whose
    score vectors are ``weight`` (its parameters share its device and dtype): float32 CPU
    tensors outside autocast, a built library, at most its number of parts and width ``G``."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    rows = parts[0].shape[0] if parts else -1
    for part in parts:
        if part.dtype != torch.float32 or part.device.type != "cpu" or part.dim() != 2 \
                or part.shape[0] != rows:
            return False
    found = library()
    return (found is not None and 0 < len(parts) <= found.ctrbench_gim_max_parts()
            and 0 < width <= found.ctrbench_gim_max_width())


def _pointers(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


class _FusedGIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, score_w: torch.Tensor, score_b: torch.Tensor, count: int,
                *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # tensors: the count parts [B, w_p], then count weights [G, w_p], then count biases [G]
        tensors = tuple(t.contiguous() for t in tensors)
        parts, weights, biases = tensors[:count], tensors[count:2 * count], tensors[2 * count:]
        score_w, score_b = score_w.contiguous(), score_b.contiguous()
        rows, width = parts[0].shape[0], weights[0].shape[0]
        widths = (ctypes.c_int * count)(*(p.shape[1] for p in parts))
        out = parts[0].new_empty(rows, width)  # (B, G)
        alpha = parts[0].new_empty(rows, count)  # (B, P)
        projected = parts[0].new_empty(rows, count, width)  # (B, P, G)
        scores = parts[0].new_empty(rows, count)  # (B, P): tanh scores
        native.check(library().ctrbench_gim_forward(
            _pointers(parts), _pointers(weights), _pointers(biases), widths, count, width,
            score_w.data_ptr(), score_b.data_ptr(), rows, out.data_ptr(), alpha.data_ptr(),
            projected.data_ptr(), scores.data_ptr()), "GIM forward")
        ctx.count = count
        ctx.save_for_backward(score_w, projected, alpha, scores, *parts, *weights)
        ctx.mark_non_differentiable(alpha)
        return out, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_alpha: torch.Tensor | None) -> tuple:
        count = ctx.count
        score_w, projected, alpha, scores, *rest = ctx.saved_tensors
        parts, weights = rest[:count], rest[count:]
        grad = grad.contiguous()
        rows, width = grad.shape
        widths = (ctypes.c_int * count)(*(p.shape[1] for p in parts))
        grad_parts = [torch.empty_like(p) for p in parts]
        grad_weights = [torch.empty_like(w) for w in weights]
        grad_biases = [grad.new_empty(width) for _ in range(count)]
        grad_score_w = torch.empty_like(score_w)
        grad_score_b = grad.new_empty(count)
        native.check(library().ctrbench_gim_backward(
            grad.data_ptr(), _pointers(parts), _pointers(weights), widths, count, width,
            score_w.data_ptr(), projected.data_ptr(), alpha.data_ptr(), scores.data_ptr(), rows,
            _pointers(grad_parts), _pointers(grad_weights), _pointers(grad_biases),
            grad_score_w.data_ptr(), grad_score_b.data_ptr()), "GIM backward")
        return (grad_score_w, grad_score_b, None, *grad_parts, *grad_weights, *grad_biases)


def fused_gim(parts: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
              biases: Sequence[torch.Tensor], score_w: torch.Tensor,
              score_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GIM over ``parts`` (``[B, w_p]`` each) with projections ``weights`` (``[G, w_p]``) and
    ``biases`` (``[G]``), score vectors ``score_w [P, G]`` and biases ``score_b [P]`` ->
    ``R [B, G]``, part weights ``a [B, P]`` (not differentiable). Check :func:`usable` first."""
    return _FusedGIM.apply(score_w, score_b, len(parts), *parts, *weights, *biases)
