"""MIAN's Pre-LN block as one autograd node (``ctrbench/models/fast/transformer_block.py``)
against the same block through autograd (``TransformerBlock.FUSED_BLOCK = False``): values,
the gradients of the input and of every parameter, the dropout masks, and where it is used.
"""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast.fused_attention import STEM, RowPacking
from ctrbench.models.fast.transformer_block import usable
from ctrbench.models.sequence import TransformerBlock


@pytest.fixture(autouse=True)
def built():
    if native.load(STEM) is None or native.load("native_dropout") is None:
        pytest.skip(f"native kernels: {native.statuses()}")


def block_and_input(dropout: float, seed: int = 0, lengths=(30, 0, 3, 17, 1, 16, 29, 5, 12)):
    """A Pre-LN block (LayerNorm weights and biases away from 1 and 0), packed ``h [N, 32]``
    requiring grad, and the packing."""
    torch.manual_seed(seed)
    block = TransformerBlock(32, heads=8, ffn_mult=4, dropout=dropout, pre_ln=True)
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.3, 0.3)
    mask = torch.arange(30)[None, :] < torch.tensor(lengths)[:, None]
    packing = RowPacking.of(mask)
    h = torch.randn(packing.places.shape[0], 32, requires_grad=True)
    return block, h, packing


def run(block: TransformerBlock, h: torch.Tensor, packing: RowPacking, fused: bool,
        seed: int = 7) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The block's output and the gradients of ``(output * weights).sum()`` for ``h`` and
    every parameter, the dropout keys drawn from ``seed``."""
    block.FUSED_BLOCK = fused
    torch.manual_seed(seed)
    out = block.forward_steps(h, packing)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), [h, *block.parameters()])
    return out, list(grads)


@pytest.mark.parametrize("dropout", [0.0, 0.2, 0.5])
def test_the_fused_block_equals_the_block_through_autograd(dropout):
    block, h, packing = block_and_input(dropout)
    block.train()
    assert usable(h, block)
    fused, fused_grads = run(block, h, packing, fused=True)
    plain, plain_grads = run(block, h, packing, fused=False)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    names = ["h"] + [name for name, _ in block.named_parameters()]
    for name, a, b in zip(names, fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_the_fused_block_drops_the_same_elements_as_the_block_through_autograd():
    block, h, packing = block_and_input(0.5)
    block.train()
    fused, _ = run(block, h, packing, fused=True, seed=3)
    plain, _ = run(block, h, packing, fused=False, seed=3)
    other, _ = run(block, h, packing, fused=True, seed=4)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    assert (fused - other).abs().max() > 0.1  # another seed, other masks


def test_in_eval_mode_the_fused_block_drops_nothing():
    block, h, packing = block_and_input(0.5)
    block.eval()
    fused, fused_grads = run(block, h, packing, fused=True)
    plain, plain_grads = run(block, h, packing, fused=False)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(block.forward_steps(h, packing), fused)


def test_the_fused_block_is_deterministic():
    block, h, packing = block_and_input(0.2)
    block.train()
    first, first_grads = run(block, h, packing, fused=True)
    second, second_grads = run(block, h, packing, fused=True)
    assert torch.equal(first, second)
    assert all(torch.equal(a, b) for a, b in zip(first_grads, second_grads))


def test_the_fused_block_runs_only_where_it_can():
    block, h, _ = block_and_input(0.2)
    assert usable(h, block)
    assert not usable(h.double(), block.double())
    post_ln = TransformerBlock(32, heads=8, pre_ln=False)
    assert not usable(h, post_ln)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not usable(h.float(), block.float())
    block.dropout.p = 1.0
    assert not usable(h, block)


def test_a_gelu_feed_forward_is_not_taken_for_relu():
    block, h, _ = block_and_input(0.0)
    block.ffn.net[1] = torch.nn.GELU()
    assert not usable(h, block)
