"""The native Dice kernel (``models/fast/native_dice.cpp`` through
:mod:`ctrbench.models.fast.dice`): values, statistics and the gradients of the input and of
``alpha`` against the plain formula (:func:`ctrbench.models.layers.dice`, in float64), with the
batch's statistics and with fixed ones, at widths that are and are not a multiple of the vector
width; the running statistics of :class:`~ctrbench.models.layers.Dice`; and the torch path where
the kernel may not run."""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast import dice as fast_dice
from ctrbench.models.fast.dice import DiceFunction, native_usable
from ctrbench.models.layers import Dice, dice

pytestmark = pytest.mark.skipif(fast_dice.library() is None,
                                reason=f"native dice: {native.status('native_dice')}")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def plain_in_float64(x, alpha, mean, var, dy):
    """The plain formula's output, statistics and gradients, all in float64."""
    x64 = x.detach().double().requires_grad_()
    a64 = alpha.detach().double().requires_grad_()
    stats = (None, None) if mean is None else (mean.double(), var.double())
    y, m, v = dice(x64, a64, *stats, 1e-8)
    gx, ga = torch.autograd.grad(y, (x64, a64), dy.double())
    return y, m, v, gx, ga


@pytest.mark.parametrize("shape", [(2000, 80), (1800, 40), (128, 200), (37, 3), (1, 17),
                                   (70_000, 16)])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_native_dice_equals_the_plain_formula(shape, batch_stats):
    torch.manual_seed(sum(shape))
    n, h = shape
    x = (torch.randn(n, h) * 3 + 1).requires_grad_()
    alpha = torch.randn(h).requires_grad_()
    mean = None if batch_stats else torch.randn(h)
    var = None if batch_stats else torch.rand(h) + 0.5
    assert native_usable(x, alpha)
    y, m, v = DiceFunction.apply(x, alpha, mean, var, 1e-8)
    dy = torch.randn(n, h)
    gx, ga = torch.autograd.grad(y, (x, alpha), dy)
    y64, m64, v64, gx64, ga64 = plain_in_float64(x, alpha, mean, var, dy)
    assert relative_error(y, y64) < 1e-6
    assert relative_error(gx, gx64) < 2e-6
    assert relative_error(ga, ga64) < 2e-6
    if batch_stats:
        assert relative_error(m, m64) < 1e-6
        assert relative_error(v, v64) < 1e-6
    else:  # fixed statistics come back as given
        assert torch.equal(m, mean) and torch.equal(v, var)


def test_native_and_torch_paths_agree_and_one_row_has_no_nan(monkeypatch):
    """A batch of one row (variance 0): both paths give the same finite values and gradients."""
    x = torch.randn(1, 24, requires_grad=True)
    alpha = torch.full((24,), 0.25, requires_grad=True)
    results = []
    for usable in (True, False):
        if not usable:
            monkeypatch.setattr(fast_dice, "native_usable", lambda *_: False)
        y, _, _ = DiceFunction.apply(x, alpha, None, None, 1e-8)
        results.append((y, *torch.autograd.grad(y.sum(), (x, alpha))))
    for got, want in zip(*results):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_dice_module_updates_running_statistics_with_the_kernels_batch_statistics():
    torch.manual_seed(3)
    fused, plain = Dice(40), Dice(40, fused=False)
    with torch.no_grad():
        fused.alpha.uniform_(-1, 1)
        plain.alpha.copy_(fused.alpha)
    x = torch.randn(8, 30, 40) * 2 + 0.5
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.running_mean, plain.running_mean)
    torch.testing.assert_close(fused.running_var, plain.running_var)
    fused.eval()
    plain.eval()
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["float64", "empty", "bf16 alpha"])
def test_the_kernel_is_not_used_where_it_cannot_run(case):
    x, alpha = torch.randn(5, 8), torch.randn(8)
    if case == "float64":
        x, alpha = x.double(), alpha.double()
    elif case == "empty":
        x = x[:0]
    else:
        alpha = alpha.bfloat16()
    assert not native_usable(x, alpha)
