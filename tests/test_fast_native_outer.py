"""The native outer-product backward (``ctrbench/models/fast/native_outer.{cpp,py}``) against
the autograd of the broadcast product in float64: both gradients, widths and field counts on
both sides of the vector width, zero rows, a strided ``hidden`` (the CIN's split half), the same
bits twice, and what :func:`usable` refuses."""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast import native_outer
from ctrbench.models.fast.native_outer import STEM, backward, usable


@pytest.fixture
def built():
    """The kernel is built here (a C++ compiler is present), else the test is skipped."""
    if native_outer.library() is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")


needs_native = pytest.mark.usefixtures("built")


def _want(grad, base, hidden):
    base64, hidden64 = (t.double().requires_grad_() for t in (base, hidden))
    z = (base64.unsqueeze(2) * hidden64.unsqueeze(1)).flatten(1)
    return torch.autograd.grad(z, [base64, hidden64], grad.double())


@needs_native
@pytest.mark.parametrize("rows", [0, 1, 7])
@pytest.mark.parametrize("m", [1, 13])
@pytest.mark.parametrize("width", [1, 15, 16, 17, 128])
def test_equals_the_broadcast_products_gradients(rows, m, width):
    gen = torch.Generator().manual_seed(rows * 1000 + m * 100 + width)
    base, hidden = torch.randn(rows, m, generator=gen), torch.randn(rows, width, generator=gen)
    grad = torch.randn(rows, m * width, generator=gen)
    got_base, got_hidden = backward(grad, base, hidden)
    want_base, want_hidden = _want(grad, base, hidden)
    assert got_base.shape == (rows, m) and got_hidden.shape == (rows, width)
    torch.testing.assert_close(got_base.double(), want_base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_hidden.double(), want_hidden, rtol=1e-5, atol=1e-5)


@needs_native
def test_a_strided_hidden_and_the_same_bits_twice():
    gen = torch.Generator().manual_seed(3)
    layer = torch.randn(2048, 256, generator=gen)
    hidden = layer[:, :128]  # the first half of a layer's maps: rows 256 floats apart
    base = torch.randn(2048, 13, generator=gen)
    grad = torch.randn(2048, 13 * 128, generator=gen)
    assert usable(grad, base, hidden)
    first, second = backward(grad, base, hidden), backward(grad, base, hidden.contiguous())
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    for got, want in zip(first, _want(grad, base, hidden)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_usable_refuses_what_the_kernel_cannot_take():
    base, hidden, grad = torch.zeros(4, 3), torch.zeros(4, 5), torch.zeros(4, 15)
    assert not usable(grad.double(), base.double(), hidden.double())
    assert not usable(grad, base, torch.zeros(5, 4).t())  # columns not adjacent
    assert not usable(grad[:, :14], base, hidden)  # not m * H wide
    assert not usable(torch.zeros(15, 4).t(), base, hidden)  # grad not contiguous
