"""MIAN packed end to end (valid steps only, by row) against the padded computation it replaced:
the same logits, parameter gradients, and ``explain()`` weights (float64, edge batches), and
the packing helpers (``RowPacking``, ``TransformerBlock.forward_steps``, IBIM's ``packed``)."""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.cards import load_model_card
from ctrbench.models import build_model
from ctrbench.models.fast.fused_attention import STEM, RowPacking
from ctrbench.models.layers import masked_mean, masked_softmax
from ctrbench.models.mian import BehaviorInteraction, recency_index
from ctrbench.models.sequence import (
    TransformerBlock,
    effective_length,
    embed_history,
    pad_steps,
)
from ctrbench.schema import HIST_LEN, history_mask, random_batch, reference_schema

T = 8
SCHEMA = reference_schema(n_items=200, n_cates=12, max_len=T,
                          user_fields={"user_id": 30, "segment": 6, "tenure": 5},
                          context_fields={"weekday": 9, "hour": 6})
LENGTHS = {  # edge batches: every history empty, all of length 1, all full, mixed
    "empty": [0] * 6,
    "ones": [1] * 6,
    "full": [T] * 6,
    "mixed": [0, T, 1, 3, 5, 0, 2, 7, T + 2, 4],  # T + 2: longer than kept (recency clamps)
}
MODELS = {  # case -> (card, overrides)
    "mian": ("mian", {}),
    "no_transformer": ("mian_no_transformer", {}),
    "product": ("mian_product", {}),
    "shared": ("mian", {"ibim_score": "shared"}),
    "shared_product": ("mian_product", {"ibim_score": "shared"}),
    "bilinear": ("mian", {"ibim_bilinear": True}),
    "post_ln": ("mian_postln", {}),
    "wo_ibim": ("mian_wo_ibim", {}),
}


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))


def model_of(case: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """The card's model without dropout (the padded and packed paths draw differently shaped
    masks), with non-trivial biases and LayerNorm gains."""
    card, overrides = MODELS[case]
    spec = load_model_card(card)
    torch.manual_seed(seed)
    params = {**spec.params, **overrides, "dropout": 0.0, "transformer_dropout": 0.0}
    model = build_model(spec.arch, SCHEMA, params).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def batch_of(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    batch = random_batch(SCHEMA, len(lengths), torch.Generator().manual_seed(seed))
    batch[HIST_LEN] = torch.tensor(lengths)
    mask = torch.arange(T)[None, :] < batch[HIST_LEN][:, None]
    for f in (*SCHEMA.behavior, *SCHEMA.neg_behavior):
        batch[f.name] = batch[f.name].clamp_min(2) * mask
    return batch


# --------------------------------------------------------------------------- padded reference
def padded_ibim(module: BehaviorInteraction, item, states, mask, recency):
    """Eqs. 6-9 over the padded ``[B, T, I]`` states, written out: ``R``, ``a [B, T]``."""
    pairs = [item.unsqueeze(1).expand_as(states), states]
    if module.product:
        pairs.append(item.unsqueeze(1) * states)
    v = torch.cat(pairs, -1)  # (B, T, 2I or 3I)
    weight, bias = (module.weight[recency], module.bias[recency]) if module.per_step else \
        (module.weight, module.bias)
    gamma = (v * weight).sum(-1) + bias  # (B, T)
    if module.bilinear is not None:
        gamma = gamma + torch.einsum("bi,ij,btj->bt", item, module.bilinear, states)
    alpha = masked_softmax(torch.tanh(gamma), mask, dim=1)
    return torch.bmm(alpha.unsqueeze(1), v).squeeze(1), alpha


def padded_logits(model, batch):
    """MIAN's previous computation: padded ``[B, T', I]`` history, the whole transformer block
    on it (key padding mask), IBIM and the behaviour mean over the padded steps. Logits
    ``[B]`` and IBIM's weights ``[B, T]`` (None without IBIM)."""
    schema = model.schema
    steps = effective_length(batch, schema.max_len)
    mask = history_mask(batch, steps)
    item, user, context = model.bank.single_fields(batch, (schema.item, schema.user,
                                                           schema.context))
    item = item.flatten(1)
    behaviours = embed_history(model.bank, batch, schema.behavior, steps)  # (B, T', I)
    parts = {"item": item, "behavior": masked_mean(behaviours, mask),
             "user": user.flatten(1), "context": context.flatten(1)}
    for name, module, fields in (("iuim", model.iuim, user), ("icim", model.icim, context)):
        if module is not None:
            parts[name] = module(item, fields)[0]
    alpha = None
    if model.ibim is not None:
        states = behaviours if model.transformer is None else model.transformer(behaviours, mask)
        recency = recency_index(batch[HIST_LEN], steps, schema.max_len)
        parts["ibim"], alpha = padded_ibim(model.ibim, item, states, mask, recency)
        alpha = pad_steps(alpha, schema.max_len)
    combined, _ = model._combine([parts[p] for p in model.gim_parts])
    return model.mlp(combined).squeeze(-1), alpha


def gradients(model, logits, seed: int = 5) -> dict[str, torch.Tensor]:
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed),
                          dtype=logits.dtype)
    params = dict(model.named_parameters())
    values = torch.autograd.grad((logits * weights).sum(), list(params.values()),
                                 allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g.to_dense()
            for (n, p), g in zip(params.items(), values)}


def assert_same_function(model, batch, **tolerance):
    logits = model(batch)
    expected, _ = padded_logits(model, batch)
    torch.testing.assert_close(logits, expected, **tolerance)
    got, want = gradients(model, logits), gradients(model, expected)
    for name in want:
        torch.testing.assert_close(got[name], want[name], **tolerance, msg=name)


# --------------------------------------------------------------------------- MIAN
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("case", list(MODELS))
def test_packed_mian_equals_padded_in_logits_and_gradients(case, lengths):
    model = model_of(case).train()
    assert_same_function(model, batch_of(LENGTHS[lengths]))


@pytest.mark.parametrize("case", ["mian", "product", "shared", "no_transformer"])
def test_eval_blocks_and_explain_equal_padded(case):
    model = model_of(case).eval()
    model.EVAL_ROWS = 3  # several row blocks (in_row_blocks)
    batch = batch_of(LENGTHS["mixed"], seed=1)
    with torch.no_grad():
        logits, explained = model(batch), model.explain(batch)
        expected, alpha = padded_logits(model, batch)
    torch.testing.assert_close(logits, expected)
    ibim = explained["ibim"].values
    assert ibim.shape == (len(LENGTHS["mixed"]), T)
    torch.testing.assert_close(ibim, alpha)
    padding = torch.arange(T)[None, :] >= batch[HIST_LEN][:, None]
    assert float(ibim[padding].abs().sum()) == 0.0  # exact 0 on padding


def test_packed_mian_float32_native_attention_equals_padded():
    if native.load(STEM) is None:
        pytest.skip(f"native kernel: {native.status(STEM)}")
    model = model_of("mian", torch.float32).train()
    assert_same_function(model, batch_of(LENGTHS["mixed"] * 3, seed=2), atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------------------- helpers
def test_row_packing_pack_unpack_sum_mean():
    mask = torch.arange(5)[None, :] < torch.tensor([3, 0, 5, 1])[:, None]
    packing = RowPacking.of(mask)
    x = torch.randn(4, 5, 2, dtype=torch.float64)
    packed = packing.pack(x)
    assert packing.offsets.tolist() == [0, 3, 3, 8, 9]
    assert packing.row_of.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3]
    assert packing.step_of.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0]
    torch.testing.assert_close(packed, x[mask])
    torch.testing.assert_close(packing.unpack(packed), x * mask.unsqueeze(-1))
    torch.testing.assert_close(packing.sum(packed), (x * mask.unsqueeze(-1)).sum(1))
    torch.testing.assert_close(packing.mean(packed), masked_mean(x, mask))
    assert packing.mean(packed)[1].tolist() == [0.0, 0.0]  # an empty row's mean is 0


@pytest.mark.parametrize("native_attention,packed_attention", [
    (True, True), (False, True), (False, False)])
def test_forward_steps_equals_the_block_at_valid_steps(native_attention, packed_attention):
    torch.manual_seed(0)
    block = TransformerBlock(16, heads=4).eval()
    block.NATIVE_ATTENTION, block.PACKED_ATTENTION = native_attention, packed_attention
    mask = torch.arange(7)[None, :] < torch.tensor([0, 7, 1, 4, 6])[:, None]
    x = torch.randn(5, 7, 16)
    packing = RowPacking.of(mask)
    with torch.no_grad():
        torch.testing.assert_close(block.forward_steps(packing.pack(x), packing),
                                   block(x, mask)[mask], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(block.forward_packed(x, mask)[mask], block(x, mask)[mask],
                                   atol=1e-5, rtol=1e-4)
    empty = RowPacking.of(torch.zeros(0, 7, dtype=torch.bool))
    assert block.forward_steps(torch.zeros(0, 16), empty).shape == (0, 16)


@pytest.mark.parametrize("score,bilinear,product", [
    ("per_step", False, False), ("shared", False, False), ("per_step", True, False),
    ("per_step", False, True), ("shared", True, True)])
def test_ibim_packed_and_padded_interfaces_equal_eqs_6_to_9(score, bilinear, product):
    torch.manual_seed(1)
    module = BehaviorInteraction(6, T, score, bilinear, product).double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    lengths = torch.tensor([0, 1, 4, T, 6])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    item, states = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, T, 6, dtype=torch.float64)
    recency = recency_index(lengths, T, T)
    want_r, want_a = padded_ibim(module, item, states, mask, recency)
    got_r, got_a = module(item, states, mask, recency)
    torch.testing.assert_close(got_r, want_r)
    torch.testing.assert_close(got_a, want_a)
    assert float(got_a.detach()[~mask].abs().sum()) == 0.0
