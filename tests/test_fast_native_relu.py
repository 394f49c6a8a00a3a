"""The native ReLU backward (``ctrbench/models/fast/native_relu.{cpp,py}``) against torch's
``threshold_backward`` and a float64 column sum: the masked gradient bit for bit, the bias
gradient, widths and row counts on both sides of the vector width and the 64-row blocks, NaN
and zero activations, the same bits twice, and what :func:`usable` refuses."""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast import native_relu
from ctrbench.models.fast.native_relu import STEM, backward_, usable


@pytest.fixture
def built():
    """The kernel is built here (a C++ compiler is present), else the test is skipped."""
    if native_relu.library() is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")


needs_native = pytest.mark.usefixtures("built")


def _case(rows: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=gen).relu_()  # a ReLU's output: zeros included
    grad = torch.randn(rows, width, generator=gen)
    return grad, hidden


@needs_native
@pytest.mark.parametrize("rows", [0, 1, 63, 64, 65, 200])
@pytest.mark.parametrize("width", [1, 15, 16, 17, 128, 130])
def test_equals_threshold_backward_and_its_column_sum(rows, width):
    grad, hidden = _case(rows, width, seed=rows * 1000 + width)
    want = torch.ops.aten.threshold_backward(grad, hidden, 0)
    want_bias = want.double().sum(0)
    got = grad.clone()
    got_bias = backward_(got, hidden)
    assert torch.equal(got, want)  # masked in place, same bits
    assert got_bias.shape == (width,) and got_bias.dtype == torch.float32
    assert torch.allclose(got_bias.double(), want_bias, rtol=0, atol=1e-5 * max(rows, 1))


@needs_native
def test_nan_passes_as_in_torch_and_zero_activations_block():
    grad = torch.ones(3, 4)
    hidden = torch.tensor([[float("nan"), 0.0, -0.0, 2.0]] * 3)
    want = torch.ops.aten.threshold_backward(grad, hidden, 0)
    got_bias = backward_(grad, hidden)
    assert torch.equal(grad, want)  # NaN <= 0 is false: the gradient passes
    assert got_bias.tolist() == [3.0, 0.0, 0.0, 3.0]


@needs_native
def test_same_bits_twice():
    grad, hidden = _case(1893, 128, seed=7)
    first, second = grad.clone(), grad.clone()
    assert torch.equal(backward_(first, hidden), backward_(second, hidden))
    assert torch.equal(first, second)


def test_usable_refuses_what_the_kernel_cannot_take():
    grad, hidden = _case(8, 16)
    assert not usable(grad.double(), hidden.double())
    assert not usable(grad.t(), hidden.t())  # not contiguous
    assert not usable(grad, hidden[:, :8].contiguous())  # other shape
    assert not usable(grad.reshape(-1), hidden.reshape(-1))  # not [N, H]
    assert not usable(grad[:, :0], hidden[:, :0])  # H = 0
