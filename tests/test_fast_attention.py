"""The packed attention (``ctrbench/models/fast/packed_attention.py``) against its plain
reference, ``MaskedSelfAttention.mix`` over the padded batch at the valid steps: values and
gradients in float64, float64 ``gradcheck``, empty histories, every grouping, bf16 autocast.
"""

from __future__ import annotations

import pytest
import torch

from ctrbench.models.fast.packed_attention import KEY_MULTIPLE, AttentionLayout, packed_attention
from ctrbench.models.sequence import MaskedSelfAttention, length_groups


def packed_case(lengths: list[int], steps: int, heads: int = 2, head_dim: int = 3,
                groups: int = 2, seed: int = 0, dtype: torch.dtype = torch.double):
    """(layout, packed qkv [N, 3D] requiring grad, padded qkv [B, T, 3D], mask [B, T])."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    padded = torch.randn(len(lengths), steps, 3 * heads * head_dim, generator=gen, dtype=dtype)
    layout = AttentionLayout.of(mask, length_groups(mask, groups), heads, head_dim, dtype)
    qkv = padded.reshape(-1, padded.shape[-1]).index_select(0, layout.places)  # (N, 3D)
    return layout, qkv.detach().requires_grad_(), padded.requires_grad_(), mask


def reference(padded: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    attention = MaskedSelfAttention(padded.shape[-1] // 3, heads, fused=False)
    return attention.mix(padded, mask)  # (B, T, D)


@pytest.mark.parametrize("lengths,steps,groups", [
    ([5, 0, 3, 7, 1, 12, 20, 9], 20, 2),  # an empty history; T rounded up to 32 keys
    ([5, 0, 3, 7, 1, 12, 20, 9], 20, 6),
    ([4, 2, 4, 1], 4, 1),  # T far below KEY_MULTIPLE
    ([30, 17, 16, 15, 1, 29, 2, 8, 30], 30, 3),  # bounds either side of 16 keys
    ([32, 31, 33, 40, 1], 40, 4),  # T a multiple of 8, not of 16
    ([0, 0, 0], 6, 2),  # nothing valid at all
])
def test_packed_attention_equals_mix_at_valid_steps(lengths, steps, groups):
    heads = 2
    layout, qkv, padded, mask = packed_case(lengths, steps, heads, groups=groups)
    got = packed_attention(qkv, layout)  # (N, D)
    expected = reference(padded, mask, heads).reshape(-1, qkv.shape[1] // 3).index_select(
        0, layout.places)  # (N, D)
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(got)
    (grad_packed,) = torch.autograd.grad((got * weights).sum(), qkv)
    (grad_padded,) = torch.autograd.grad((expected * weights).sum(), padded)
    torch.testing.assert_close(
        grad_packed, grad_padded.reshape(-1, padded.shape[-1]).index_select(0, layout.places))
    # padded steps never reach a valid output: their gradient through mix is exactly 0
    assert torch.equal(grad_padded[~mask], torch.zeros_like(grad_padded[~mask]))


def test_packed_attention_gradcheck():
    layout, qkv, _, _ = packed_case([3, 0, 5, 1, 4], 5, heads=2, head_dim=2, groups=2)
    assert torch.autograd.gradcheck(lambda t: packed_attention(t, layout), (qkv,))


def test_layout_groups_cover_every_row_and_round_keys_up():
    mask = torch.arange(30)[None, :] < torch.tensor([30, 3, 17, 0, 12, 25])[:, None]
    layout = AttentionLayout.of(mask, length_groups(mask, 3), 8, 4, torch.float32)
    assert layout.buffer_steps == 32
    assert [(g.queries, g.keys) for g in layout.groups] == [(10, 16), (20, 32), (30, 32)]
    assert sorted(layout.order.tolist()) == list(range(6))
    assert all(g.keys % KEY_MULTIPLE == 0 and g.bias.shape[0] == (g.end - g.start) * 8
               for g in layout.groups)
    # the valid steps, each once, in buffer-row order
    assert layout.places.tolist() == sorted(
        layout.places.tolist(), key=lambda p: (layout.order.tolist().index(p // 30), p % 30))
    assert layout.places.shape[0] == int(mask.sum())


def test_packed_attention_under_bf16_autocast_matches_float32():
    layout, qkv, _, _ = packed_case([7, 2, 5, 0, 9], 9, heads=2, head_dim=4, groups=2,
                                    dtype=torch.float32)
    expected = packed_attention(qkv, layout)
    (grad_expected,) = torch.autograd.grad(expected.sum(), qkv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = packed_attention(qkv.bfloat16(), layout)
    (grad_got,) = torch.autograd.grad(got.float().sum(), qkv)
    assert torch.isfinite(got.float()).all() and torch.isfinite(grad_got).all()
    torch.testing.assert_close(got.float(), expected, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(grad_got, grad_expected, atol=1e-1, rtol=1e-1)
