"""MIAN's IBIM attention (eqs. 6-9) over the packed valid steps as one native kernel per
direction (``fused_ibim.cpp``, built on first use by :mod:`ctrbench.native`).

For each row the kernel scores every valid step with the ``(W_t, b_t)`` of its recency, takes
the tanh and the softmax over the row's steps, and pools ``[e_i sum_t a_t; sum_t a_t h_t]``;
the backward returns the gradients of ``e_i``, the states, ``W`` and ``b``. Why: the torch path
(:meth:`~ctrbench.models.mian.BehaviorInteraction.packed`) is ~25 small ops forward and more
backward (index selects of the per-step weights, unpacking to ``[B, T]`` for the masked softmax,
packing back, a segment sum), each at the dispatch floor at batch 128.

CPU, float32, outside autocast, single-threaded and deterministic. The "per_step" and "shared"
scores (shared: one ``W, b`` for every step); the ``bilinear`` and ``product`` extensions take
the torch path, as do other dtypes and devices.

Plain reference: :meth:`BehaviorInteraction.packed`'s torch path (``tests/test_fast_fused_ibim.py``:
values, weights and every gradient against float64, empty and one-step rows).
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from ctrbench import native

STEM = "fused_ibim"  # the kernel's name in ctrbench.native.SOURCES
_POINTER, _INT, _INT64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "ctrbench_ibim_forward": [_POINTER, _POINTER, _POINTER, _POINTER, _INT64, _INT, _POINTER,
                              _POINTER, _INT64, _POINTER, _POINTER, _POINTER],
    "ctrbench_ibim_backward": [_POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _INT64, _INT,
                               _POINTER, _INT64, _POINTER, _POINTER, _POINTER, _POINTER,
                               _POINTER, _POINTER],
}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def usable(item: torch.Tensor, states: torch.Tensor) -> bool:
    """Whether :func:`ibim` can take ``item [B, I]`` and ``states [N, I]``: float32 CPU tensors
    outside autocast, and a built library."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (item, states)):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return library() is not None


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _FusedIBIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, item: torch.Tensor, states: torch.Tensor, offsets: torch.Tensor,
                recency: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        item, states, weight, bias = (t.contiguous() for t in (item, states, weight, bias))
        rows, width = item.shape
        out = item.new_empty(rows, 2 * width)  # (B, 2I)
        alpha = states.new_empty(states.shape[0])  # (N,)
        score = torch.empty_like(alpha)  # (N,)
        native.check(library().ctrbench_ibim_forward(
            item.data_ptr(), states.data_ptr(), offsets.data_ptr(), _pointer(recency), rows,
            width, weight.data_ptr(), bias.data_ptr(), weight.shape[0], out.data_ptr(),
            alpha.data_ptr(), score.data_ptr()), "IBIM forward")
        ctx.has_recency = recency is not None
        ctx.save_for_backward(item, states, offsets, recency, weight, alpha, score)
        ctx.mark_non_differentiable(alpha)
        return out, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_alpha: torch.Tensor | None) -> tuple:
        item, states, offsets, recency, weight, alpha, score = ctx.saved_tensors
        grad = grad.contiguous()
        grad_item, grad_states = torch.empty_like(item), torch.empty_like(states)
        grad_weight = torch.empty_like(weight)
        grad_bias = weight.new_empty(weight.shape[0])
        native.check(library().ctrbench_ibim_backward(
            grad.data_ptr(), item.data_ptr(), states.data_ptr(), offsets.data_ptr(),
            _pointer(recency), item.shape[0], item.shape[1], weight.data_ptr(),
            weight.shape[0], alpha.data_ptr(), score.data_ptr(), grad_item.data_ptr(),
            grad_states.data_ptr(), grad_weight.data_ptr(), grad_bias.data_ptr()),
            "IBIM backward")
        return grad_item, grad_states, None, None, grad_weight, grad_bias


def ibim(item: torch.Tensor, states: torch.Tensor, offsets: torch.Tensor,
         recency: torch.Tensor | None, weight: torch.Tensor,
         bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IBIM over the valid steps ``states [N, I]`` packed by row with ``offsets [B + 1]``, the
    candidates ``item [B, I]``, each step's score vector ``weight[recency] [2I]`` and bias
    ``bias[recency]`` (``weight [L, 2I]``, ``bias [L]``, int64 ``recency [N]``; None: row 0
    for every step) -> ``R [B, 2I]``, the packed weights ``a [N]`` (not differentiable).
    Check :func:`usable` first."""
    if recency is not None:
        recency = recency.contiguous()
    return _FusedIBIM.apply(item, states, offsets, recency, weight, bias)
