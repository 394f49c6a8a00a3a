"""The native field-interaction kernel (``models/fast/fused_fields.cpp`` through
:mod:`ctrbench.models.fast.fused_fields`) against FieldInteraction's torch math in float64: the
output, the field weights and the gradients of the item, the fields, the score vectors and their
biases, for one to eight fields, widths on both sides of the 16-lane vectors, zero to 128 rows and
saturated scores; the same bits twice and at 1 and 2 threads; where it may run."""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast.fused_fields import STEM, field_interaction, library, usable
from ctrbench.models.mian import FieldInteraction


@pytest.fixture(autouse=True)
def built():
    """The kernel is built here (a C++ compiler is present), else the test is skipped."""
    if library() is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")


def _case(fields: int, width: int, dim: int, rows: int, seed: int, scale: float = 1.0):
    """A FieldInteraction (biases away from 0, score vectors scaled by ``scale``), its inputs
    and an upstream gradient."""
    torch.manual_seed(seed)
    module = FieldInteraction(fields, width, dim)
    with torch.no_grad():
        module.bias.normal_()
        module.weight.mul_(scale)
    gen = torch.Generator().manual_seed(seed + 1)
    item = torch.randn(rows, width, generator=gen)
    pooled = torch.randn(rows, fields, dim, generator=gen)
    upstream = torch.randn(rows, width + dim, generator=gen)
    return module, item, pooled, upstream


def _native(module, item, pooled, upstream) -> list[torch.Tensor]:
    """Output, field weights, then the gradients of item, fields, weight and bias."""
    item, pooled = item.detach().requires_grad_(True), pooled.detach().requires_grad_(True)
    assert usable(item, pooled, module.weight)
    out, alpha = field_interaction(item, pooled, module.weight, module.bias)
    grads = torch.autograd.grad(out, [item, pooled, module.weight, module.bias], upstream)
    return [out.detach(), alpha.detach(), *grads]


def _float64(module, item, pooled, upstream) -> list[torch.Tensor]:
    reference = FieldInteraction(module.weight.shape[0], item.shape[1], pooled.shape[2]).double()
    with torch.no_grad():
        reference.weight.copy_(module.weight)
        reference.bias.copy_(module.bias)
    item = item.double().requires_grad_(True)
    pooled = pooled.double().requires_grad_(True)
    assert not usable(item, pooled, reference.weight)  # float64: the module's torch path
    out, alpha = reference(item, pooled)
    grads = torch.autograd.grad(out, [item, pooled, reference.weight, reference.bias],
                                upstream.double())
    return [out.detach(), alpha.detach(), *grads]


@pytest.mark.parametrize("fields", [1, 2, 5, 8])
@pytest.mark.parametrize(("width", "dim"), [(32, 16), (16, 8), (24, 5)])
@pytest.mark.parametrize("rows", [0, 1, 3, 128])
def test_kernel_equals_the_float64_reference(fields, width, dim, rows):
    case = _case(fields, width, dim, rows, seed=fields * 100 + width + dim + rows)
    got, expected = _native(*case), _float64(*case)
    assert len(got) == len(expected) == 6
    for value, reference in zip(got, expected):
        assert value.dtype == torch.float32 and value.shape == reference.shape
        torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=2e-5)


def test_many_fields_wide_widths_and_a_tail_of_the_row_blocks():
    case = _case(12, 40, 33, 37, seed=5)  # 37 rows: two 16-row blocks and a tail of 5
    for value, reference in zip(_native(*case), _float64(*case)):
        torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(("width", "dim"), [(32, 16), (3, 40)])
def test_saturated_scores_stay_finite_and_match(width, dim):
    case = _case(5, width, dim, 37, seed=7, scale=1e4)  # |z| in the hundreds: tanh = +-1
    got, expected = _native(*case), _float64(*case)
    for value, reference in zip(got, expected):
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=2e-5)


def test_the_same_bits_twice_and_at_one_and_two_threads():
    case = _case(5, 32, 16, 131, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, again = _native(*case), _native(*case)
        torch.set_num_threads(2)
        two = _native(*case)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(one, again, two))


def test_only_the_wanted_gradients_and_a_non_contiguous_input():
    module, item, pooled, upstream = _case(3, 24, 5, 9, seed=11)
    expected = _native(module, item, pooled, upstream)
    wide = torch.zeros(9, 3, 10)
    wide[:, :, ::2] = pooled
    strided = wide[:, :, ::2].requires_grad_(True)
    assert not strided.is_contiguous()
    out, alpha = field_interaction(item, strided, module.weight.detach(), module.bias.detach())
    (grad_fields,) = torch.autograd.grad(out, [strided], upstream)
    assert torch.equal(out, expected[0]) and torch.equal(alpha, expected[1])
    assert torch.equal(grad_fields, expected[3])


def test_field_weights_are_not_differentiable():
    module, item, pooled, _ = _case(4, 16, 8, 6, seed=1)
    out, alpha = field_interaction(item.requires_grad_(True), pooled, module.weight, module.bias)
    assert out.requires_grad and not alpha.requires_grad
    torch.testing.assert_close(alpha.sum(1), torch.ones(6))
    with torch.no_grad():
        again, alpha_again = field_interaction(item, pooled, module.weight, module.bias)
    assert torch.equal(again, out.detach()) and torch.equal(alpha_again, alpha)


def test_where_the_kernel_may_run(monkeypatch):
    module, item, pooled, _ = _case(3, 8, 4, 5, seed=0)
    weight = module.weight
    assert usable(item, pooled, weight)
    assert not usable(item.double(), pooled, weight)
    assert not usable(item, pooled.double(), weight)
    assert not usable(item, pooled, weight.double())
    assert not usable(item[:4], pooled, weight)  # rows differ
    assert not usable(item, pooled.flatten(1), weight)  # fields not 3-D
    assert not usable(item, pooled[:, :2], weight)  # field count differs from the weight's
    assert not usable(item[:, :7], pooled, weight)  # I + D differs from the weight's width
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not usable(item, pooled, weight)
    monkeypatch.setenv(native.OPT_OUT_VAR, "0")
    assert not usable(item, pooled, weight)
