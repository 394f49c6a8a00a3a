"""The trainer: learning, early stopping, test isolation, determinism, divergence, lazy Adam."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
import train_fixtures as tf

import ctrbench.engine.train as train_mod
from ctrbench.cards import TrainConfig, load_model_card, model_card_from_dict
from ctrbench.engine.optim import (
    BatchEmbeddingL2,
    RowWiseAdam,
    TouchedRows,
    build_optimizers,
    clip_grad_norm,
    penalised_tables,
)
from ctrbench.engine.train import (
    SplitTensors,
    TrainingDiverged,
    TrainStep,
    build_for_training,
    model_inputs,
    resolve_device,
    train_and_evaluate,
)
from ctrbench.errors import CardError, CtrbenchError
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.registry import ARCHITECTURES, register
from ctrbench.schema import FieldSpec, Schema

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "planted")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Fewer rows, for the real (slower) architectures."""
    return tf.make_planted_store(tmp_path_factory.mktemp("store") / "small",
                                 rows=(512, 128, 300))


def tiny_card(**train) -> object:
    data = {"name": "tiny", "arch": "tiny_logistic", "params": {"embedding_dim": 4},
            "train": {"lr": 0.05, "batch_size": 64, "eval_batch_size": 256, "epochs": 3,
                      "patience": 2, "l2": 1e-4, **train}}
    return model_card_from_dict(data)


def test_loss_decreases_and_model_learns_planted_signal(planted):
    out = train_and_evaluate(planted, tiny_card(epochs=3, patience=3), seed=0, device="cpu",
                             progress=False)
    losses = [row.train_loss for row in out.epochs]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.02
    # the tiny logistic model can only learn the additive item effect (the oracle's AUC, with
    # the history and taste interactions, is ~0.85); a constant scores 0.5
    assert out.test["auc"] > 0.57
    assert out.test["rows"] == 400 and 0.5 < out.test["gauc"] <= 1
    assert set(out.test_scores) == {"scores", "labels", "groups", "oracle"}
    assert out.test_scores["scores"].shape == (400,)
    assert out.test["oracle_auc"] > out.test["auc"] + 0.1
    row = out.epochs[0]
    assert row.train_seconds > 0 and row.train_samples_per_s > 0 and row.peak_memory_mb > 0
    assert out.n_parameters > 0 and out.device == "cpu"


def test_early_stopping_restores_the_best_epoch(planted, monkeypatch):
    scripted = [0.60, 0.70, 0.65, 0.64, 0.99]  # best at epoch 2; patience 2 stops after 4

    def fake_auc_factory(sequence):
        values = list(sequence)
        real = train_mod.auc

        def fake_auc(labels, scores):
            return values.pop(0) if values else real(labels, scores)

        return fake_auc

    monkeypatch.setattr(train_mod, "auc", fake_auc_factory(scripted))
    seen = []
    long_run = train_and_evaluate(planted, tiny_card(epochs=5), seed=3, device="cpu",
                                  on_epoch=seen.append, progress=False)
    assert [r.epoch for r in seen] == [1, 2, 3, 4]
    assert long_run.best_epoch == 2 and long_run.valid["auc"] == 0.70
    monkeypatch.setattr(train_mod, "auc", fake_auc_factory(scripted[:2]))
    two_epochs = train_and_evaluate(planted, tiny_card(epochs=2), seed=3, device="cpu",
                                    progress=False)
    # the test scores come from epoch 2's weights, not from the last epoch trained
    np.testing.assert_array_equal(long_run.test_scores["scores"],
                                  two_epochs.test_scores["scores"])


def test_test_split_never_loaded_when_tuning(planted, monkeypatch):
    calls = []
    original = type(planted).tensors

    def spy(self, split, device="cpu"):
        calls.append(split)
        return original(self, split, device)

    monkeypatch.setattr(type(planted), "tensors", spy)
    out = train_and_evaluate(planted, tiny_card(epochs=1), seed=0, device="cpu",
                             evaluate_test=False, progress=False)
    assert "test" not in calls and set(calls) == {"train", "valid"}
    assert out.test == {} and out.test_scores == {} and out.valid["auc"] > 0


def test_on_epoch_exceptions_propagate(planted):
    class Prune(Exception):
        pass

    def on_epoch(row):
        raise Prune(row.epoch)

    with pytest.raises(Prune):
        train_and_evaluate(planted, tiny_card(), seed=0, device="cpu", on_epoch=on_epoch,
                           progress=False)


def _strip_timings(rows):
    return [(r.epoch, r.train_loss, r.train_aux_loss, r.valid_auc, r.valid_logloss) for r in rows]


@pytest.mark.parametrize("name,optimizer", [("tiny", "adam"), ("mian", "lazy_adam"),
                                            ("dien", "adam")])
def test_cpu_runs_are_bit_for_bit_repeatable(planted, small, name, optimizer):
    if name == "tiny":
        card, data = tiny_card(optimizer=optimizer, epochs=2), planted
    else:
        card, data = load_model_card(name).with_overrides(
            {"train": {"optimizer": optimizer, "epochs": 1, "batch_size": 128}}), small
    a = train_and_evaluate(data, card, seed=11, device="cpu", progress=False)
    b = train_and_evaluate(data, card, seed=11, device="cpu", progress=False)
    assert _strip_timings(a.epochs) == _strip_timings(b.epochs)
    assert torch.equal(torch.from_numpy(a.test_scores["scores"]),
                       torch.from_numpy(b.test_scores["scores"]))
    assert a.test == b.test
    assert a.explain.keys() == b.explain.keys()
    for key in a.explain:
        np.testing.assert_array_equal(a.explain[key], b.explain[key])
    if name == "tiny":
        c = train_and_evaluate(data, card, seed=12, device="cpu", progress=False)
        assert not np.array_equal(a.test_scores["scores"], c.test_scores["scores"])
    if name == "mian":  # explain: a seeded sample of 256 test rows and the GIM part names
        assert len(a.explain_rows) == 256 and np.all(np.diff(a.explain_rows) > 0)
        assert a.explain["gim"].shape == (256, 7)
        np.testing.assert_allclose(a.explain["gim"].sum(axis=1), 1.0, rtol=1e-5)
        gim_parts = build_for_training(card, data.schema).gim_parts
        # the named columns of explain(): GIM parts, IUIM / ICIM fields; IBIM's are steps
        assert a.explain_parts == {"gim": list(gim_parts),
                                   "iuim": [f.name for f in data.schema.user],
                                   "icim": [f.name for f in data.schema.context]}
    if name == "dien":
        assert a.explain_parts == {} and a.explain["attention"].shape[1] == data.schema.max_len


def test_nan_loss_raises_training_diverged(planted):
    card = model_card_from_dict({"name": "nan", "arch": "tiny_logistic",
                                 "params": {"nan_after": 3}, "train": {"batch_size": 64}})
    with pytest.raises(TrainingDiverged) as info:
        train_and_evaluate(planted, card, seed=0, device="cpu", progress=False)
    assert info.value.epoch == 1 and info.value.step == 3
    assert "diverged" in str(info.value) and isinstance(info.value, CtrbenchError)


def test_huge_learning_rate_diverges(planted):
    card = load_model_card("lr").with_overrides({"train": {"lr": 1e30, "epochs": 2,
                                                           "l2_target": "all", "l2": 1e30}})
    with pytest.raises(TrainingDiverged):
        train_and_evaluate(planted, card, seed=0, device="cpu", progress=False)


class KeySpy(tf.TinyLogistic):
    seen: ClassVar[set[str]] = set()

    def forward(self, batch):
        KeySpy.seen.update(batch)
        return super().forward(batch)


if "key_spy" not in ARCHITECTURES:
    register("key_spy")(KeySpy)


def test_model_sees_only_schema_fields_and_hist_len(planted):
    card = model_card_from_dict({"name": "spy", "arch": "key_spy", "train": {"epochs": 1}})
    train_and_evaluate(planted, card, seed=0, device="cpu", progress=False)
    assert KeySpy.seen == set(model_inputs(planted.schema))
    assert not KeySpy.seen & {"label", "group", "oracle", "gap_days"}


def _step_setup(planted, optimizer):
    card = tiny_card(optimizer=optimizer, l2=0.0, l2_target="none")
    torch.manual_seed(0)
    model = build_for_training(card, planted.schema)
    split = SplitTensors(planted, "train", torch.device("cpu"), model_inputs(planted.schema))
    return model, TrainStep(model, card.train, torch.device("cpu")), split


def test_lazy_adam_updates_only_touched_rows(planted):
    model, step, split = _step_setup(planted, "lazy_adam")
    assert model.tables["item_id"].sparse
    table = model.tables["item_id"].weight
    batch_a, label_a = split.take(torch.arange(0, 16))
    batch_b, label_b = split.take(torch.arange(16, 32))
    step(batch_a, label_a)
    before = table.detach().clone()
    step(batch_b, label_b)
    touched = torch.unique(batch_b["item_id"])
    untouched = torch.ones(table.shape[0], dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(table[untouched], before[untouched])
    assert not torch.equal(table[touched], before[touched])


def test_dense_adam_moves_rows_by_momentum(planted):
    model, step, split = _step_setup(planted, "adam")
    assert not model.tables["item_id"].sparse
    table = model.tables["item_id"].weight
    batch_a, label_a = split.take(torch.arange(0, 16))
    batch_b, label_b = split.take(torch.arange(16, 32))
    step(batch_a, label_a)
    before = table.detach().clone()
    step(batch_b, label_b)
    only_a = sorted(set(batch_a["item_id"].tolist()) - set(batch_b["item_id"].tolist()))
    assert not torch.equal(table[only_a], before[only_a])  # Adam's momentum moves them


def test_touched_rows_penalty_counts_unique_non_padding_rows():
    table = torch.nn.Embedding(6, 2, padding_idx=0)
    with torch.no_grad():
        table.weight.copy_(torch.arange(12.0).reshape(6, 2))
    touched = TouchedRows([table])
    table(torch.tensor([[1, 1, 0], [3, 0, 0]]))
    table(torch.tensor([3, 4]))
    # unique non-padding rows 1, 3, 4: (4 + 9) + (36 + 49) + (64 + 81) = 243
    assert touched.penalty().item() == pytest.approx(243.0)
    touched.clear()
    assert touched.penalty() is None
    touched.remove()


def test_sparse_penalty_keeps_gradients_sparse():
    table = torch.nn.Embedding(10, 3, padding_idx=0, sparse=True)
    touched = TouchedRows([table])
    out = table(torch.tensor([2, 5, 5])).sum()
    (out + touched.penalty()).backward()
    assert table.weight.grad.is_sparse
    grad = table.weight.grad.coalesce().to_dense()
    expected = torch.zeros(10, 3)
    expected[2] = 1 + 2 * table.weight[2].detach()
    expected[5] = 2 + 2 * table.weight[5].detach()
    torch.testing.assert_close(grad, expected)


def _sparse_steps(optimizer_factory, penalty_l2: float = 0.0, steps: int = 3):
    torch.manual_seed(0)
    table = torch.nn.Embedding(20, 3, padding_idx=0, sparse=True)
    opt = optimizer_factory([table.weight])
    touched = TouchedRows([table]) if penalty_l2 else None
    for ids in ([1, 2, 2, 0], [2, 5], [7, 1, 0, 0]):
        opt.zero_grad()
        if touched:
            touched.clear()
        loss = (table(torch.tensor(ids)) * torch.arange(1.0, 4.0)).sum()
        if touched:
            loss = loss + penalty_l2 * touched.penalty()
        loss.backward()
        opt.step()
    return table.weight.detach()


def test_row_wise_adam_matches_sparse_adam():
    ours = _sparse_steps(lambda p: RowWiseAdam(p, lr=0.1, betas=(0.8, 0.9)))
    reference = _sparse_steps(lambda p: torch.optim.SparseAdam(p, lr=0.1, betas=(0.8, 0.9)))
    torch.testing.assert_close(ours, reference)
    untouched = [3, 4, 6, *range(8, 20)]
    torch.manual_seed(0)
    initial = torch.nn.Embedding(20, 3, padding_idx=0).weight.detach()
    assert torch.equal(ours[untouched], initial[untouched]) and torch.all(ours[0] == 0)


def test_row_wise_adam_l2_equals_the_touched_row_penalty():
    ours = _sparse_steps(lambda p: RowWiseAdam(p, lr=0.1, l2=0.3))
    reference = _sparse_steps(lambda p: torch.optim.SparseAdam(p, lr=0.1), penalty_l2=0.3)
    torch.testing.assert_close(ours, reference)


def test_clip_grad_norm_handles_sparse_and_dense():
    dense = torch.nn.Parameter(torch.zeros(2))
    dense.grad = torch.tensor([3.0, 0.0])
    sparse = torch.nn.Parameter(torch.zeros(4, 1))
    sparse.grad = torch.sparse_coo_tensor([[1, 1]], torch.tensor([[2.0], [2.0]]), (4, 1),
                                          check_invariants=True)
    # coalesced sparse grad: row 1 = 4 -> total norm sqrt(9 + 16) = 5
    assert clip_grad_norm([dense, sparse], 1.0) == pytest.approx(5.0)
    total = math.sqrt(float(dense.grad.pow(2).sum()) + float(sparse.grad.to_dense().pow(2).sum()))
    assert total == pytest.approx(1.0, rel=1e-4)


def test_optimizer_choice_sets_sparse_and_conflicts_are_card_errors(planted):
    lazy = build_for_training(tiny_card(optimizer="lazy_adam"), planted.schema)
    opts = build_optimizers(lazy, tiny_card(optimizer="lazy_adam").train)
    assert [type(o).__name__ for o in opts.optimizers] == ["DenseAdam", "RowWiseAdam"]
    bad = model_card_from_dict({"name": "x", "arch": "tiny_logistic",
                                "params": {"sparse": True}, "train": {"optimizer": "adam"}})
    with pytest.raises(CardError, match="conflicts"):
        build_for_training(bad, planted.schema)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(CtrbenchError, match=r"unknown device|unsupported device"):
        resolve_device("tpu-please")
    with pytest.raises(CtrbenchError):
        resolve_device("cuda:99")


# --------------------------------------------------------------------------- fused embedding banks
def _bank_schema() -> Schema:
    return Schema((
        FieldSpec("item_id", "item", "item", 7),
        FieldSpec("cate_id", "item", "cate", 4),
        FieldSpec("hist_item_id", "behavior", "item", 7),
        FieldSpec("hist_cate_id", "behavior", "cate", 4),
        FieldSpec("fav_cate", "user", "cate", 4),
        FieldSpec("weekday", "context", "weekday", 3),
    ), max_len=3)


BANK_BATCHES = [
    {"item_id": [2, 5, 2], "cate_id": [3, 1, 3], "hist_item_id": [[3, 2, 0], [0, 0, 0], [6, 6, 6]],
     "hist_cate_id": [[1, 3, 0], [0, 0, 0], [2, 2, 2]], "fav_cate": [2, 3, 0],
     "weekday": [1, 2, 2]},
    {"item_id": [4, 4, 1], "cate_id": [2, 2, 1], "hist_item_id": [[1, 0, 0], [5, 4, 0], [2, 0, 0]],
     "hist_cate_id": [[1, 0, 0], [2, 2, 0], [3, 0, 0]], "fav_cate": [1, 1, 3],
     "weekday": [2, 0, 1]},
]


def _bank_loss(embed, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A fixed nonlinear function of every field's embedding (the same for both layouts)."""
    total = torch.zeros(())
    for k, (name, ids) in enumerate(batch.items()):
        out = embed(name, ids)  # (B, D) or (B, T, D)
        total = total + ((k + 1) * out).tanh().sum()
    return total


@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_fused_bank_trains_like_separate_tables_with_touched_row_l2(optimizer):
    """One fused table + gradient-hook L2 (+ reused dense grad) == one nn.Embedding per
    vocabulary + the TouchedRows loss penalty, over several Adam steps."""
    schema, l2, lazy = _bank_schema(), 0.05, optimizer == "lazy_adam"
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, l2=l2, l2_target="batch_embeddings")
    torch.manual_seed(0)
    bank = EmbeddingBank(schema, dim=3, sparse=lazy)
    tables = torch.nn.ModuleDict({v: torch.nn.Embedding(n, 3, padding_idx=0, sparse=lazy)
                                  for v, n in schema.vocab_sizes.items()})
    with torch.no_grad():
        for vocab, table in tables.items():
            table.weight.copy_(bank.block(vocab))
    vocab_of = {f.name: f.vocab for f in schema.fields}
    fused_opt = build_optimizers(bank, cfg)
    fused_l2 = BatchEmbeddingL2(penalised_tables(bank, cfg), l2)
    ref_opt = build_optimizers(tables, cfg)
    ref_l2 = TouchedRows(tables.values()) if not lazy else None
    grads = []
    for raw in BANK_BATCHES * 2:
        batch = {k: torch.tensor(v) for k, v in raw.items()}
        fused_opt.zero_grad()
        _bank_loss(lambda n, ids: bank.lookup(vocab_of[n], ids), batch).backward()
        fused_opt.step()
        grads.append(bank.weight.grad)
        ref_opt.zero_grad()
        if ref_l2 is not None:
            ref_l2.clear()
        loss = _bank_loss(lambda n, ids: tables[vocab_of[n]](ids), batch)
        if ref_l2 is not None:
            loss = loss + l2 * ref_l2.penalty()
        loss.backward()
        ref_opt.step()
    for vocab, table in tables.items():
        torch.testing.assert_close(bank.block(vocab).detach(), table.weight.detach())
    assert all(torch.equal(bank.block(v)[0].detach(), torch.zeros(3)) for v in tables)
    if lazy:
        assert all(g.is_sparse for g in grads)
    else:  # the dense gradient is one buffer zeroed in place, never a sparse one
        assert not grads[0].is_sparse and len({g.data_ptr() for g in grads}) == 1
    fused_l2.remove()


def test_fused_l2_hook_adds_the_gradient_of_the_unique_touched_rows():
    schema = _bank_schema()
    torch.manual_seed(1)
    bank = EmbeddingBank(schema, dim=2)
    hook = BatchEmbeddingL2([bank.embedding], 0.5)
    ids = torch.tensor([[3, 3, 0], [5, 0, 0]])
    bank.lookup("item", ids).sum().backward()
    assert hook.penalty() is None  # not a loss term: it is in the gradient
    weight = bank.block("item").detach()
    expected = torch.zeros_like(weight)
    expected[3] = 2 + 2 * 0.5 * weight[3]  # looked up twice, decayed once
    expected[5] = 1 + 2 * 0.5 * weight[5]
    torch.testing.assert_close(bank.weight.grad[bank.vocab_rows("item")], expected)
    assert torch.equal(bank.weight.grad[0], torch.zeros(2))
    hook.remove()
