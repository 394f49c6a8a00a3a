"""DIEN's attention and auxiliary loss over the steps packed by step
(:class:`~ctrbench.models.fast.packed_scan.StepPacking`), each as one native kernel per direction
(``fused_dien.cpp``, built on first use by :mod:`ctrbench.native`).

- :func:`attention`: ``a [N]``, the softmax over each row's valid steps of ``h_t . W e_i``,
  straight into the packed order the AUGRU reads;
- :func:`auxiliary_loss`: the mean over the pairs ``(t, t + 1)`` of
  ``softplus(-<h_t, e_{t+1}>) + softplus(<h_t, e^-_{t+1}>)`` (BCE with logits, labels 1 and 0),
  summed in double.

Why: the torch paths are ~8 ops forward and ~10 backward each (an index select of the query,
unpacking to ``[B, T']`` for the masked softmax and packing back; the pair gathers, products
and two BCE), every one at the dispatch floor at batch 128. Forward + backward (one
``autograd.grad``), one thread, ``I = 32``, history lengths geometric with mean 16 capped at 30
(``N`` = 1,670 / 13,851 steps), best of 7, three runs on a 2-core dev VM:

=====  =======================  =======================
batch  attention: torch / ours  aux loss: torch / ours
=====  =======================  =======================
128    137-143 / 53-57 us       175-182 / 62-65 us
1024   600-634 / 205-217 us     1040-1150 / 223-234 us
=====  =======================  =======================

(ours: the attention with the ``[B, T']`` copy :meth:`DIEN.explain` reads; the kernels
themselves take ~11 + 14 us and ~15 + 18 us at 128, the rest is autograd and ctypes overhead.)
DIEN's whole training step: 4.3-5.4 -> 3.9-4.8 ms at 128, ~30.6 -> 28.6-29.9 ms at 1024.

CPU, float32, outside autocast (:func:`usable`), single-threaded and deterministic; elsewhere
DIEN runs its torch code (``DIEN.NATIVE = False`` does too).

Plain reference: DIEN's torch path (:meth:`~ctrbench.models.dien.DIEN._recurrences`,
:meth:`~ctrbench.models.dien.DIEN.auxiliary_loss`); ``tests/test_fast_fused_dien.py``: values and
every gradient against float64, edge packings, the whole DIEN step with and without the kernels.
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from ctrbench import native

STEM = "fused_dien"  # the kernel's name in ctrbench.native.SOURCES
_POINTER, _INT, _INT64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "ctrbench_dien_attention_forward": [_POINTER, _POINTER, _POINTER, _INT64, _INT64, _INT,
                                        _POINTER],
    "ctrbench_dien_attention_backward": [_POINTER, _POINTER, _POINTER, _POINTER, _INT64, _INT64,
                                         _INT, _POINTER, _POINTER, _POINTER],
    "ctrbench_dien_aux_forward": [_POINTER, _POINTER, _POINTER, _POINTER, _INT64, _INT64, _INT,
                                  _POINTER, _POINTER],
    "ctrbench_dien_aux_backward": [_POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _INT64,
                                   _INT64, _INT, _POINTER, _POINTER, _POINTER, _POINTER],
}


def library() -> ctypes.CDLL | None:
    """The built kernels, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether :func:`attention` / :func:`auxiliary_loss` can take ``tensors``: float32 CPU
    tensors outside CPU autocast, and a built library."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return library() is not None


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states: torch.Tensor, query: torch.Tensor,
                row_of: torch.Tensor) -> torch.Tensor:
        states, query, row_of = states.contiguous(), query.contiguous(), row_of.contiguous()
        steps, width = states.shape
        alpha = states.new_empty(steps)  # (N,)
        native.check(library().ctrbench_dien_attention_forward(
            states.data_ptr(), query.data_ptr(), row_of.data_ptr(), steps, query.shape[0],
            width, alpha.data_ptr()), "DIEN attention forward")
        ctx.save_for_backward(states, query, row_of, alpha)
        return alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple:
        states, query, row_of, alpha = ctx.saved_tensors
        grad = grad.contiguous()
        grad_states, grad_query = torch.empty_like(states), torch.empty_like(query)
        native.check(library().ctrbench_dien_attention_backward(
            grad.data_ptr(), states.data_ptr(), query.data_ptr(), row_of.data_ptr(),
            states.shape[0], query.shape[0], states.shape[1], alpha.data_ptr(),
            grad_states.data_ptr(), grad_query.data_ptr()), "DIEN attention backward")
        return grad_states, grad_query, None


class _AuxiliaryLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states: torch.Tensor, behaviours: torch.Tensor, negatives: torch.Tensor,
                previous: torch.Tensor, later: int) -> torch.Tensor:
        states, behaviours, negatives, previous = (
            t.contiguous() for t in (states, behaviours, negatives, previous))
        steps, width = states.shape
        loss = states.new_empty(())
        z = states.new_empty(2 * (steps - later))  # (2P,): the logits' derivatives
        native.check(library().ctrbench_dien_aux_forward(
            states.data_ptr(), behaviours.data_ptr(), negatives.data_ptr(), previous.data_ptr(),
            steps, later, width, loss.data_ptr(), z.data_ptr()), "DIEN auxiliary loss forward")
        ctx.later = later
        ctx.save_for_backward(states, behaviours, negatives, previous, z)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple:
        states, behaviours, negatives, previous, z = ctx.saved_tensors
        grad = grad.contiguous()
        grad_states = torch.empty_like(states)
        grad_behaviours, grad_negatives = torch.empty_like(behaviours), torch.empty_like(negatives)
        native.check(library().ctrbench_dien_aux_backward(
            grad.data_ptr(), states.data_ptr(), behaviours.data_ptr(), negatives.data_ptr(),
            previous.data_ptr(), states.shape[0], ctx.later, states.shape[1], z.data_ptr(),
            grad_states.data_ptr(), grad_behaviours.data_ptr(), grad_negatives.data_ptr()),
            "DIEN auxiliary loss backward")
        return grad_states, grad_behaviours, grad_negatives, None, None


def attention(states: torch.Tensor, query: torch.Tensor, row_of: torch.Tensor) -> torch.Tensor:
    """``a [N]``: the softmax over each row's packed steps of ``states [N, I] . query[row_of]``
    (``query [B, I]``, int64 ``row_of [N]``: :attr:`StepPacking.row_of`). Check :func:`usable`
    first."""
    if states.shape[1] != query.shape[1] or row_of.shape[0] != states.shape[0]:
        raise ValueError(f"attention: states {tuple(states.shape)}, query "
                         f"{tuple(query.shape)}, row_of {tuple(row_of.shape)}")
    return _Attention.apply(states, query, row_of)


def auxiliary_loss(states: torch.Tensor, behaviours: torch.Tensor, negatives: torch.Tensor,
                   previous: torch.Tensor, later: int) -> torch.Tensor:
    """DIEN's unweighted auxiliary loss, a float32 scalar: the pairs are the packed steps
    ``n = later .. N - 1`` (``later = sizes[0]``: every step after a history's first), each
    ``h = states[previous[n]]`` against ``behaviours[n]`` (label 1) and ``negatives[n]``
    (label 0); the mean over the ``P = N - later`` pairs (0 if none). ``states``,
    ``behaviours``, ``negatives`` are ``[N, I]``; ``previous [N]`` int64
    (:attr:`StepPacking.previous`). Check :func:`usable` first."""
    if not (states.shape == behaviours.shape == negatives.shape) or not (
            0 <= later <= states.shape[0] == previous.shape[0]):
        raise ValueError(f"auxiliary_loss: states {tuple(states.shape)}, behaviours "
                         f"{tuple(behaviours.shape)}, negatives {tuple(negatives.shape)}, "
                         f"previous {tuple(previous.shape)}, later {later}")
    return _AuxiliaryLoss.apply(states, behaviours, negatives, previous, int(later))
