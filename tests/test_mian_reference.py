"""MIAN's equations 3-17 (../shared/paper, §3.2), each written as a plain per-sample loop from the
paper's text and compared with the vectorised modules on random inputs; IBIM's score (eq. 8)
per step vs shared: which properties each has."""

from __future__ import annotations

import math

import pytest
import torch

from ctrbench.cards import load_model_card
from ctrbench.errors import CardError
from ctrbench.models import build_model
from ctrbench.models.mian import BehaviorInteraction, recency_index
from ctrbench.models.sequence import TransformerBlock
from ctrbench.schema import HIST_LEN, random_batch, reference_schema

T = 8
SCHEMA = reference_schema(n_items=200, n_cates=12, max_len=T,
                          user_fields={"user_id": 30, "segment": 6, "tenure": 5},
                          context_fields={"weekday": 9, "hour": 6})


def random_history_batch(seed: int, size: int = 12) -> dict[str, torch.Tensor]:
    batch = random_batch(SCHEMA, size, torch.Generator().manual_seed(seed))
    lengths = batch[HIST_LEN]
    lengths[0], lengths[1], lengths[2] = 0, T, 1
    mask = torch.arange(T)[None, :] < lengths[:, None]
    for f in (*SCHEMA.behavior, *SCHEMA.neg_behavior):
        batch[f.name] = batch[f.name].clamp_min(2) * mask
    return batch


def mian(seed: int = 0, **overrides):
    card = load_model_card("mian")
    torch.manual_seed(seed)
    model = build_model(card.arch, SCHEMA, {**card.params, **overrides}).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorm gains (all start at 0 / 1)
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


# --------------------------------------------------------------------------- reference loops
def layer_norm(x: list[float], gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> list:
    """Eq. 3 for one vector."""
    mu = sum(x) / len(x)
    var = sum((v - mu) ** 2 for v in x) / len(x)
    return [float(gamma[i]) * (x[i] - mu) / math.sqrt(var + eps) + float(beta[i])
            for i in range(len(x))]


def linear(x: list[float], weight: torch.Tensor, bias: torch.Tensor | None) -> list[float]:
    """``x W^T + b`` for one vector (torch's weight layout ``[out, in]``)."""
    return [sum(x[i] * float(weight[o, i]) for i in range(len(x)))
            + (float(bias[o]) if bias is not None else 0.0) for o in range(weight.shape[0])]


def softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


def pre_ln_block(block: TransformerBlock, steps: list[list[float]]) -> list[list[float]]:
    """Eqs. 3-5 for one sample's N valid steps: LN -> multi-head self-attention (eq. 4,
    ``softmax(Q K^T / sqrt(d)) V`` per head, heads concatenated, times W^O) -> FFN (eq. 5), each
    sub-layer with its Pre-LN residual (x + f(LN(x)), Xiong et al. 2020, the paper's [31, 34])."""
    att, ffn = block.attention, block.ffn.net
    dim, heads, hd = len(steps[0]), att.heads, att.head_dim
    w = att.qkv.weight
    b = att.qkv.bias
    normed = [layer_norm(x, block.norm1.weight, block.norm1.bias, block.norm1.eps)
              for x in steps]
    q = [linear(x, w[:dim], b[:dim]) for x in normed]
    k = [linear(x, w[dim:2 * dim], b[dim:2 * dim]) for x in normed]
    v = [linear(x, w[2 * dim:], b[2 * dim:]) for x in normed]
    mixed = []
    for t in range(len(steps)):
        concat = []
        for h in range(heads):
            cols = range(h * hd, (h + 1) * hd)
            scores = [sum(q[t][c] * k[u][c] for c in cols) / math.sqrt(hd)
                      for u in range(len(steps))]
            weights = softmax(scores)
            concat += [sum(weights[u] * v[u][c] for u in range(len(steps))) for c in cols]
        mixed.append(linear(concat, att.out.weight, att.out.bias))
    after_attention = [[x[i] + m[i] for i in range(dim)] for x, m in zip(steps, mixed)]
    out = []
    for x in after_attention:
        hidden = [max(0.0, v) for v in linear(layer_norm(x, block.norm2.weight, block.norm2.bias,
                                                          block.norm2.eps),
                                               ffn[0].weight, ffn[0].bias)]
        out.append([xi + fi for xi, fi in zip(x, linear(hidden, ffn[2].weight, ffn[2].bias))])
    return out


def ibim(module: BehaviorInteraction, item: list[float], states: list[list[float]]
         ) -> tuple[list[float], list[float]]:
    """Eqs. 6-9 for one sample (states oldest first); W_t, b_t by recency (t = 0: latest)."""
    n = len(states)
    if n == 0:
        return [0.0] * module.out_width, []
    scores = []
    pairs = []
    for s, h in enumerate(states):
        pair = item + h  # eq. 6: V_t = Concat(e_i, h_t)
        if module.product:  # not in the paper: V_t = [e_i; h_t; e_i * h_t]
            pair = pair + [a * b for a, b in zip(item, h)]
        t = n - 1 - s
        w = module.weight[t] if module.per_step else module.weight
        b = module.bias[t] if module.per_step else module.bias
        value = sum(pair[i] * float(w[i]) for i in range(len(pair))) + float(b)
        if module.bilinear is not None:
            value += sum(item[i] * float(module.bilinear[i, j]) * h[j]
                         for i in range(len(item)) for j in range(len(h)))
        scores.append(math.tanh(value))  # eq. 8
        pairs.append(pair)
    alpha = softmax(scores)  # eq. 7
    return [sum(alpha[s] * pairs[s][i] for s in range(n)) for i in range(len(pairs[0]))], alpha


def field_interaction(weight: torch.Tensor, bias: torch.Tensor, item: list[float],
                      fields: list[list[float]]) -> list[float]:
    """Eqs. 10-11 (IUIM) and 12-13 (ICIM) for one sample: a W^j, b^j per field j."""
    pairs = [item + f for f in fields]
    scores = [math.tanh(sum(p[i] * float(weight[j, i]) for i in range(len(p))) + float(bias[j]))
              for j, p in enumerate(pairs)]
    alpha = softmax(scores)
    return [sum(alpha[j] * pairs[j][i] for j in range(len(pairs))) for i in range(len(pairs[0]))]


def gim(module, parts: list[list[float]]) -> list[float]:
    """Eqs. 14-15 for one sample, each part r_l first projected to the common width (P_l =
    W_l r_l + c_l: the parts' widths differ, see ctrbench/models/mian.py)."""
    projected = [linear(r, proj.weight, proj.bias) for proj, r in zip(module.projections, parts)]
    scores = [math.tanh(sum(p[i] * float(module.weight[part, i]) for i in range(len(p)))
                        + float(module.bias[part])) for part, p in enumerate(projected)]
    alpha = softmax(scores)
    return [sum(alpha[part] * projected[part][i] for part in range(len(parts)))
            for i in range(len(projected[0]))]


def head(mlp, x: list[float]) -> float:
    """Eqs. 16-17: R_l = ReLU(W_l R_{l-1} + b_l), then the click probability. Eq. 17's softmax
    over (no click, click) is the sigmoid of the logit difference: one logit."""
    linears = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    for layer in linears[:-1]:
        x = [max(0.0, v) for v in linear(x, layer.weight, layer.bias)]
    return linear(x, linears[-1].weight, linears[-1].bias)[0]


def vec(t: torch.Tensor) -> list:
    return t.tolist()


# --------------------------------------------------------------------------- the tests
def test_pre_ln_block_matches_eqs_3_to_5():
    torch.manual_seed(1)
    block = TransformerBlock(16, heads=4, ffn_mult=2, dropout=0.2, pre_ln=True).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(3, 5, 16)
        mask = torch.arange(5)[None, :] < torch.tensor([[5], [3], [1]])
        out = block(x, mask)
    for row, n in enumerate((5, 3, 1)):
        with torch.no_grad():
            expected = torch.tensor(pre_ln_block(block, vec(x[row, :n])))
        torch.testing.assert_close(out[row, :n], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("score,bilinear,product", [
    ("per_step", False, False), ("shared", False, False), ("per_step", True, False),
    ("per_step", False, True)])
def test_ibim_matches_eqs_6_to_9(score, bilinear, product):
    torch.manual_seed(2)
    module = BehaviorInteraction(6, T, score, bilinear, product)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
        item, states = torch.randn(5, 6), torch.randn(5, T, 6)
        lengths = torch.tensor([0, 1, 4, T, 6])
        mask = torch.arange(T)[None, :] < lengths[:, None]
        out, alpha = module(item, states, mask, recency_index(lengths, T, T))
    for row, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            expected, weights = ibim(module, vec(item[row]), vec(states[row, :n]))
        torch.testing.assert_close(out[row], torch.tensor(expected), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(alpha[row, :n], torch.tensor(weights or [], dtype=alpha.dtype),
                                   atol=1e-6, rtol=1e-5)
        assert float(alpha[row, n:].abs().sum()) == 0.0  # padding gets nothing


def test_whole_mian_matches_eqs_3_to_17_sample_by_sample():
    model = mian(seed=3)
    batch = random_history_batch(seed=4, size=6)
    with torch.no_grad():
        logits = model(batch)
        parts_vectorised, _ = model._parts(batch)
    bank = model.bank
    for row in range(6):
        def emb(name: str, _row: int = row) -> list[float]:
            return vec(bank(batch, name)[_row])
        n = int(batch[HIST_LEN][row])
        e_i = emb("item_id") + emb("cate_id")
        behaviours = [vec(bank(batch, "hist_item_id")[row, s])
                      + vec(bank(batch, "hist_cate_id")[row, s]) for s in range(n)]
        e_b = [sum(b[i] for b in behaviours) / n if n else 0.0 for i in range(len(e_i))]
        users = [emb(f.name) for f in SCHEMA.user]
        contexts = [emb(f.name) for f in SCHEMA.context]
        with torch.no_grad():
            states = pre_ln_block(model.transformer, behaviours) if n else []
            r_ibim, _ = ibim(model.ibim, e_i, states)
            r_iuim = field_interaction(model.iuim.weight, model.iuim.bias, e_i, users)
            r_icim = field_interaction(model.icim.weight, model.icim.bias, e_i, contexts)
            e_c = [v for field in contexts for v in field]  # eq. 14's concatenations
            e_u = [v for field in users for v in field]
            parts = [e_i, e_c, e_b, e_u, r_ibim, r_iuim, r_icim]
            for got, want in zip(parts_vectorised, parts):
                torch.testing.assert_close(got[row], torch.tensor(want), atol=1e-5, rtol=1e-4)
            expected = head(model.mlp, gim(model.gim, parts))
        assert abs(float(logits[row]) - expected) < 1e-4, (row, float(logits[row]), expected)


# --------------------------------------------------------------------------- eq. 8's properties
def step_scores(module: BehaviorInteraction, item: torch.Tensor, states: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        scores = module.scores(item, states, recency_index(lengths, T, T))
    return scores  # (B, T)


def test_shared_score_ranks_steps_independently_of_candidate_and_order():
    torch.manual_seed(5)
    module = BehaviorInteraction(6, T, "shared")
    with torch.no_grad():  # moderate scores: tanh stays strictly monotone in float32
        module.weight.copy_(0.2 * torch.randn_like(module.weight))
    states = torch.randn(64, T, 6)
    lengths = torch.full((64,), T)
    a = step_scores(module, torch.randn(64, 6), states, lengths)
    b = step_scores(module, 3 * torch.randn(64, 6), states, lengths)  # other candidates
    assert torch.equal(a.argsort(dim=1), b.argsort(dim=1))
    perm = torch.randperm(T)
    torch.testing.assert_close(step_scores(module, torch.zeros(64, 6), states[:, perm], lengths),
                               step_scores(module, torch.zeros(64, 6), states, lengths)[:, perm])


def test_per_step_score_depends_on_candidate_and_position():
    torch.manual_seed(6)
    module = BehaviorInteraction(6, T, "per_step")
    with torch.no_grad():
        module.weight.copy_(torch.randn_like(module.weight))
    states = torch.randn(64, T, 6)
    lengths = torch.full((64,), T)
    a = step_scores(module, torch.randn(64, 6), states, lengths)
    b = step_scores(module, torch.randn(64, 6), states, lengths)
    changed = (a.argmax(1) != b.argmax(1)).float().mean()
    assert changed > 0.3  # the candidate changes which step ranks first on many rows
    perm = torch.roll(torch.arange(T), 1)
    item = torch.randn(64, 6)
    moved = step_scores(module, item, states[:, perm], lengths)
    assert not torch.allclose(moved, step_scores(module, item, states, lengths)[:, perm])


def test_per_step_weights_count_from_the_most_recent_behaviour():
    lengths = torch.tensor([3, 1, 0])
    assert recency_index(lengths, 4, T).tolist() == [[2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    module = BehaviorInteraction(2, T, "per_step")
    with torch.no_grad():
        module.weight.zero_()
        module.bias.zero_()
        module.bias[0] = 5.0  # only the latest behaviour scores high
    item, states = torch.zeros(2, 2), torch.randn(2, T, 2)
    lengths = torch.tensor([3, 6])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    _, alpha = module(item, states, mask, recency_index(lengths, T, T))
    assert alpha.argmax(1).tolist() == [2, 5]  # the last valid step of each row


def test_mian_cards_use_eq_8_per_step_and_reject_unknown_scores():
    assert load_model_card("mian").params["ibim_score"] == "per_step"
    assert mian().ibim.weight.shape == (T, 64)
    assert mian(ibim_score="shared").ibim.weight.shape == (64,)
    variant = load_model_card("mian_product")  # the one non-paper variant card
    assert variant.params["ibim_product"] is True and "variants" in variant.groups
    assert {k: v for k, v in variant.params.items() if k != "ibim_product"} == {
        k: v for k, v in load_model_card("mian").params.items() if k != "ibim_product"}
    with pytest.raises(CardError, match="ibim_score"):
        mian(ibim_score="position")
    product = mian(ibim_product=True)
    assert product.ibim.weight.shape == (T, 96) and product.gim.projections[4].in_features == 96
    batch = random_history_batch(seed=7)
    with torch.no_grad():
        assert torch.isfinite(product(batch)).all()
