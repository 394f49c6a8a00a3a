"""A fault hunt on the models and the trainer with the data shapes a user's own log produces:
histories empty (in a batch or a whole split) or all full, ``max_len = 1``, one real id in a
vocabulary, a last training batch of one row, a split smaller than one batch, ``lazy_adam`` and
``bf16`` on the CPU; the packed fast paths against their plain references on empty, one-row
and all-full batches; evaluation scores that do not depend on the eval batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctrbench.cards import load_model_card, model_names
from ctrbench.data.store import write_store
from ctrbench.engine import train as train_module
from ctrbench.engine.train import (
    SplitTensors,
    build_for_training,
    model_inputs,
    predict,
    train_and_evaluate,
)
from ctrbench.errors import CardError, DataError
from ctrbench.models import build_model
from ctrbench.models.fast.gated_scan import augru_scan, gru_scan
from ctrbench.models.fast.packed_attention import AttentionLayout, packed_attention
from ctrbench.models.fast.packed_scan import StepPacking, packed_augru_scan, packed_gru_scan
from ctrbench.models.sequence import MaskedSelfAttention, TransformerBlock, length_groups
from ctrbench.schema import HIST_LEN, LABEL, FieldSpec, Schema

# table2 and every MIAN ablation or variant (`ctrbench list models`)
CARDS = sorted({*(n for n in model_names() if "table2" in load_model_card(n).groups),
                *(n for n in model_names() if load_model_card(n).arch == "mian")})
EDGE_LENGTHS = {  # (lengths, max_len): the history shapes of a batch
    "all_empty": ([0, 0, 0], 4), "all_full": ([4, 4, 4], 4), "one_row": ([3], 4),
    "one_row_empty": ([0], 4), "max_len_1": ([1, 0, 1], 1), "full_above_16": ([20, 20], 20),
}


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))


def edge_schema(max_len: int = 4, n_items: int = 20, n_cates: int = 6, user: bool = True,
                context: bool = True) -> Schema:
    """A small schema; ``n_items = 3`` / ``n_cates = 3`` is one real id (0 pads, 1 is OOV)."""
    fields = [FieldSpec("item_id", "item", "item", n_items),
              FieldSpec("cate_id", "item", "cate", n_cates),
              FieldSpec("hist_item_id", "behavior", "item", n_items),
              FieldSpec("hist_cate_id", "behavior", "cate", n_cates),
              FieldSpec("neg_hist_item_id", "neg_behavior", "item", n_items),
              FieldSpec("neg_hist_cate_id", "neg_behavior", "cate", n_cates)]
    if user:
        fields += [FieldSpec("user_id", "user", "user_id", 10),
                   FieldSpec("segment", "user", "segment", 3)]
    if context:
        fields.append(FieldSpec("month", "context", "month", 14))
    return Schema(tuple(fields), max_len=max_len)


def edge_split(schema: Schema, rng: np.random.Generator, lengths: np.ndarray
               ) -> dict[str, np.ndarray]:
    """Random ids for histories of ``lengths``, labels with both classes."""
    rows, steps = lengths.shape[0], schema.max_len
    mask = np.arange(steps)[None, :] < lengths[:, None]
    out: dict[str, np.ndarray] = {}
    for f in schema.fields:
        shape = (rows, steps) if f.group in ("behavior", "neg_behavior") else (rows,)
        ids = rng.integers(2, f.vocab_size, shape)
        out[f.name] = (ids * mask if len(shape) == 2 else ids).astype(np.int32)
    labels = (rng.random(rows) < 0.4).astype(np.float32)
    labels[:2] = [0.0, 1.0][:rows]
    out.update({HIST_LEN: lengths.astype(np.int32), LABEL: labels,
                "group": out.get("user_id", np.zeros(rows)).astype(np.int64)})
    return out


def edge_store(path: Path, schema: Schema, rows: tuple[int, int, int], lengths):
    """A prepared store whose splits have ``rows`` rows and histories ``lengths(rng, n)``."""
    rng = np.random.default_rng(0)
    splits = {split: edge_split(schema, rng, np.asarray(lengths(rng, n)))
              for split, n in zip(("train", "valid", "test"), rows)}
    meta = {"dataset": "edge", "card_hash": "c", "data_hash": f"d-{rows}", "protocol": "din",
            "version": 1, "raw_sha256": {}, "code_version": 1}
    return write_store(path, schema, splits, meta)


def edge_batch(schema: Schema, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    split = edge_split(schema, rng, np.asarray(lengths))
    return {k: torch.from_numpy(v).long() if k != LABEL else torch.from_numpy(v)
            for k, v in split.items() if k != "group"}


# --------------------------------------------------------------------------- MIAN's flags
def test_mian_on_a_dataset_without_user_or_context_fields_names_both_flags():
    """Before: the error named ``use_iuim`` only; after setting it the next run failed on
    ``use_icim``. Now one message names both flags and the card that needs neither."""
    card = load_model_card("mian")
    with pytest.raises(CardError) as caught:
        build_model(card.arch, edge_schema(user=False, context=False), card.params)
    text = str(caught.value)  # the message and its hint
    assert "use_iuim" in text and "use_icim" in text and "mian_wo_iuim_icim" in text
    with pytest.raises(CardError, match="use_icim") as caught:  # one of the two: that one only
        build_model(card.arch, edge_schema(context=False), card.params)
    assert "use_iuim" not in str(caught.value)
    model = build_model("mian", edge_schema(user=False, context=False),
                        load_model_card("mian_wo_iuim_icim").params)
    assert model.gim_parts == ("item", "behavior", "ibim")


# --------------------------------------------------------------------------- models
def finite_step(model, batch: dict[str, torch.Tensor], bf16: bool) -> None:
    """One training forward/backward: logits, loss, every gradient and buffer finite."""
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, aux = model.forward_train(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch[LABEL])
    (loss + sum((a.float() for a in aux.values()), torch.zeros(()))).backward()
    assert torch.isfinite(logits.float()).all() and torch.isfinite(loss)
    for name, p in model.named_parameters():
        grad = p.grad.to_dense() if p.grad is not None and p.grad.is_sparse else p.grad
        assert grad is None or torch.isfinite(grad).all(), f"gradient of {name} not finite"
    for name, buffer in model.named_buffers():
        assert not buffer.is_floating_point() or torch.isfinite(buffer).all(), name


@pytest.mark.parametrize("name", CARDS)
def test_edge_batches_give_finite_logits_gradients_and_batch_free_scores(name):
    card = load_model_card(name)
    if card.arch == "pop":
        pytest.skip("pop is fitted, never trained (tests/test_pop.py)")
    for case, (lengths, max_len) in EDGE_LENGTHS.items():
        for bf16, sparse in ((False, False), (True, True)):
            schema = edge_schema(max_len, n_items=3 if case == "one_row" else 20)
            torch.manual_seed(0)
            model = build_model(card.arch, schema, {**card.params, "sparse": sparse})
            batch = edge_batch(schema, lengths)
            finite_step(model, batch, bf16)
            model.eval()
            with torch.no_grad():
                whole = model(batch)
                alone = torch.cat([model({k: v[i:i + 1] for k, v in batch.items()})
                                   for i in range(len(lengths))])
            assert torch.isfinite(whole).all(), case
            torch.testing.assert_close(alone, whole, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- fast paths
EDGE_PACKED = [([0], 1), ([1], 1), ([0, 0, 0], 4), ([4, 4, 4], 4), ([3], 5), ([0, 1], 1),
               ([20, 20], 20), ([17], 17)]  # empty rows, one row, all-full rows, T = 1


@pytest.mark.parametrize("lengths,steps", EDGE_PACKED)
def test_packed_attention_equals_mix_on_edge_batches(lengths, steps):
    """``packed_attention`` against ``MaskedSelfAttention.mix`` (values and gradients, float64)."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    padded = torch.randn(len(lengths), steps, 12, generator=gen, dtype=torch.double,
                         requires_grad=True)  # 2 heads of width 2
    layout = AttentionLayout.of(mask, length_groups(mask, 2), 2, 2, torch.double)
    qkv = padded.detach().reshape(-1, 12).index_select(0, layout.places).requires_grad_()
    got = packed_attention(qkv, layout)  # (N, D)
    whole = MaskedSelfAttention(4, 2, fused=False).mix(padded, mask)  # (B, T, D)
    expected = whole.reshape(-1, 4).index_select(0, layout.places)
    torch.testing.assert_close(got, expected)
    if got.numel():
        weights = torch.randn_like(got)
        (grad_packed,) = torch.autograd.grad((got * weights).sum(), qkv)
        (grad_whole,) = torch.autograd.grad((expected * weights).sum(), padded)
        torch.testing.assert_close(grad_packed,
                                   grad_whole.reshape(-1, 12).index_select(0, layout.places))


@pytest.mark.parametrize("kind", ["gru", "augru"])
@pytest.mark.parametrize("lengths,steps", EDGE_PACKED[:6])
def test_packed_scans_equal_the_padded_scans_on_edge_batches(kind, lengths, steps):
    gen = torch.Generator().manual_seed(1)
    rows, hidden = len(lengths), 3
    gx = torch.randn(rows, steps, 3 * hidden, generator=gen, dtype=torch.double,
                     requires_grad=True)
    w_hh = torch.randn(3 * hidden, hidden, generator=gen, dtype=torch.double,
                       requires_grad=True)
    b_hh = torch.randn(3 * hidden, generator=gen, dtype=torch.double, requires_grad=True)
    lengths_t = torch.tensor(lengths)
    mask = (torch.arange(steps)[None] < lengths_t[:, None]).double()  # (B, T)
    packing = StepPacking.of(lengths_t, steps)
    if kind == "gru":
        padded = gru_scan(gx, w_hh, b_hh)
        packed = packing.unpack(packed_gru_scan(packing.pack(gx), w_hh, b_hh, packing))
    else:
        gate = torch.rand(rows, steps, generator=gen, dtype=torch.double) * mask
        padded = augru_scan(gx, gate, w_hh, b_hh)
        packed = packing.unpack(packed_augru_scan(packing.pack(gx), packing.pack(gate), w_hh,
                                                  b_hh, packing))
    torch.testing.assert_close(packed, padded * mask[..., None])
    weights = torch.randn(rows, steps, hidden, generator=gen, dtype=torch.double) * mask[..., None]
    for mine, theirs in zip(
            torch.autograd.grad((packed * weights).sum(), (gx, w_hh, b_hh), allow_unused=True,
                                retain_graph=True),
            torch.autograd.grad((padded * weights).sum(), (gx, w_hh, b_hh))):
        torch.testing.assert_close(torch.zeros_like(theirs) if mine is None else mine, theirs)


@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("lengths,steps", EDGE_PACKED)
def test_packed_transformer_block_equals_the_plain_block_on_edge_batches(pre_ln, lengths, steps):
    """At valid steps, values and gradients; the plain block's gradients stay finite even
    through an all-padding row (its attention falls back to step 0; LayerNorm of zeros)."""
    torch.manual_seed(0)
    block = TransformerBlock(8, heads=2, ffn_mult=2, pre_ln=pre_ln).train()  # no dropout
    x = torch.randn(len(lengths), steps, 8, requires_grad=True)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    x_masked = x * mask[..., None]  # padded steps hold the zero padding embedding
    packed, whole = block.forward_packed(x_masked, mask), block(x_masked, mask)
    torch.testing.assert_close(packed[mask], whole[mask])
    params = [x, *block.parameters()]
    got = torch.autograd.grad(packed[mask].sum(), params, allow_unused=True, retain_graph=True)
    expected = torch.autograd.grad(whole[mask].sum(), params, retain_graph=True)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(torch.zeros_like(theirs) if mine is None else mine, theirs)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(whole.sum(), params))


# --------------------------------------------------------------------------- the trainer
def _rand(max_len):
    return lambda rng, n: rng.integers(0, max_len + 1, n)


TRAINER_CASES = {  # store schema, rows (train, valid, test), history lengths, train settings
    # a whole split of empty histories, one category value, a last batch of one row,
    # lazy_adam, bf16 on the CPU, gradient clipping
    "empty_lazy_bf16": (dict(n_cates=3), (33, 12, 12), lambda rng, n: np.zeros(n, int),
                        {"optimizer": "lazy_adam", "precision": "bf16", "batch_size": 16,
                         "grad_clip": 1.0}),
    # max_len 1 with full and empty rows, one real item id, a split smaller than one batch,
    # eval batch larger than the split, dense adam
    "max_len_1_one_item": (dict(max_len=1, n_items=3), (9, 12, 12), _rand(1),
                           {"batch_size": 128, "eval_batch_size": 64}),
    # every history full, the DIN frequency-scaled L2
    "all_full": (dict(), (17, 12, 12), lambda rng, n: np.full(n, 4),
                 {"batch_size": 8, "l2_target": "din_frequency"}),
}


@pytest.fixture(scope="module")
def edge_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    return {case: edge_store(root / case, edge_schema(**schema), rows, lengths)
            for case, (schema, rows, lengths, _) in TRAINER_CASES.items()}


@pytest.mark.parametrize("case", list(TRAINER_CASES))
@pytest.mark.parametrize("name", CARDS)
def test_trainer_runs_every_card_on_edge_stores(edge_stores, name, case):
    train = {"epochs": 1, **TRAINER_CASES[case][3]}
    card = load_model_card(name).with_overrides({"train": train})
    out = train_and_evaluate(edge_stores[case], card, seed=0, device="cpu", progress=False)
    assert np.isfinite(out.test_scores["scores"]).all() and len(out.epochs) == 1
    assert all(np.isfinite(v).all() for v in out.explain.values())


@pytest.mark.parametrize("name", ["lr", "pop"])
def test_a_test_split_with_one_class_fails_before_training(tmp_path, monkeypatch, name):
    """Before: the whole run trained, then its test AUC and GAUC were NaN and the record was
    "finished" (reports then count it as failed). Now refused before any step, like a
    validation split with one class; a run that never scores the test split (tuning) goes on."""
    schema = edge_schema()
    rng = np.random.default_rng(0)
    splits = {split: edge_split(schema, rng, rng.integers(0, 5, 12))
              for split in ("train", "valid", "test")}
    splits["test"][LABEL][:] = 0.0
    meta = {"dataset": "one-class", "card_hash": "c", "data_hash": "d", "protocol": "din",
            "version": 1, "raw_sha256": {}, "code_version": 1}
    data = write_store(tmp_path / "s", schema, splits, meta)
    steps = []
    monkeypatch.setattr(train_module, "_train_epoch", lambda *a, **k: steps.append(1))
    card = load_model_card(name).with_overrides({"train": {"epochs": 1}})
    with pytest.raises(DataError, match=r"test split of 'one-class' has one class only"):
        train_and_evaluate(data, card, seed=0, device="cpu", progress=False)
    assert not steps
    monkeypatch.undo()
    out = train_and_evaluate(data, card, seed=0, device="cpu", progress=False,
                             evaluate_test=False)
    assert out.test == {}
    splits["test"] = {k: v[:0] for k, v in splits["test"].items()}  # an empty test split
    data = write_store(tmp_path / "empty", schema, splits, meta)
    with pytest.raises(DataError, match="empty 'test' split"):
        train_and_evaluate(data, card, seed=0, device="cpu", progress=False)


@pytest.mark.parametrize("name", CARDS)
def test_eval_scores_do_not_depend_on_eval_batch_size(edge_stores, name):
    """The same weights score every validation row the same in batches of 1, 5 and all."""
    data = edge_stores["all_full"]
    card = load_model_card(name)
    torch.manual_seed(0)
    model = build_for_training(card, data.schema)
    with torch.no_grad():  # away from the initial weights, so every part matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    valid = SplitTensors(data, "valid", torch.device("cpu"), model_inputs(data.schema))
    whole = predict(model, valid, 4096)
    for batch_size in (1, 5):
        torch.testing.assert_close(predict(model, valid, batch_size), whole, atol=1e-6,
                                   rtol=1e-5)
