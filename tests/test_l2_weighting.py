"""Touched-row L2 (``batch_embeddings``) vs DIN's mini-batch-aware 1/n_j weighting
(``din_frequency``): row frequencies, the gradient each adds, and the decay each gives a frequent
and a rare id over an epoch."""

from __future__ import annotations

import pytest
import torch
import train_fixtures as tf

from ctrbench.cards import TrainConfig, load_model_card, model_card_from_dict
from ctrbench.engine.optim import (
    BatchEmbeddingL2,
    RowWiseAdam,
    TouchedRows,
    frequency_scales,
    row_frequencies,
)
from ctrbench.engine.train import train_and_evaluate
from ctrbench.errors import CardError
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.schema import FieldSpec, Schema

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEMA = Schema((
    FieldSpec("item_id", "item", "item", 7),
    FieldSpec("cate_id", "item", "cate", 4),
    FieldSpec("hist_item_id", "behavior", "item", 7),
    FieldSpec("hist_cate_id", "behavior", "cate", 4),
    FieldSpec("fav_cate", "user", "cate", 4),
), max_len=3)
COLUMNS = {"item_id": torch.tensor([2, 5, 2]), "cate_id": torch.tensor([3, 1, 3]),
           "hist_item_id": torch.tensor([[3, 2, 0], [0, 0, 0], [6, 6, 6]]),
           "hist_cate_id": torch.tensor([[1, 3, 0], [0, 0, 0], [2, 2, 2]]),
           "fav_cate": torch.tensor([2, 3, 0])}


def test_row_frequencies_count_every_field_of_a_vocabulary_without_padding():
    bank = EmbeddingBank(SCHEMA, dim=2)
    counts = row_frequencies(bank, SCHEMA, COLUMNS)[id(bank.weight)]
    item = counts[bank.vocab_rows("item")].tolist()
    cate = counts[bank.vocab_rows("cate")].tolist()
    assert item == [0, 0, 3, 1, 0, 1, 3]  # item 2: twice as candidate + once in a history
    assert cate == [0, 2, 4, 4]  # cate 2: 3 history steps + 1 fav_cate; padding never counted
    assert float(counts[0]) == 0.0
    scales = frequency_scales({0: counts})[0]
    assert scales[bank.vocab_rows("item")][2] == pytest.approx(1 / 3)
    assert scales[0] == 1.0  # unseen rows: weight 1 (they are never touched anyway)


def _decay_over_epoch(weighted: bool) -> torch.Tensor:
    """L2 gradient / weight summed over 4 batches with no data gradient, on a frequent item (in
    every batch, n = 4) and a rare one (one batch, n = 1): ``[2 rows, D]``."""
    torch.manual_seed(0)
    bank = EmbeddingBank(SCHEMA, dim=2)
    rows = bank.vocab_rows("item").start + torch.tensor([2, 5])
    counts = torch.ones(bank.weight.shape[0])
    counts[rows[0]] = 4
    scales = {id(bank.weight): counts.reciprocal()} if weighted else None
    hook = BatchEmbeddingL2([bank.embedding], 0.5, scales)
    total = torch.zeros_like(bank.weight)
    for step in range(4):
        ids = torch.tensor([2, 5]) if step == 0 else torch.tensor([2])
        bank.weight.grad = None
        (0.0 * bank.lookup("item", ids).sum()).backward()
        total += bank.weight.grad.to_dense()
    hook.remove()
    return total[rows] / bank.weight.detach()[rows]


def test_batch_embeddings_decays_frequent_ids_more_and_din_weighting_evens_it_out():
    plain = _decay_over_epoch(weighted=False)
    torch.testing.assert_close(plain[0], torch.full((2,), 4 * 2 * 0.5))  # decayed 4 times
    torch.testing.assert_close(plain[1], torch.full((2,), 2 * 0.5))  # once
    din = _decay_over_epoch(weighted=True)
    torch.testing.assert_close(din, torch.full((2, 2), 2 * 0.5))  # both decayed equally


def test_row_wise_adam_frequency_weighting_equals_the_weighted_penalty():
    table_ref = torch.nn.Embedding(6, 3, padding_idx=0, sparse=True)
    table = torch.nn.Embedding(6, 3, padding_idx=0, sparse=True)
    with torch.no_grad():
        table.weight.copy_(table_ref.weight)
    scale = torch.tensor([1.0, 1.0, 0.5, 0.25, 1.0, 0.2])
    ours = RowWiseAdam([table.weight], lr=0.1, l2=0.3, row_scales={id(table.weight): scale})
    reference = torch.optim.SparseAdam([table_ref.weight], lr=0.1)
    touched = TouchedRows([table_ref], {id(table_ref.weight): scale})
    for ids in ([2, 3, 3], [3, 5, 0], [2, 2, 1]):
        ids = torch.tensor(ids)
        ours.zero_grad()
        table(ids).pow(3).sum().backward()
        ours.step()
        reference.zero_grad()
        touched.clear()
        loss = table_ref(ids).pow(3).sum()
        loss = loss + 0.3 * touched.penalty()
        loss.backward()
        reference.step()
    torch.testing.assert_close(table.weight.detach(), table_ref.weight.detach())
    touched.remove()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "small", rows=(256, 64, 64))


@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_din_frequency_trains_a_real_card_and_differs_from_unweighted(small, optimizer):
    base = load_model_card("lr")
    outs = {}
    for target in ("batch_embeddings", "din_frequency"):
        card = base.with_overrides({"train": {"l2_target": target, "l2": 0.5, "epochs": 1,
                                              "batch_size": 64, "optimizer": optimizer}})
        outs[target] = train_and_evaluate(small, card, seed=0, device="cpu", progress=False,
                                          evaluate_test=False)
    assert outs["batch_embeddings"].valid["auc"] != outs["din_frequency"].valid["auc"]


def test_din_frequency_needs_embedding_banks(small):
    card = model_card_from_dict({"name": "tiny", "arch": "tiny_logistic",
                                 "params": {"embedding_dim": 4},
                                 "train": {"l2_target": "din_frequency", "epochs": 1}})
    with pytest.raises(CardError, match="din_frequency"):
        train_and_evaluate(small, card, seed=0, device="cpu", progress=False,
                           evaluate_test=False)


def test_paper_cards_say_which_l2_they_use():
    assert TrainConfig().l2_target == "batch_embeddings"
    assert load_model_card("mian").train.l2_target == "batch_embeddings"
    with pytest.raises(CardError, match="l2_target"):
        TrainConfig(l2_target="frequency")
