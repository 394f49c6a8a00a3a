"""The backward of row-wise outer products by a native kernel (xDeepFM's CIN).

For ``z[n, i * H + h] = base[n, i] * hidden[n, h]`` and its gradient ``g [N, m * H]``:
``grad_base = sum_h g * hidden`` ``[N, m]`` and ``grad_hidden = sum_i g * base`` ``[N, H]`` in one
pass over ``g`` (``native_outer.cpp``). Why: ``g`` comes from oneDNN's matmul and is not in the
cache when the backward reads it; torch's two batched products (``bmm``) read it twice with a
strided pattern, ~2.3 ms a step for the card's second CIN layer at batch 128, the kernel ~0.6 ms.

CPU float32; ``base`` and ``g`` contiguous, ``hidden``'s rows may be strided. Single-threaded and
deterministic; the sums' order differs from ``bmm``'s (rounding ~1e-7 relative).

Plain reference: the autograd of ``(base[:, :, None] * hidden[:, None, :]).flatten(1)``
(``tests/test_fast_native_outer.py``).
"""

from __future__ import annotations

import ctypes

import torch

from ctrbench import native

STEM = "native_outer"  # the kernel's name in ctrbench.native.SOURCES
_POINTER = ctypes.c_void_p
_SIGNATURES = {"ctrbench_outer_backward": [_POINTER] * 3 + [ctypes.c_int64] * 2 + [
    ctypes.c_int] * 2 + [_POINTER] * 2}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def usable(grad: torch.Tensor, base: torch.Tensor, hidden: torch.Tensor) -> bool:
    """Whether :func:`backward` can take these: float32 CPU tensors, ``base [N, m]`` and ``grad
    [N, m * H]`` contiguous, ``hidden [N, H]`` with unit column stride, and a built library."""
    return (base.dim() == 2 and hidden.dim() == 2 and grad.dim() == 2
            and base.shape[0] == hidden.shape[0] == grad.shape[0]
            and grad.shape[1] == base.shape[1] * hidden.shape[1] and hidden.shape[1] >= 1
            and all(t.device.type == "cpu" and t.dtype == torch.float32
                    for t in (grad, base, hidden))
            and base.is_contiguous() and grad.is_contiguous()
            and hidden.stride(1) == 1 and hidden.stride(0) >= hidden.shape[1]
            and library() is not None)


def backward(grad: torch.Tensor, base: torch.Tensor,
             hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_base [N, m], grad_hidden [N, H])`` of the outer products' gradient ``grad
    [N, m * H]``. No autograd. Check :func:`usable` first."""
    rows, m = base.shape
    width = hidden.shape[1]
    grad_base, grad_hidden = base.new_empty(rows, m), base.new_empty(rows, width)
    native.check(library().ctrbench_outer_backward(
        grad.data_ptr(), base.data_ptr(), hidden.data_ptr(), max(hidden.stride(0), width), rows,
        m, width, grad_base.data_ptr(), grad_hidden.data_ptr()), "outer-product backward")
    return grad_base, grad_hidden
