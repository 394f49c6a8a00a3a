"""Dice (DIN's activation) as one autograd function with a hand-written backward.

Plain reference: :func:`ctrbench.models.layers.dice`, the DIN paper's formula in autograd ops,
with the batch's mean and biased variance in training; :class:`DiceFunction` must equal it in
values and in the gradients of the input and of ``alpha`` (``tests/test_fast_paths.py``; the
native kernel: ``tests/test_fast_native_dice.py``).

On float32 CPU tensors, where ``native_dice.cpp`` is built (:mod:`ctrbench.native`), forward and
backward are each two passes over ``[N, H]`` in that kernel (column sums, then the elementwise
pass; the backward recomputes the sigmoid instead of keeping it); elsewhere the torch ops below.

Why: autograd's graph of the formula makes twice the passes over ``[N, H]``; one function with
its own backward took a ``[2048, 80]`` Dice call from 2.1 to 0.9 ms on one core (README,
"Where the time went"; ``Tensor.var(dim=0)`` alone was 1.8 ms), and DIN/DIEN's MLPs and DIN's
attention unit call Dice on every layer.
"""

from __future__ import annotations

import ctypes

import torch

from ctrbench import native

STEM = "native_dice"  # the kernel's name in ctrbench.native.SOURCES
_POINTER = ctypes.c_void_p
_SIGNATURES = {
    "ctrbench_dice_forward": [_POINTER] * 6 + [ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                                               ctypes.c_int],
    "ctrbench_dice_backward": [_POINTER] * 8 + [ctypes.c_int64, ctypes.c_int64, ctypes.c_int],
}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def native_usable(x: torch.Tensor, alpha: torch.Tensor) -> bool:
    """Whether the native kernel can take ``x`` and ``alpha``: float32 on the CPU, a non-empty
    ``x``, and a built library."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and alpha.dtype == torch.float32
            and x.shape[0] > 0 and library() is not None)


def native_forward(x: torch.Tensor, alpha: torch.Tensor, mean: torch.Tensor | None,
                   var: torch.Tensor | None, eps: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y [N, H], mean [H], var [H], rstd [H])`` by the kernel; ``mean``/``var`` None: the
    batch's (new tensors), else read (and returned as given)."""
    n, h = x.shape
    batch_stats = mean is None or var is None
    if batch_stats:
        mean, var = x.new_empty(h), x.new_empty(h)
    else:
        mean, var = mean.float().contiguous(), var.float().contiguous()
    y, rstd = torch.empty_like(x), x.new_empty(h)
    native.check(library().ctrbench_dice_forward(
        x.data_ptr(), alpha.data_ptr(), mean.data_ptr(), var.data_ptr(), rstd.data_ptr(),
        y.data_ptr(), n, h, eps, int(batch_stats)), "dice forward")
    return y, mean, var, rstd


def native_backward(dy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, mean: torch.Tensor,
                    rstd: torch.Tensor, batch_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx [N, H], dalpha [H])`` by the kernel, from the forward's ``mean`` and ``rstd``."""
    n, h = x.shape
    dy = dy.float().contiguous()
    dx, dalpha = torch.empty_like(x), alpha.new_empty(h)
    work = torch.empty_like(x) if batch_stats else dx  # dz between the kernel's two passes
    native.check(library().ctrbench_dice_backward(
        dy.data_ptr(), x.data_ptr(), alpha.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
        dx.data_ptr(), dalpha.data_ptr(), work.data_ptr(), n, h, int(batch_stats)),
        "dice backward")
    return dx, dalpha


class DiceFunction(torch.autograd.Function):
    """Dice on ``x [N, H]`` (float32) with ``alpha [H]``: returns ``(y, mean, var)``.

    ``mean``/``var`` None: the batch's statistics (biased variance), differentiated through as in
    batch normalisation; given: fixed statistics. With ``z = (x - mean) * rstd``,
    ``p = sigmoid(z)``, ``g = alpha + (1 - alpha) p`` and ``y = x g``:
    ``dL/dalpha = sum_n dy x (1 - p)``; ``dz = dy x (1 - alpha) p (1 - p)``;
    ``dL/dx = dy g + rstd (dz - mean_n(dz) - z mean_n(dz z))`` (the last two terms only with
    batch statistics).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor,  # type: ignore[override]
                mean: torch.Tensor | None, var: torch.Tensor | None, eps: float):
        batch_stats = mean is None
        ctx.batch_stats = batch_stats
        if native_usable(x, alpha):
            x, alpha = x.contiguous(), alpha.contiguous()
            y, mean, var, rstd = native_forward(x, alpha, mean, var, eps)
            ctx.native = True
            ctx.save_for_backward(x, alpha, mean, rstd)
            ctx.mark_non_differentiable(mean, var)
            return y, mean, var
        ctx.native = False
        if batch_stats:
            n = x.shape[0]
            mean = x.sum(dim=0).div_(n)  # (H,)
            centred = x - mean  # (N, H)
            var = centred.square().sum(dim=0).div_(n)  # (H,)
        else:
            centred = x - mean
        rstd = (var + eps).rsqrt_()  # (H,)
        z = centred.mul_(rstd)  # (N, H)
        p = torch.sigmoid(z)  # (N, H)
        gate = torch.addcmul(alpha, p, 1 - alpha)  # (N, H)
        ctx.save_for_backward(x, z, p, gate, alpha, rstd)
        ctx.mark_non_differentiable(mean, var)
        return x * gate, mean, var

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor
                 ):  # type: ignore[override]
        if ctx.native:
            x, alpha, mean, rstd = ctx.saved_tensors
            dx, dalpha = native_backward(dy, x, alpha, mean, rstd, ctx.batch_stats)
            return dx, dalpha, None, None, None
        x, z, p, gate, alpha, rstd = ctx.saved_tensors
        dx = dy * gate  # (N, H)
        dyx = dy * x  # (N, H)
        dalpha = (dyx - dyx * p).sum(dim=0)  # (H,)
        dz = dyx.mul_(p).mul_(1 - p).mul_(1 - alpha)  # (N, H)
        if ctx.batch_stats:
            n = x.shape[0]
            dz_mean = dz.sum(dim=0).div_(n)  # (H,)
            dzz_mean = (dz * z).sum(dim=0).div_(n)  # (H,)
            dz = dz.sub_(dz_mean).sub_(z * dzz_mean)
        dx.add_(dz.mul_(rstd))
        return dx, dalpha, None, None, None
