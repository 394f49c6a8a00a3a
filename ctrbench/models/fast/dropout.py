"""Dropout on the CPU: a native counter-based keep mask where its kernel is built, else a mask
drawn with ``rand``.

Plain reference: ``nn.Dropout``. :class:`UniformDropout` has its parameters and its train/eval
behaviour, and the same distribution (each element kept independently with probability
``1 - p`` and scaled by ``1 / (1 - p)``), but draws the mask from other random streams, so the
masks differ from ``nn.Dropout``'s under the same seed:

- float32 on the CPU where ``native_dropout.cpp`` is built (:mod:`ctrbench.native`): the mask
  is Philox4x32-10 (the counter-based generator of torch's CUDA dropout) of the element's index
  under a 64-bit key drawn from torch's global generator (so ``torch.manual_seed`` fixes it);
  the backward regenerates the mask from the key instead of storing it, and
  :meth:`UniformDropout.residual` adds the result to a residual in the same pass
  (``tests/test_fast_native_dropout.py``: the generator against published known answers, the
  mask against a Python Philox, values, gradients, keep rate);
- otherwise ``rand(x.shape) >= p`` (``tests/test_fast_paths.py`` checks the mask against that
  stream, the values, the gradient and the keep rate); other devices use ``F.dropout``.

Why: ``bernoulli_`` (``F.dropout``) costs about twice ``rand`` on the CPU (forward + backward at
``[128, 256]``: 210 vs 340 us), and ``rand`` itself ~0.8-1 ns per element. MIAN's block drops
out ``[~2100, 32]`` twice per step at batch 128: ~150 us each for the torch mask, ~21 us for
the native one (``docs/performance.md`` §2, ninth round).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ctrbench import native

STEM = "native_dropout"  # the kernel's name in ctrbench.native.SOURCES
_POINTER = ctypes.c_void_p
_SIGNATURES = {
    "ctrbench_dropout": [_POINTER, _POINTER, _POINTER, ctypes.c_int64, ctypes.c_uint64,
                         ctypes.c_uint32, ctypes.c_float],
    "ctrbench_philox_words": [_POINTER, _POINTER, _POINTER],
}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def native_usable(x: torch.Tensor) -> bool:
    """Whether the native kernel can take ``x``: float32 on the CPU, and a built library."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and library() is not None


def threshold_of(p: float) -> int:
    """The 32-bit word at or above which an element is kept: ``round(p * 2^32)``."""
    return min(round(p * 2.0 ** 32), 2 ** 32 - 1)


def apply_mask(x: torch.Tensor, base: torch.Tensor | None, seed: int, p: float) -> torch.Tensor:
    """``(base or 0) + x * keep / (1 - p)`` with the keep mask of ``seed``: contiguous float32
    CPU tensors of one shape -> a new tensor."""
    out = torch.empty_like(x)
    native.check(library().ctrbench_dropout(
        x.data_ptr(), None if base is None else base.data_ptr(), out.data_ptr(), x.numel(),
        seed, threshold_of(p), 1.0 / (1.0 - p)), "dropout")
    return out


def draw_seed() -> int:
    """A mask's 63-bit key from torch's global generator (``torch.manual_seed`` makes the masks
    repeatable)."""
    return int(torch.empty((), dtype=torch.int64).random_())


class _NativeDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, base: torch.Tensor | None, p: float) -> torch.Tensor:
        seed = draw_seed()
        ctx.seed, ctx.p = seed, p
        return apply_mask(x.contiguous(), None if base is None else base.contiguous(), seed, p)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                   None]:
        needs_x, needs_base, _ = ctx.needs_input_grad
        grad_x = apply_mask(grad.contiguous(), None, ctx.seed, ctx.p) if needs_x else None
        return grad_x, grad if needs_base else None, None


class UniformDropout(nn.Dropout):
    """``nn.Dropout`` (same parameters, same train/eval behaviour, same distribution: keep with
    probability ``1 - p``, scale ``1 / (1 - p)``) with a faster keep mask on the CPU: the native
    counter-based one in float32 where it is built, else ``rand``. Other random streams than
    ``nn.Dropout``; not in place. Other devices use ``F.dropout`` (one fused kernel)."""

    #: float32 on the CPU: the native kernel where it is built (False: the ``rand`` mask)
    NATIVE = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        if self.NATIVE and native_usable(x):
            return _NativeDropout.apply(x, None, self.p)
        # in place on the fresh uniform draws: 1 / (1 - p) where kept, 0 where dropped
        scale = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # (..., D)
        return x * scale

    def residual(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``base + self(x)`` (same shapes), in one pass where the native kernel runs."""
        if (self.training and 0.0 < self.p < 1.0 and base.shape == x.shape
                and base.dtype == x.dtype and self.NATIVE and native_usable(x)):
            return _NativeDropout.apply(x, base, self.p)
        return base + self(x)
