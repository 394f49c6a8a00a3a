"""DCN as DeepCTR-Torch (which dcn.toml cites) runs it: cross + deep output plus a first-order
linear logit; ``linear = false`` is the DCN paper's model."""

from __future__ import annotations

import torch

from ctrbench.cards import load_model_card
from ctrbench.models import build_model
from ctrbench.schema import random_batch, reference_schema

SCHEMA = reference_schema(n_items=200, n_cates=12, max_len=8,
                          user_fields={"user_id": 30, "segment": 6, "tenure": 5},
                          context_fields={"weekday": 9, "hour": 6})


def test_dcn_card_adds_the_linear_logit_of_deepctr_torch():
    card = load_model_card("dcn")
    assert card.params["linear"] is True
    torch.manual_seed(0)
    model = build_model(card.arch, SCHEMA, dict(card.params)).eval()
    assert model.embedding.bank.dim == card.params["embedding_dim"] + 1  # + first-order column
    batch = random_batch(SCHEMA, 16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.embedding.bias.fill_(0.3)
        first, fields = model.embedding.with_first_order(batch)  # (B,), (B, F, D)
        x0 = fields.flatten(1)
        cross_deep = model.output(torch.cat([model.cross(x0), model.deep(x0)], 1)).squeeze(-1)
        torch.testing.assert_close(model(batch), first + cross_deep)
        assert float(first.abs().min()) > 0  # the linear term is really there


def test_dcn_without_linear_is_the_papers_model():
    card = load_model_card("dcn")
    torch.manual_seed(0)
    model = build_model(card.arch, SCHEMA, {**card.params, "linear": False}).eval()
    assert model.embedding.bias is None
    assert model.embedding.bank.dim == card.params["embedding_dim"]
    batch = random_batch(SCHEMA, 4, torch.Generator().manual_seed(2))
    with torch.no_grad():
        x0 = model.embedding(batch).flatten(1)
        expected = model.output(torch.cat([model.cross(x0), model.deep(x0)], 1)).squeeze(-1)
        torch.testing.assert_close(model(batch), expected)
