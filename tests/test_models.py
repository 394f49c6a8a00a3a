"""Registry-driven tests: every model card (cards.model_names()) gets the same checks.

Each card is built with ``build_model(card.arch, schema, card.params)`` on a small reference
schema in which a user field (``fav_cate``) shares the category table, so models that count
tables instead of fields fail here. A model added as one module + one card is tested
automatically.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import rankdata

from ctrbench.cards import load_model_card, model_names, resolve_model_spec
from ctrbench.errors import CardError
from ctrbench.models import ARCHITECTURES, CTRModel, build_model, config_of
from ctrbench.schema import HIST_LEN, LABEL, FieldSpec, Schema, random_batch, reference_schema

N_ITEMS, N_CATES, T = 600, 12, 10  # vocab sizes count padding and OOV: real cates 2..11
SEGMENTS = 6  # "segment" user field: real values 2..5
# Cards whose architecture is fitted from statistics, never trained (pop): tests/test_pop.py
UNTRAINED = [n for n in model_names()
             if not ARCHITECTURES.get(load_model_card(n).arch).trainable]
MODELS = [n for n in model_names() if n not in UNTRAINED]
BASELINES = ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm")  # this file's owner's five

# Parameters whose gradient may legitimately be zero on the test batches (none so far).
ZERO_GRAD_ALLOWED: dict[str, set[str]] = {}
# Known failures under bf16 autocast, to be fixed by the model's owner (strict: a fix must
# remove the entry).
# Models known to fail under bf16 autocast (strict xfail: a fix turns them into failures).
BF16_KNOWN_FAILURES: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))


def small_schema() -> Schema:
    base = reference_schema(
        n_items=N_ITEMS, n_cates=N_CATES, max_len=T,
        user_fields={"user_id": 40, "segment": SEGMENTS, "fav_cate": N_CATES},
        context_fields={"weekday": 9, "hour": 6},
    )
    # fav_cate shares the category table with cate_id / hist_cate_id / neg_hist_cate_id
    fields = tuple(FieldSpec("fav_cate", "user", "cate", N_CATES) if f.name == "fav_cate" else f
                   for f in base.fields)
    return Schema(fields, max_len=T)


SCHEMA = small_schema()


def card_model(name: str, seed: int = 0, **overrides) -> CTRModel:
    card = load_model_card(name)
    torch.manual_seed(seed)
    return build_model(card.arch, SCHEMA, {**card.params, **overrides})


def random_inputs(batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """A well-formed random batch with one empty and one full history among its rows."""
    gen = torch.Generator().manual_seed(seed)
    batch = random_batch(SCHEMA, batch_size, gen)
    lengths = batch[HIST_LEN].clone()
    lengths[0], lengths[1] = 0, T
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    for f in (*SCHEMA.behavior, *SCHEMA.neg_behavior):
        ids = torch.randint(2, f.vocab_size, (batch_size, T), generator=gen)
        batch[f.name] = ids * mask
    batch[HIST_LEN] = lengths
    return batch


def cate_of(items: np.ndarray) -> np.ndarray:
    """The planted item -> category map (real categories 2 .. N_CATES-1)."""
    return 2 + items % (N_CATES - 2)


def planted_batch(batch_size: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny problem with planted structure: label = (candidate category in the history)
    XOR (user segment parity == candidate category parity). Candidate items are distinct."""
    rng = np.random.default_rng(seed)
    items = rng.permutation(np.arange(2, N_ITEMS))[:batch_size]
    lengths = rng.integers(1, T + 1, batch_size)
    mask = np.arange(T)[None, :] < lengths[:, None]
    hist_items = rng.integers(2, N_ITEMS, (batch_size, T)) * mask
    hist_cates = cate_of(hist_items) * mask
    neg_items = rng.integers(2, N_ITEMS, (batch_size, T)) * mask
    segment = rng.integers(2, SEGMENTS, batch_size)
    cates = cate_of(items)
    in_history = (hist_cates == cates[:, None]).any(axis=1)
    label = in_history ^ (segment % 2 == cates % 2)
    arrays = {
        "item_id": items, "cate_id": cates,
        "hist_item_id": hist_items, "hist_cate_id": hist_cates,
        "neg_hist_item_id": neg_items, "neg_hist_cate_id": cate_of(neg_items) * mask,
        "user_id": rng.integers(2, 40, batch_size), "segment": segment,
        "fav_cate": rng.integers(2, N_CATES, batch_size),
        "weekday": rng.integers(2, 9, batch_size), "hour": rng.integers(2, 6, batch_size),
        HIST_LEN: lengths,
    }
    batch = {k: torch.as_tensor(v, dtype=torch.int64) for k, v in arrays.items()}
    batch[LABEL] = torch.as_tensor(label, dtype=torch.float32)
    return batch


def train_loss(model: CTRModel, batch) -> torch.Tensor:
    logits, aux = model.forward_train(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch[LABEL])
    return loss + sum(aux.values(), torch.zeros(()))


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    ranks = rankdata(scores.numpy())
    pos = labels.numpy() == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def subset(batch, index) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in batch.items()}


def dense_grad(param: torch.Tensor) -> torch.Tensor:
    grad = param.grad
    return grad.to_dense() if grad.is_sparse else grad


# --------------------------------------------------------------------------- cards and CLI
def test_every_baseline_card_exists_in_table2():
    for name in BASELINES:
        assert name in MODELS
    assert set(BASELINES) <= set(resolve_model_spec("baselines"))
    assert set(BASELINES) <= set(resolve_model_spec("table2"))


@pytest.mark.parametrize("name", MODELS)
def test_card_builds_with_its_params(name):
    card = load_model_card(name)
    assert card.arch in ARCHITECTURES
    assert card.description
    model = card_model(name)
    assert isinstance(model, CTRModel)
    names = config_of(card.arch).names()
    assert set(card.params) <= set(names)
    for key in ("embedding_dim", "sparse"):  # the shared interface every model accepts
        assert key in names, f"{card.arch} lacks the parameter {key!r}"
    with pytest.raises(CardError, match="no_such_param"):
        build_model(card.arch, SCHEMA, {**card.params, "no_such_param": 1})


@pytest.mark.parametrize("name", MODELS)
def test_an_empty_batch_gives_no_logits_and_no_error(name):
    # MIAN's packed transformer block (no length group) and xDeepFM's CIN (reshape(0, D, -1))
    # raised on a batch of 0 rows; every other model returned 0 logits
    model = card_model(name)
    empty = {key: value[:0] for key, value in random_inputs(4, seed=0).items()}
    for training in (True, False):
        model.train(training)
        logits = model(empty)
        assert logits.shape == (0,)
    model.train()
    loss = model(empty).sum()  # no rows: the loss is 0 and backward runs
    loss.backward()


@pytest.mark.parametrize("name", [n for n in BASELINES if n in MODELS])
def test_baseline_paper_numbers_present(name):
    card = load_model_card(name)
    for dataset in ("books", "electronics"):
        assert 0.5 < card.paper[dataset]["auc"] < 1.0
        assert 0.0 < card.paper[dataset]["logloss"] < 1.0


@pytest.mark.parametrize(("name", "bad", "message"), [
    ("wide_deep", {"hidden_units": [256, 0]}, "hidden_units"),
    ("dcn", {"cross_layers": 0}, "cross_layers"),
    ("deepfm", {"dropout": 1.5}, "dropout"),
    ("xdeepfm", {"cin_layer_sizes": [3, 4]}, "even"),
    ("lr", {"embedding_dim": 0}, "embedding_dim"),
    ("wide_deep", {"activation": "tanh"}, "activation"),
    ("dcn", {"hidden_units": 5}, "hidden_units"),
])
def test_bad_baseline_params_are_card_errors(name, bad, message):
    card = load_model_card(name)
    with pytest.raises(CardError, match=message):
        build_model(card.arch, SCHEMA, {**card.params, **bad})


def test_dcn_without_deep_tower_is_cross_only():
    model = card_model("dcn", hidden_units=[]).eval()
    assert model.deep is None
    # F = 2 item + 2 pooled histories + 3 user + 2 context = 9 fields (3 of them share the
    # cate table); the output layer sees only the cross network's F * D = 144 features
    assert model.embedding.num_fields == 9
    assert model.output.in_features == 9 * 16
    with torch.no_grad():
        assert model(random_inputs(4, seed=0)).shape == (4,)


def test_xdeepfm_cin_counts_fields_not_tables():
    # DeepCTR-Torch's xDeepFM sized its CIN by embedding tables and broke when history fields
    # shared them. Here 9 fields share 6 tables (item, cate, user_id, segment, weekday, hour).
    model = card_model("xdeepfm")
    assert len(model.embedding.bank.vocab_sizes) == 6
    assert model.cin.num_fields == 9
    assert model.cin.layers[0].in_features == 9 * 9


def test_cli_list_models_lists_every_card():
    from ctrbench.cli import main

    result = CliRunner().invoke(main, ["list", "models"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    assert set(MODELS) <= listed
    result = CliRunner().invoke(main, ["list", "models", "--group", "baselines"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    assert set(BASELINES) <= listed


# --------------------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("name", MODELS)
def test_initial_logits_near_zero(name):
    model = card_model(name).eval()
    with torch.no_grad():
        logits = model(random_inputs(128, seed=1))
    assert logits.shape == (128,)
    assert torch.isfinite(logits).all()
    assert logits.abs().mean() < 0.5, "initial logits far from 0 (initialisation too wide?)"


def test_lr_starts_at_chance_level():
    """FuxiCTR's N(0, 1) first-order init started LR at logloss 1.3-2.3; ours starts at ln 2."""
    model = card_model("lr").eval()
    batch = random_inputs(512, seed=2)
    with torch.no_grad():
        logits = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch[LABEL])
    assert logits.abs().max() < 0.3
    assert abs(loss.item() - np.log(2)) < 0.01


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_every_parameter_learns(name):
    model = card_model(name).train()
    batch = planted_batch(64, seed=3)
    batch["hist_len"][0] = 0  # an empty history must not produce NaN
    batch["hist_item_id"][0] = batch["hist_cate_id"][0] = 0
    loss = train_loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    allowed = ZERO_GRAD_ALLOWED.get(name, set())
    silent = [n for n, p in model.named_parameters() if p.requires_grad and n not in allowed
              and (p.grad is None or not torch.isfinite(dense_grad(p)).all()
                   or dense_grad(p).abs().sum() == 0)]
    assert not silent, f"parameters without a (finite, non-zero) gradient: {silent}"
    for table in model.embedding_modules():  # the padding row never learns
        if table.padding_idx is not None:
            assert torch.equal(dense_grad(table.weight)[table.padding_idx],
                               torch.zeros(table.embedding_dim))


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=BF16_KNOWN_FAILURES[n], strict=True))
    if n in BF16_KNOWN_FAILURES else n for n in MODELS])
def test_bf16_autocast_forward_backward(name):
    """The trainer autocasts to bf16 on CUDA; CPU autocast catches the same dtype mix-ups."""
    model = card_model(name).train()
    batch = planted_batch(32, seed=15)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, aux = model.forward_train(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch[LABEL])
    (loss + sum((a.float() for a in aux.values()), torch.zeros(()))).backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(random_inputs(16, seed=16))
    assert scores.shape == (16,) and torch.isfinite(scores.float()).all()


@pytest.mark.parametrize("name", MODELS)
def test_sparse_option_gives_sparse_embedding_grads(name):
    model = card_model(name, sparse=True).train()
    train_loss(model, planted_batch(32, seed=4)).backward()
    tables = model.embedding_modules()
    assert tables
    embedding_params = {id(t.weight) for t in tables}
    for table in tables:
        assert table.weight.grad is not None and table.weight.grad.is_sparse
    for pname, param in model.named_parameters():
        if id(param) not in embedding_params and param.grad is not None:
            assert not param.grad.is_sparse, f"{pname}: dense parts must stay dense"


# --------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("name", MODELS)
def test_padding_and_negative_history_do_not_change_scores(name):
    model = card_model(name).eval()
    batch = random_inputs(48, seed=5)
    with torch.no_grad():
        before = model(batch)
    gen = torch.Generator().manual_seed(6)
    padded = torch.arange(T).unsqueeze(0) >= batch[HIST_LEN].unsqueeze(1)  # (B, T)
    changed = dict(batch)
    for f in SCHEMA.behavior:  # garbage ids at padded positions
        noise = torch.randint(2, f.vocab_size, (48, T), generator=gen)
        changed[f.name] = torch.where(padded, noise, batch[f.name])
    for f in SCHEMA.neg_behavior:  # negative histories are a training-only input: all changed
        changed[f.name] = torch.randint(2, f.vocab_size, (48, T), generator=gen)
    with torch.no_grad():
        after = model(changed)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("group", ["item", "behavior", "user", "context"])
def test_every_input_group_reaches_the_score(name, group):
    """Re-drawing one group's ids (valid history steps only) changes most samples' scores."""
    model = card_model(name).eval()
    batch = random_inputs(48, seed=13)
    gen = torch.Generator().manual_seed(14)
    changed = dict(batch)
    for f in SCHEMA.group(group):
        noise = torch.randint(2, f.vocab_size, batch[f.name].shape, generator=gen)
        changed[f.name] = torch.where(batch[f.name] > 0, noise, batch[f.name])
    with torch.no_grad():
        moved = (model(changed) - model(batch)).abs() > 1e-7
    eligible = batch[HIST_LEN] > 0 if group == "behavior" else torch.ones(48, dtype=torch.bool)
    assert moved[eligible].float().mean() > 0.5, f"{group} fields barely reach the output"
    assert not moved[~eligible].any(), "an empty history changed when its padding was redrawn"


@pytest.mark.parametrize("name", MODELS)
def test_eval_score_independent_of_the_batch(name):
    model = card_model(name).eval()
    batch = random_inputs(32, seed=7)
    with torch.no_grad():
        full = model(batch)
        alone = torch.cat([model(subset(batch, slice(i, i + 1))) for i in range(6)])
        perm = torch.randperm(32, generator=torch.Generator().manual_seed(8))
        shuffled = model(subset(batch, perm))
        half = model(subset(batch, slice(0, 16)))
    torch.testing.assert_close(alone, full[:6], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shuffled, full[perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(half, full[:16], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- repeatability
@pytest.mark.parametrize("name", MODELS)
def test_seeded_construction_and_adam_step_bit_for_bit(name):
    batch = planted_batch(64, seed=9)
    states = []
    for _ in range(2):
        model = card_model(name, seed=11).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(12)  # dropout masks
        train_loss(model, batch).backward()
        optimizer.step()
        states.append((initial, model.state_dict()))
    (init_a, after_a), (init_b, after_b) = states
    assert init_a.keys() == init_b.keys()
    for key in init_a:
        assert torch.equal(init_a[key], init_b[key]), f"construction differs at {key}"
        assert torch.equal(after_a[key], after_b[key]), f"Adam step differs at {key}"
    assert any(not torch.equal(init_a[k], after_a[k]) for k in init_a), "the step changed nothing"


# --------------------------------------------------------------------------- learnability
@pytest.mark.parametrize("name", MODELS)
def test_learns_planted_problem(name):
    """Full-batch Adam (lr 1e-2, not the card's: this tests capacity and gradient flow) on 256
    planted samples; training AUC (eval mode) must pass 0.95 within 300 steps."""
    batch = planted_batch(256, seed=0)
    model = card_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    best = 0.0
    for step in range(1, 301):
        model.train()
        optimizer.zero_grad()
        train_loss(model, batch).backward()
        optimizer.step()
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                best = max(best, auc(model(batch), batch[LABEL]))
            if best > 0.95:
                break
    assert best > 0.95, f"{name} reached training AUC {best:.3f} only"
