"""Sequential layers against hand-computed values: AUGRU, DIN's activation unit, transformer."""

from __future__ import annotations

import math

import pytest
import torch

from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.sequence import (
    AUGRU,
    LocalActivationUnit,
    MaskedSelfAttention,
    TransformerBlock,
    apply_by_length,
    augru_recurrence,
    augru_reference,
    auto_groups,
    effective_length,
    embed_history,
)
from ctrbench.schema import HIST_LEN, random_batch, reference_schema


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- AUGRU
def scalar_augru(fast: bool) -> AUGRU:
    """1-wide AUGRU with hand-set weights; gate rows are [reset, update, candidate]."""
    layer = AUGRU(1, 1, fast=fast)
    with torch.no_grad():
        layer.input_proj.weight.copy_(torch.tensor([[0.5], [1.0], [2.0]]))
        layer.input_proj.bias.copy_(torch.tensor([0.1, -0.2, 0.0]))
        layer.hidden_proj.weight.copy_(torch.tensor([[1.0], [-1.0], [0.5]]))
        layer.hidden_proj.bias.copy_(torch.tensor([0.0, 0.3, 0.2]))
    return layer


def hand_augru(xs: list[float], attention: list[float]) -> float:
    """The AUGRU equations written out for scalars (h_0 = 0)."""
    h = 0.0
    for x, a in zip(xs, attention):
        r = sigmoid(0.5 * x + 0.1 + 1.0 * h + 0.0)
        u = a * sigmoid(1.0 * x - 0.2 + -1.0 * h + 0.3)
        n = math.tanh(2.0 * x + 0.0 + r * (0.5 * h + 0.2))
        h = (1 - u) * h + u * n
    return h


@pytest.mark.parametrize("fast", [True, False])
def test_augru_one_and_two_steps_match_hand_values(fast):
    layer = scalar_augru(fast)
    x = torch.tensor([[[1.0], [-0.5]]])  # (B=1, T=2, 1)
    attention = torch.tensor([[0.4, 0.9]])
    one = layer(x[:, :1], attention[:, :1])
    two = layer(x, attention)
    # step 1 by hand: r = s(0.6), u = 0.4 s(1.1), n = tanh(2 + 0.2 r), h = u n
    r1, u1 = sigmoid(0.6), 0.4 * sigmoid(1.1)
    h1 = u1 * math.tanh(2.0 + 0.2 * r1)
    assert one.item() == pytest.approx(h1, abs=1e-6)
    assert one.item() == pytest.approx(hand_augru([1.0], [0.4]), abs=1e-6)
    assert two.item() == pytest.approx(hand_augru([1.0, -0.5], [0.4, 0.9]), abs=1e-6)


def test_augru_zero_attention_carries_the_state():
    layer = scalar_augru(fast=True)
    x = torch.tensor([[[1.0], [-0.5], [3.0], [7.0]]])
    short = layer(x[:, :2], torch.tensor([[0.4, 0.9]]))
    padded = layer(x, torch.tensor([[0.4, 0.9, 0.0, 0.0]]))  # trailing padding: a_t = 0
    assert torch.equal(short, padded)
    empty = layer(x, torch.zeros(1, 4))
    assert torch.equal(empty, torch.zeros(1, 1))


def test_augru_fast_path_matches_autograd_reference_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    gx = torch.randn(5, 7, 12, generator=gen, dtype=torch.double, requires_grad=True)
    attention = torch.rand(5, 7, generator=gen, dtype=torch.double, requires_grad=True)
    w_hh = torch.randn(12, 4, generator=gen, dtype=torch.double, requires_grad=True)
    b_hh = torch.randn(12, generator=gen, dtype=torch.double, requires_grad=True)
    inputs = (gx, attention, w_hh, b_hh)
    assert torch.autograd.gradcheck(augru_recurrence, inputs)
    weights = torch.randn(5, 4, generator=gen, dtype=torch.double)
    fast_grads = torch.autograd.grad((augru_recurrence(*inputs) * weights).sum(), inputs)
    ref_grads = torch.autograd.grad((augru_reference(*inputs) * weights).sum(), inputs)
    for fast, ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(augru_recurrence(*inputs), augru_reference(*inputs))


def test_augru_module_has_no_torchscript():
    """Issue 14: no TorchScript anywhere in the recurrence (plain eager loops)."""
    import inspect

    from ctrbench.models import sequence

    assert "torch.jit" not in inspect.getsource(sequence)


def test_augru_under_bf16_autocast():
    layer = AUGRU(4, 3)
    x = torch.randn(2, 5, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gx = layer.input_proj(x)
        out = augru_recurrence(gx, torch.rand(2, 5), layer.hidden_proj.weight,
                               layer.hidden_proj.bias)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    for param in (x, *layer.parameters()):
        assert param.grad is not None and param.grad.dtype == torch.float32
        assert torch.isfinite(param.grad).all()


# --------------------------------------------------------------------------- DIN unit
def fixed_unit(softmax: bool) -> LocalActivationUnit:
    """D = 1; score = 2 * relu(q * k) + 0.5 (the MLP reads only the q * k feature)."""
    unit = LocalActivationUnit(1, hidden=(1,), activation="relu", softmax=softmax)
    first, last = unit.mlp.net[0], unit.mlp.net[-1]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0]]))  # [q, k, q - k, q * k]
        first.bias.zero_()
        last.weight.fill_(2.0)
        last.bias.fill_(0.5)
    return unit


def test_din_unit_unnormalised_weights_match_hand_values():
    query = torch.tensor([[2.0], [1.0]])
    keys = torch.tensor([[[1.0], [-1.0], [3.0]], [[5.0], [5.0], [5.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    pooled, weights = fixed_unit(softmax=False)(query, keys, mask)
    # row 0: scores 2 * relu(2) + 0.5 = 4.5 and 2 * relu(-2) + 0.5 = 0.5; padding 0
    torch.testing.assert_close(weights, torch.tensor([[4.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(pooled, torch.tensor([[4.5 * 1 - 0.5], [0.0]]))


def test_din_unit_softmax_weights_match_hand_values():
    query = torch.tensor([[2.0]])
    keys = torch.tensor([[[1.0], [-1.0], [3.0]]])
    mask = torch.tensor([[True, True, False]])
    pooled, weights = fixed_unit(softmax=True)(query, keys, mask)
    w0 = math.exp(4.5) / (math.exp(4.5) + math.exp(0.5))
    torch.testing.assert_close(weights, torch.tensor([[w0, 1 - w0, 0.0]]))
    torch.testing.assert_close(pooled, torch.tensor([[w0 - (1 - w0)]]))


def test_din_unit_with_dice_ignores_padding_even_in_training():
    """Dice's batch statistics are taken over valid steps only."""
    torch.manual_seed(0)
    unit = LocalActivationUnit(4, hidden=(8, 4), activation="dice").train()
    query, keys = torch.randn(6, 4), torch.randn(6, 5, 4)
    mask = torch.arange(5)[None, :] < torch.tensor([0, 1, 2, 3, 5, 4])[:, None]
    noisy = torch.where(mask.unsqueeze(-1), keys, torch.randn(6, 5, 4) * 10)
    pooled, _ = unit(query, keys, mask)
    pooled_noisy, _ = unit(query, noisy, mask)
    torch.testing.assert_close(pooled, pooled_noisy)


def test_din_unit_batch_without_any_history_leaves_dice_statistics_alone():
    unit = LocalActivationUnit(4, hidden=(8,), activation="dice").train()
    pooled, weights = unit(torch.randn(3, 4), torch.zeros(3, 2, 4),
                           torch.zeros(3, 2, dtype=torch.bool))
    assert torch.equal(pooled, torch.zeros(3, 4)) and torch.equal(weights, torch.zeros(3, 2))
    dice = unit.mlp.net[1]
    assert torch.equal(dice.running_mean, torch.zeros(8))  # no NaN from an empty batch


# --------------------------------------------------------------------------- transformer
@pytest.mark.parametrize("pre_ln", [True, False])
def test_transformer_block_respects_key_padding_mask(pre_ln):
    torch.manual_seed(0)
    block = TransformerBlock(8, heads=4, ffn_mult=2, dropout=0.0, pre_ln=pre_ln).eval()
    x = torch.randn(3, 6, 8)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 0])[:, None]
    noisy = torch.where(mask.unsqueeze(-1), x, torch.randn(3, 6, 8) * 5)
    out, out_noisy = block(x, mask), block(noisy, mask)
    assert out.shape == (3, 6, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out[mask], out_noisy[mask])
    assert not torch.allclose(out[0], x[0])  # the block does something


def test_post_ln_output_is_normalised_and_pre_ln_keeps_the_residual_stream():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8) * 3 + 1
    mask = torch.ones(2, 5, dtype=torch.bool)
    post = TransformerBlock(8, heads=2, pre_ln=False).eval()(x, mask)
    torch.testing.assert_close(post.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    pre = TransformerBlock(8, heads=2, pre_ln=True).eval()(x, mask)
    assert pre.mean(-1).abs().max() > 0.1  # Pre-LN adds to the raw input, no final LN


def test_self_attention_hand_case_and_empty_rows():
    attention = MaskedSelfAttention(2, heads=1)
    with torch.no_grad():  # q = k = 0, v = x, out = identity: uniform average of valid steps
        attention.qkv.weight.copy_(torch.cat([torch.zeros(4, 2), torch.eye(2)]))
        attention.qkv.bias.zero_()
        attention.out.weight.copy_(torch.eye(2))
        attention.out.bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]] * 2)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = attention(x, mask)
    torch.testing.assert_close(out[0], torch.tensor([[2.0, 1.0]] * 3))
    assert torch.isfinite(out[1]).all()  # no valid step: finite, to be ignored
    with pytest.raises(ValueError, match="divisible"):
        MaskedSelfAttention(6, heads=4)


# --------------------------------------------------------------------------- helpers
def test_effective_length_and_embed_history_trim_all_padding_columns():
    schema = reference_schema(n_items=50, n_cates=5, max_len=8)
    batch = random_batch(schema, 4, torch.Generator().manual_seed(0))
    batch[HIST_LEN] = torch.tensor([0, 3, 1, 2])
    assert effective_length(batch, 8) == 3
    batch[HIST_LEN] = torch.zeros(4, dtype=torch.long)
    assert effective_length(batch, 8) == 1
    bank = EmbeddingBank(schema, 3)
    out = embed_history(bank, batch, schema.behavior, 3)
    assert out.shape == (4, 3, 6)
    full = torch.cat([bank(batch, spec.name) for spec in schema.behavior], dim=-1)  # untrimmed
    torch.testing.assert_close(out, full[:, :3])


# --------------------------------------------------------------------------- fast paths
def test_din_unit_split_first_layer_equals_the_concatenated_mlp():
    """The per-sample / per-step split of the first Linear is the same function and gradient
    as the MLP on [q, k, q - k, q * k]."""
    torch.manual_seed(0)
    unit = LocalActivationUnit(3, hidden=(5, 4), activation="dice").train()  # batch statistics
    query = torch.randn(4, 3, requires_grad=True)
    keys = torch.randn(4, 6, 3, requires_grad=True)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 0, 3])[:, None]
    fast = unit.scores(query, keys, mask)
    q, k = query.unsqueeze(1).expand_as(keys)[mask], keys[mask]
    plain = unit.mlp(torch.cat([q, k, q - k, q * k], dim=-1)).squeeze(-1)
    plain = plain.new_zeros(mask.shape).masked_scatter(mask, plain)
    torch.testing.assert_close(fast, plain)
    inputs = [query, keys, *unit.parameters()]
    weight = torch.randn(4, 6)
    for a, b in zip(torch.autograd.grad((fast * weight).sum(), inputs, retain_graph=True),
                    torch.autograd.grad((plain * weight).sum(), inputs)):
        torch.testing.assert_close(a, b)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(fast.sum(), inputs[2:]))


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("steps", [5, 20])  # 5: the matmul path appends keys up to MIN_KEYS
def test_unfused_attention_equals_the_fused_kernel(training, steps):
    torch.manual_seed(0)
    attention = MaskedSelfAttention(8, heads=4).train(training)
    x = torch.randn(3, steps, 8, requires_grad=True)
    mask = torch.arange(steps)[None, :] < torch.tensor([steps, 2, 0])[:, None]
    outs = []
    for fused in (True, False):
        attention.fused = fused
        out = attention(x, mask)
        outs.append((out, torch.autograd.grad(out[mask].sum(), [x, *attention.parameters()])))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


def test_apply_by_length_equals_one_pass_at_valid_steps():
    torch.manual_seed(0)
    block = TransformerBlock(8, heads=2, ffn_mult=2).eval()
    x = torch.randn(5, 6, 8, requires_grad=True)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 1, 3, 0, 4])[:, None]  # half = 3
    for groups in (2, 6):
        split = apply_by_length(block, x, mask, groups=groups)
        whole = block(x, mask)
        assert split.shape == whole.shape
        torch.testing.assert_close(split[mask], whole[mask])
        short = torch.tensor([False, True, True, True, False])
        assert torch.equal(split[short, 3:], torch.zeros(3, 3, 8))  # trimmed padding: zeros
        grads_split = torch.autograd.grad(split[mask].sum(), [x, *block.parameters()])
        grads_whole = torch.autograd.grad(whole[mask].sum(), [x, *block.parameters()])
        for a, b in zip(grads_split, grads_whole):
            torch.testing.assert_close(a, b)
    calls = []
    apply_by_length(lambda xs, ms: calls.append(xs.shape) or xs, x, mask, groups=2)
    assert calls == [(3, 3, 8), (2, 6, 8)]  # short group trimmed to T // 2, long group full
    calls.clear()
    apply_by_length(lambda xs, ms: calls.append(xs.shape) or xs, x, mask, groups=6)
    assert calls == [(2, 1, 8), (1, 3, 8), (1, 4, 8), (1, 6, 8)]  # lengths 0,1 | 3 | 4 | 6
    calls.clear()
    apply_by_length(lambda xs, ms: calls.append(xs.shape) or xs, x, mask)  # 5 rows: 2 groups
    assert calls == [(3, 3, 8), (2, 6, 8)]
    calls.clear()
    apply_by_length(lambda xs, ms: calls.append(xs.shape) or xs, x, torch.ones(5, 6).bool())
    assert calls == [(5, 6, 8)]  # one group only: a single pass


@pytest.mark.parametrize("pre_ln,packed,fused", [
    (True, True, None), (False, True, None),  # packed_attention, the CPU path
    (True, False, None), (False, False, None), (True, False, True)])  # mix per group
def test_packed_block_equals_one_pass_at_valid_steps(pre_ln, packed, fused):
    torch.manual_seed(0)
    block = TransformerBlock(8, heads=2, ffn_mult=2, pre_ln=pre_ln).train()  # no dropout
    block.PACKED_ATTENTION = packed
    block.NATIVE_ATTENTION = False  # the torch paths (the native one: test_fused_attention.py)
    block.attention.fused = fused  # mix: None: the CPU matmul path; True: the fused kernel
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(7, 20, 8, requires_grad=True)
    lengths = torch.tensor([20, 0, 3, 7, 1, 12, 5])  # two groups: <= 10 and <= 20 steps
    mask = torch.arange(20)[None, :] < lengths[:, None]
    packed = block.forward_packed(x, mask)
    whole = block(x, mask)
    torch.testing.assert_close(packed[mask], whole[mask])
    assert torch.equal(packed[~mask], torch.zeros(int((~mask).sum()), 8))
    grads_packed = torch.autograd.grad(packed[mask].sum(), [x, *block.parameters()])
    grads_whole = torch.autograd.grad(whole[mask].sum(), [x, *block.parameters()])
    for a, b in zip(grads_packed, grads_whole):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(block.forward_by_length(x, mask)[mask], whole[mask])
    block.PACKED_ROWS = 1  # off the CPU, forward_by_length: apply_by_length from this many rows
    torch.testing.assert_close(block.forward_by_length(x, mask)[mask], whole[mask])


def test_auto_groups_grow_with_the_batch():
    assert [auto_groups(rows) for rows in (1, 128, 256, 384, 512, 767, 768, 1024, 8192)] == [
        2, 2, 2, 3, 4, 5, 6, 6, 6]


def test_apply_by_length_puts_every_row_back_in_place():
    x = torch.arange(7.0).view(7, 1, 1).expand(7, 12, 1)  # row r holds the value r
    lengths = torch.tensor([12, 0, 3, 7, 1, 12, 5])
    mask = torch.arange(12)[None, :] < lengths[:, None]
    out = apply_by_length(lambda xs, ms: xs * 1.0, x, mask)
    torch.testing.assert_close(out[mask], x[mask])


def test_din_unit_scores_eval_blocks_like_one_pass(monkeypatch):
    torch.manual_seed(0)
    unit = LocalActivationUnit(3, hidden=(5, 4), activation="dice")
    unit.train()(torch.randn(6, 3), torch.randn(6, 4, 3), torch.ones(6, 4, dtype=torch.bool))
    unit.eval()  # running statistics are no longer the initial ones
    query, keys = torch.randn(5, 3), torch.randn(5, 4, 3)
    mask = torch.arange(4)[None, :] < torch.tensor([4, 0, 2, 3, 1])[:, None]  # N = 10
    whole = unit.scores(query, keys, mask)
    monkeypatch.setattr(LocalActivationUnit, "EVAL_ROWS", 3)  # blocks of 3, 3, 3, 1 steps
    torch.testing.assert_close(unit.scores(query, keys, mask), whole)
    assert torch.equal(whole[~mask], torch.zeros(int((~mask).sum())))
