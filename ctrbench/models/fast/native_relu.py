"""ReLU's backward in place with the bias gradient of the product before it, by a native kernel.

For ``h = relu(x W^T + b)`` and the gradient ``dh [N, H]``: ``dh`` masked where ``h <= 0`` (in
place; torch's ``threshold_backward`` at 0, which lets NaN through) and ``db = sum_rows`` of it,
in one pass (``native_relu.cpp``). Why: in MIAN's fused transformer block the FFN's
``threshold_backward`` writes a new ``[N, 4D]`` tensor and the bias gradient reads it once more;
at batch 128 (N ~ 1.9k, 4D = 128) the two took ~120 + ~60 us in the block's sequence.

CPU float32, contiguous, single-threaded and deterministic. The masked gradient has the same
bits as ``threshold_backward``'s; the column sum adds float blocks of 64 rows into doubles (so
its rounding differs from ``sum(0)``'s by ~1e-7 relative).

Plain reference: ``torch.ops.aten.threshold_backward(dh, h, 0)`` and its ``sum(0)``
(``tests/test_fast_native_relu.py``).
"""

from __future__ import annotations

import ctypes

import torch

from ctrbench import native

STEM = "native_relu"  # the kernel's name in ctrbench.native.SOURCES
_POINTER = ctypes.c_void_p
_SIGNATURES = {"ctrbench_relu_backward": [_POINTER, _POINTER, ctypes.c_int64, ctypes.c_int,
                                          _POINTER]}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def usable(grad: torch.Tensor, hidden: torch.Tensor) -> bool:
    """Whether :func:`backward_` can take ``grad`` and ``hidden``: contiguous float32 CPU
    ``[N, H]`` tensors of one shape (H >= 1), and a built library."""
    return (grad.dim() == 2 and grad.shape == hidden.shape and grad.shape[1] >= 1
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                    for t in (grad, hidden))
            and library() is not None)


def backward_(grad: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Masks ``grad [N, H]`` in place where ``hidden <= 0``; returns its column sums ``[H]``
    (the bias gradient). No autograd. Check :func:`usable` first."""
    rows, width = grad.shape
    grad_bias = grad.new_empty(width)
    native.check(library().ctrbench_relu_backward(grad.data_ptr(), hidden.data_ptr(), rows,
                                                  width, grad_bias.data_ptr()), "relu backward")
    return grad_bias
