"""MIAN's IBIM as a native kernel (``ctrbench/models/fast/fused_ibim.{cpp,py}``) against
``BehaviorInteraction.packed``'s torch path in float64: values, the step weights and every
gradient, per-step and shared scores, empty and one-step rows; where it runs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast import fused_ibim
from ctrbench.models.fast.fused_attention import RowPacking
from ctrbench.models.fast.fused_ibim import STEM
from ctrbench.models.mian import BehaviorInteraction, packed_recency


@pytest.fixture(autouse=True)
def built():
    if native.load(STEM) is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")


def case(lengths: list[int], max_len: int, width: int, score: str, seed: int = 0):
    """(module with non-zero biases, item [B, I], packed states [N, I], packing, recency [N])."""
    torch.manual_seed(seed)
    module = BehaviorInteraction(width, max_len, score, init_std=0.5)
    with torch.no_grad():
        module.bias.uniform_(-1, 1)
    mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    packing = RowPacking.of(mask)
    item = torch.randn(len(lengths), width)
    states = torch.randn(packing.places.shape[0], width)
    lengths_t = torch.tensor(lengths)
    return module, item, states, packing, packed_recency(lengths_t, packing, max_len)


def outputs(module, item, states, packing, recency, native_path: bool, dtype=torch.float32):
    """(R, a, gradients of item, states and the module's parameters) of a weighted sum of R."""
    module = copy.deepcopy(module).to(dtype)
    module.NATIVE = native_path
    item = item.to(dtype).requires_grad_()
    states = states.to(dtype).requires_grad_()
    out, alpha = module.packed(item, states, packing, recency)
    weights = torch.linspace(-2, 3, out.numel(), dtype=dtype).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), [item, states, *module.parameters()])
    return out, alpha, grads


@pytest.mark.parametrize("score", ["per_step", "shared"])
@pytest.mark.parametrize("lengths,max_len,width", [
    ([5, 0, 3, 30, 1, 12, 20, 9], 30, 32),  # MIAN's width; an empty history; a full one
    ([1, 1, 2], 4, 5),  # odd width, one-step rows
    ([0, 0], 3, 8),  # nothing valid at all
])
def test_the_kernel_equals_the_torch_path(score, lengths, max_len, width):
    args = case(lengths, max_len, width, score)
    module = args[0]
    assert fused_ibim.usable(args[1], args[2])
    out, alpha, grads = outputs(*args, native_path=True)
    ref_out, ref_alpha, ref_grads = outputs(*args, native_path=False, dtype=torch.float64)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alpha.double(), ref_alpha, rtol=1e-5, atol=1e-6)
    assert torch.equal(alpha[~args[3].mask], torch.zeros_like(alpha[~args[3].mask]))
    names = ["item", "states"] + [name for name, _ in module.named_parameters()]
    for name, got, want in zip(names, grads, ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5, msg=name)


def test_the_step_weights_of_a_row_sum_to_one_and_an_empty_row_pools_nothing():
    module, item, states, packing, recency = case([4, 0, 7], 8, 16, "per_step")
    out, alpha = module.packed(item, states, packing, recency)
    torch.testing.assert_close(alpha.sum(1), torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(out[1], torch.zeros(32))


def test_the_kernel_is_deterministic():
    args = case([5, 0, 3, 30, 1, 12, 20, 9] * 4, 30, 32, "per_step")
    first = outputs(*args, native_path=True)
    second = outputs(*args, native_path=True)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[2], second[2]))


def test_extensions_and_other_dtypes_take_the_torch_path(monkeypatch):
    calls = []
    monkeypatch.setattr(fused_ibim, "ibim", lambda *a: calls.append(a))
    module, item, states, packing, recency = case([3, 2], 4, 8, "per_step")
    product = BehaviorInteraction(8, 4, product=True)
    bilinear = BehaviorInteraction(8, 4, bilinear=True)
    for other in (product, bilinear):
        other.packed(item, states, packing, recency)
    module.double().packed(item.double(), states.double(), packing, recency)
    assert not calls
    assert not fused_ibim.usable(item.double(), states.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_ibim.usable(item, states)
