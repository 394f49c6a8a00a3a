"""The native LayerNorm kernel (``ctrbench/models/fast/native_layer_norm.{cpp,py}``) against
torch's ``layer_norm`` in float64: values, ``mean``/``rstd``, and the gradients of the input,
weight and bias, at widths that are and are not a multiple of the vector width; rows of one
value (variance 0) and rows far from 0 (values ~1e4); the same bits twice; invalid sizes; and
the torch path where the kernel may not run.
"""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast import native_layer_norm as nln
from ctrbench.models.fast.native_layer_norm import STEM, backward, forward, usable

EPS = 1e-5
WIDTHS = [1, 5, 16, 32, 40, 64, 100, 257]


@pytest.fixture
def built():
    """The kernel is built here (a C++ compiler is present), else the test is skipped."""
    if nln.library() is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")


needs_native = pytest.mark.usefixtures("built")


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    """``got`` within ``rtol`` of ``want``'s largest magnitude (at least 1: a reference of exact
    zeros, e.g. the gradients at width 1, is met by float32 rounding)."""
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    scale = max(float(want.abs().max()), 1.0) if want.numel() else 1.0
    error = float((got.double() - want).abs().max()) if want.numel() else 0.0
    assert error <= rtol * scale, f"error {error:.3g} at scale {scale:.3g}"


def case(shape, width: int, seed: int, offset: float = 0.0, noise: float = 2.0):
    """(x [*shape, W], weight [W], bias [W], grad [*shape, W]), float32."""
    gen = torch.Generator().manual_seed(seed)
    x = offset + noise * torch.randn(*shape, width, generator=gen) + 0.5
    weight = torch.randn(width, generator=gen)
    bias = torch.randn(width, generator=gen)
    grad = torch.randn(*shape, width, generator=gen)
    return x, weight, bias, grad


def reference(x, weight, bias, grad):
    """torch's layer_norm in float64: (y, mean [..., 1], rstd [..., 1], grad_x, grad_weight,
    grad_bias)."""
    x64 = x.double().requires_grad_()
    w64 = weight.double().requires_grad_()
    b64 = bias.double().requires_grad_()
    y = torch.nn.functional.layer_norm(x64, x.shape[-1:], w64, b64, EPS)
    grads = torch.autograd.grad(y, (x64, w64, b64), grad.double())
    with torch.no_grad():
        mean = x64.mean(dim=-1, keepdim=True)
        var = (x64 - mean).square().mean(dim=-1, keepdim=True)
        rstd = (var + EPS).rsqrt()
    return (y.detach(), mean, rstd, *grads)


def check_against_reference(x, weight, bias, grad, rtol: float = 1e-5):
    y, mean, rstd = forward(x, weight, bias, EPS)
    grad_x, grad_weight, grad_bias = backward(grad, x, mean, rstd, weight)
    want = reference(x, weight, bias, grad)
    for got, expected in zip((y, mean, rstd, grad_x, grad_weight, grad_bias), want):
        assert got.dtype == torch.float32
        assert_close(got, expected, rtol)


@needs_native
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("rows", [0, 1, 3, 130])
def test_kernel_equals_torch_in_float64(width, rows):
    check_against_reference(*case((rows,), width, seed=width * 1000 + rows))


@needs_native
@pytest.mark.parametrize("rows", [2088, 16700])
def test_kernel_at_mians_sizes(rows):
    check_against_reference(*case((rows,), 32, seed=rows))


@needs_native
def test_statistics_have_torchs_shapes_and_leading_dimensions_are_kept():
    x, weight, bias, grad = case((4, 7), 40, seed=1)
    y, mean, rstd = forward(x, weight, bias, EPS)
    _, torch_mean, torch_rstd = torch.ops.aten.native_layer_norm(x, [40], weight, bias, EPS)
    assert y.shape == x.shape
    assert mean.shape == torch_mean.shape == rstd.shape == torch_rstd.shape == (4, 7, 1)
    torch.testing.assert_close(mean, torch_mean)
    torch.testing.assert_close(rstd, torch_rstd)
    grad_x, grad_weight, grad_bias = backward(grad, x, mean, rstd, weight)
    assert grad_x.shape == x.shape and grad_weight.shape == grad_bias.shape == (40,)
    check_against_reference(x, weight, bias, grad)


@needs_native
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("level", [0.0, 3.25, -1e4 / 3])
def test_rows_of_one_value_have_variance_zero(width, level):
    """Every row one value (varying by row): y is beta, rstd is 1/sqrt(eps), and grad_x is
    rstd (g - mean(g)) (xhat 0), not a rounding of the mean magnified by rstd."""
    x, weight, bias, grad = case((9,), width, seed=width)
    x = (level + torch.arange(9.0) * 1.5)[:, None].expand(9, width).contiguous()
    check_against_reference(x, weight, bias, grad)
    _, _, rstd = forward(x, weight, bias, EPS)
    torch.testing.assert_close(rstd, torch.full_like(rstd, EPS ** -0.5))


@needs_native
@pytest.mark.parametrize("width", [5, 32, 40, 257])
def test_rows_far_from_zero_keep_their_variance(width):
    """Values ~1e4 with a noise of ~1 (float32's spacing there is ~1e-3): the two-pass
    variance, the deviations and the gradients stay as accurate as near 0."""
    check_against_reference(*case((300,), width, seed=7, offset=1e4, noise=1.0))
    check_against_reference(*case((300,), width, seed=8, offset=-3e4, noise=0.5))


@needs_native
@pytest.mark.parametrize("width", [32, 100])
def test_same_bits_twice(width):
    x, weight, bias, grad = case((1000,), width, seed=3)
    first = forward(x, weight, bias, EPS)
    second = forward(x, weight, bias, EPS)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    grads = [backward(grad, x, first[1], first[2], weight) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@needs_native
def test_backward_without_the_affine_gradients():
    x, weight, bias, grad = case((70,), 32, seed=4)
    _, mean, rstd = forward(x, weight, bias, EPS)
    grad_x, grad_weight, grad_bias = backward(grad, x, mean, rstd, weight, affine_grads=False)
    assert grad_weight is None and grad_bias is None
    assert torch.equal(grad_x, backward(grad, x, mean, rstd, weight)[0])


@needs_native
def test_invalid_sizes_are_refused():
    library = nln.library()
    x, weight, bias, _ = case((2,), 4, seed=5)
    out = torch.empty_like(x)
    stats = torch.empty(2), torch.empty(2)
    for rows, width in ((2, 0), (-1, 4)):
        code = library.ctrbench_layer_norm_forward(
            x.data_ptr(), weight.data_ptr(), bias.data_ptr(), rows, width, EPS, out.data_ptr(),
            stats[0].data_ptr(), stats[1].data_ptr())
        assert code != 0
        code = library.ctrbench_layer_norm_backward(
            x.data_ptr(), x.data_ptr(), stats[0].data_ptr(), stats[1].data_ptr(),
            weight.data_ptr(), rows, width, out.data_ptr(), None, None)
        assert code != 0
    with pytest.raises(RuntimeError, match="layer_norm forward failed"):
        native.check(1, "layer_norm forward")


def test_usable_only_for_float32_cpu_with_an_affine_weight(monkeypatch):
    x, weight, _, _ = case((4,), 8, seed=0)
    assert not usable(x.double(), weight.double())
    assert not usable(x.bfloat16(), weight)
    assert not usable(x, None)
    assert not usable(x, weight[:4])  # not the last dimension's width
    assert not usable(x[:, :0], weight[:0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not usable(x, weight)
    monkeypatch.setattr(nln, "library", lambda: None)
    assert not usable(x, weight)
