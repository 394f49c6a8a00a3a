"""Dice (DIN's activation) as one autograd function with a hand-written backward.

Plain reference: :func:`ctrbench.models.layers.dice`, the DIN paper's formula in autograd ops,
with the batch's mean and biased variance in training; :class:`DiceFunction` must equal it in
values and in the gradients of the input and of ``alpha`` (``tests/test_fast_paths.py``).

Why: autograd's graph of the formula makes twice the passes over ``[N, H]``; one function with
its own backward took a ``[2048, 80]`` Dice call from 2.1 to 0.9 ms on one core (README,
"Where the time went"; ``Tensor.var(dim=0)`` alone was 1.8 ms), and DIN/DIEN's MLPs and DIN's
attention unit call Dice on every layer.
"""

from __future__ import annotations

import torch


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
        ctx.batch_stats = batch_stats
        ctx.mark_non_differentiable(mean, var)
        return x * gate, mean, var

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor
                 ):  # type: ignore[override]
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
