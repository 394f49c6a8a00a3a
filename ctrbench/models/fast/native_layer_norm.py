"""LayerNorm over the last dimension by a native kernel (``native_layer_norm.cpp``, built on
first use by :mod:`ctrbench.native`), forward and backward.

Why: torch's CPU LayerNorm over 32-wide rows (MIAN's transformer) took 60 us forward and 32
us backward at ``[2088, 32]``, 455 and 237 us at ``[16700, 32]`` (one thread here, best of
several runs); the kernel takes 17 / 16 and 122 / 126 us (23 / 22 and 132 / 138 with this
module's Python and ctypes). No autograd function of its own (one costs ~30 us a call here):
:mod:`~ctrbench.models.fast.transformer_block` calls :func:`forward` and :func:`backward` from
inside its node.

Plain reference: ``torch.nn.functional.layer_norm`` over the last dimension; the kernel must
equal it in float64 to ~1e-5 (values, ``mean``/``rstd``, the gradients of the input, weight and
bias; ``tests/test_fast_native_layer_norm.py``). Its variance is the corrected two-pass one and
the backward recentres xhat, so rows far from 0 (values ~1e4, noise ~1) stay at ~1e-7 where
torch's float32 path is ~1e-3 off; single-threaded and deterministic.

Float32 CPU tensors with a weight and a bias, outside CPU autocast (:func:`usable`); elsewhere
the caller runs torch's.
"""

from __future__ import annotations

import ctypes

import torch

from ctrbench import native

STEM = "native_layer_norm"  # the kernel's name in ctrbench.native.SOURCES
_POINTER, _INT, _INT64, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "ctrbench_layer_norm_forward": [_POINTER, _POINTER, _POINTER, _INT64, _INT, _FLOAT,
                                    _POINTER, _POINTER, _POINTER],
    "ctrbench_layer_norm_backward": [_POINTER] * 5 + [_INT64, _INT] + [_POINTER] * 3,
}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def usable(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """Whether the kernel can take ``x [..., W]`` with ``weight [W]``: float32 CPU tensors (an
    elementwise affine LayerNorm: ``weight`` not None), outside CPU autocast, and a built
    library. (:func:`layer_norm` also wants a bias.)"""
    if weight is None or x.dim() == 0 or x.shape[-1] < 1:
        return False
    if weight.shape != (x.shape[-1],):
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (x, weight)):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return library() is not None


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y [..., W], mean [..., 1], rstd [..., 1])`` of ``x [..., W]`` by the kernel (the
    shapes torch's ``native_layer_norm`` gives on the CPU); no autograd."""
    x = x.contiguous()
    weight, bias = weight.to(torch.float32).contiguous(), bias.to(torch.float32).contiguous()
    width = x.shape[-1]
    y = torch.empty_like(x)
    mean = x.new_empty((*x.shape[:-1], 1))
    rstd = torch.empty_like(mean)
    native.check(library().ctrbench_layer_norm_forward(
        x.data_ptr(), weight.data_ptr(), bias.data_ptr(), x.numel() // width, width, eps,
        y.data_ptr(), mean.data_ptr(), rstd.data_ptr()), "layer_norm forward")
    return y, mean, rstd


def backward(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
             weight: torch.Tensor, *, affine_grads: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x [..., W], grad_weight [W], grad_bias [W])`` by the kernel, from ``grad`` (of
    ``y``) and the forward's ``x``, ``mean`` and ``rstd``; ``affine_grads=False``: the last
    two None (not computed). No autograd."""
    x = x.contiguous()
    grad = grad.to(torch.float32).contiguous()
    mean, rstd = mean.to(torch.float32).contiguous(), rstd.to(torch.float32).contiguous()
    weight = weight.to(torch.float32).contiguous()
    width = x.shape[-1]
    grad_x = torch.empty_like(x)
    grad_weight = weight.new_empty(width) if affine_grads else None
    grad_bias = weight.new_empty(width) if affine_grads else None
    native.check(library().ctrbench_layer_norm_backward(
        grad.data_ptr(), x.data_ptr(), mean.data_ptr(), rstd.data_ptr(), weight.data_ptr(),
        x.numel() // width, width, grad_x.data_ptr(),
        None if grad_weight is None else grad_weight.data_ptr(),
        None if grad_bias is None else grad_bias.data_ptr()), "layer_norm backward")
    return grad_x, grad_weight, grad_bias
