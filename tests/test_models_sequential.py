"""DIN, DIEN and MIAN: auxiliary loss, ablations, attention weights (explain), errors;
xDeepFM's CIN in eval blocks."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ctrbench.cards import load_model_card, resolve_model_spec
from ctrbench.errors import CardError, CtrbenchError
from ctrbench.models import build_model
from ctrbench.models import xdeepfm as xdeepfm_module
from ctrbench.models.dien import DIEN
from ctrbench.models.fast.cin import BatchedCIN
from ctrbench.models.layers import masked_softmax
from ctrbench.models.mian import MIAN, BehaviorInteraction, FieldInteraction, GlobalInteraction
from ctrbench.models.sequence import TransformerBlock
from ctrbench.schema import HIST_LEN, LABEL, random_batch, reference_schema

T = 8
SCHEMA = reference_schema(n_items=200, n_cates=12, max_len=T,
                          user_fields={"user_id": 30, "segment": 6, "tenure": 5},
                          context_fields={"weekday": 9, "hour": 6})
ABLATIONS = {  # card -> modules it removes
    "mian_wo_iuim": {"iuim"},
    "mian_wo_icim": {"icim"},
    "mian_wo_ibim": {"ibim", "transformer"},
    "mian_wo_gim": {"gim"},
    "mian_wo_iuim_icim": {"iuim", "icim"},
    "mian_no_transformer": {"transformer"},
}


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))


def card_model(name: str, schema=SCHEMA, seed: int = 0, **overrides):
    card = load_model_card(name)
    torch.manual_seed(seed)
    return build_model(card.arch, schema, {**card.params, **overrides})


def batch_with_lengths(seed: int = 0, size: int = 16, schema=SCHEMA) -> dict[str, torch.Tensor]:
    batch = random_batch(schema, size, torch.Generator().manual_seed(seed))
    lengths = batch[HIST_LEN]
    lengths[0], lengths[1], lengths[2] = 0, T, 1
    mask = torch.arange(T)[None, :] < lengths[:, None]
    for f in (*schema.behavior, *schema.neg_behavior):
        batch[f.name] = batch[f.name].clamp_min(2) * mask
    return batch


def grads(model, loss) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    values = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g)
            for (n, p), g in zip(params.items(), values)}


def bce(logits: torch.Tensor, batch) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, batch[LABEL])


# --------------------------------------------------------------------------- cards
def test_groups_and_paper_numbers():
    assert {"din", "dien"} <= set(resolve_model_spec("baselines"))
    assert {"din", "dien", "mian"} <= set(resolve_model_spec("table2"))
    assert set(resolve_model_spec("ablations")) >= {n for n in ABLATIONS if "wo" in n}
    assert {"mian_postln", "mian_no_transformer", "dien_no_aux"} <= set(
        resolve_model_spec("variants"))
    assert load_model_card("mian").paper["books"] == {"auc": 0.8209, "logloss": 0.4018}
    assert load_model_card("mian_wo_ibim").paper["electronics"]["auc"] == 0.8843
    assert load_model_card("mian_postln").paper == {"commercial": {"auc": 0.7662,
                                                                   "logloss": 0.3103}}
    assert load_model_card("dien_no_aux").params["aux_weight"] == 0.0


# --------------------------------------------------------------------------- DIEN
def test_dien_auxiliary_loss_changes_the_extractor_gradients():
    model = card_model("dien").train()
    batch = batch_with_lengths()
    torch.manual_seed(1)
    logits, aux = model.forward_train(batch)
    assert set(aux) == {"aux"} and aux["aux"] > 0
    with_aux = grads(model, bce(logits, batch) + aux["aux"])
    torch.manual_seed(1)
    logits, _ = model.forward_train(batch)
    without = grads(model, bce(logits, batch))
    for name in ("extractor.weight_ih_l0", "extractor.weight_hh_l0", "extractor.bias_hh_l0"):
        assert not torch.allclose(with_aux[name], without[name]), name
    # the aux loss reads nothing after the extractor: evolution and MLP grads are unchanged
    for name in ("evolution.hidden_proj.weight", "mlp.net.0.weight"):
        torch.testing.assert_close(with_aux[name], without[name])


def test_dien_no_aux_removes_exactly_the_auxiliary_term():
    full, no_aux = card_model("dien", seed=3).train(), card_model("dien_no_aux", seed=3).train()
    for (name, p), q in zip(full.state_dict().items(), no_aux.state_dict().values()):
        assert torch.equal(p, q), name  # same parameters: only the loss differs
    assert full.has_auxiliary_loss and not no_aux.has_auxiliary_loss
    batch = batch_with_lengths(seed=2)
    torch.manual_seed(4)
    logits_full, _ = full.forward_train(batch)
    main_only = grads(full, bce(logits_full, batch))
    torch.manual_seed(4)
    logits, aux = no_aux.forward_train(batch)
    assert aux == {}
    total = grads(no_aux, bce(logits, batch) + sum(aux.values(), torch.zeros(())))
    for name, grad in main_only.items():
        torch.testing.assert_close(total[name], grad, rtol=0, atol=0)


def test_dien_aux_weight_scales_and_eval_forward_never_computes_it(monkeypatch):
    batch = batch_with_lengths(seed=5)
    half = card_model("dien", aux_weight=0.5).eval()
    one = card_model("dien").eval()
    with torch.no_grad():
        torch.testing.assert_close(half.forward_train(batch)[1]["aux"] * 2,
                                   one.forward_train(batch)[1]["aux"])

    def refuse(*args, **kwargs):
        raise AssertionError("forward() computed the auxiliary loss")

    monkeypatch.setattr(type(one), "auxiliary_loss", refuse)
    with torch.no_grad():
        assert one(batch).shape == (16,)


def test_dien_aux_loss_matches_a_per_sample_computation():
    model = card_model("dien").eval()
    batch = batch_with_lengths(seed=6)
    parts = model._interests(batch)
    value = model.auxiliary_loss(batch, parts)
    states = parts["packing"].unpack(parts["states"])  # (B, T', I)
    bank, terms = model.bank, []
    for b in range(16):
        for t in range(int(batch[HIST_LEN][b]) - 1):  # pairs (t, t + 1), both valid
            h = states[b, t]
            pos = torch.cat([bank.block("item")[batch["hist_item_id"][b, t + 1]],
                             bank.block("cate")[batch["hist_cate_id"][b, t + 1]]])
            neg = torch.cat([bank.block("item")[batch["neg_hist_item_id"][b, t + 1]],
                             bank.block("cate")[batch["neg_hist_cate_id"][b, t + 1]]])
            terms.append(-F.logsigmoid(h @ pos) - F.logsigmoid(-(h @ neg)))
    torch.testing.assert_close(value, torch.stack(terms).mean())


def test_dien_aux_ignores_unused_negatives():
    model = card_model("dien").eval()
    batch = batch_with_lengths(seed=7)
    base = model.forward_train(batch)[1]["aux"]
    unused = dict(batch)  # position 0 has no predecessor; positions >= hist_len are padding
    valid = torch.arange(T)[None, :] < batch[HIST_LEN][:, None]
    keep = valid & (torch.arange(T)[None, :] > 0)
    for name in ("neg_hist_item_id", "neg_hist_cate_id"):
        unused[name] = torch.where(keep, batch[name], torch.full_like(batch[name], 3))
    torch.testing.assert_close(model.forward_train(unused)[1]["aux"], base)
    used = dict(batch)
    used["neg_hist_item_id"] = torch.where(keep, torch.full_like(batch["neg_hist_item_id"], 5),
                                           batch["neg_hist_item_id"])
    assert not torch.allclose(model.forward_train(used)[1]["aux"], base)


def test_dien_needs_negative_histories_for_its_aux_loss():
    schema = reference_schema(n_items=200, n_cates=12, max_len=T, neg_history=False)
    with pytest.raises(CtrbenchError, match="negative histories") as info:
        card_model("dien", schema=schema)
    assert "dien_no_aux" in str(info.value)
    model = card_model("dien_no_aux", schema=schema)
    batch = batch_with_lengths(schema=schema)
    assert model.forward_train(batch)[0].shape == (16,)
    with pytest.raises(CardError, match="aux_weight"):
        card_model("dien", aux_weight=-1.0)


def test_dien_fast_augru_matches_the_reference_loop_in_the_model():
    fast = card_model("dien").train()
    slow = card_model("dien").train()
    slow.evolution.fast = False
    batch = batch_with_lengths(seed=8)
    torch.manual_seed(0)
    g_fast = grads(fast, bce(fast(batch), batch))
    torch.manual_seed(0)
    g_slow = grads(slow, bce(slow(batch), batch))
    for name, grad in g_slow.items():
        torch.testing.assert_close(g_fast[name], grad, rtol=1e-4, atol=1e-6)


def padded_dien_forward_train(model, batch):
    """DIEN's logits and weighted auxiliary loss computed over the padded history with
    nn.GRU and the autograd AUGRU loop (attention 0 on padding carries the state; the final
    interest read at the last valid step): the reference for the packed model."""
    from ctrbench.models.layers import masked_mean
    from ctrbench.models.sequence import augru_reference, effective_length, embed_history
    from ctrbench.schema import history_mask

    schema, bank = model.schema, model.bank
    steps = effective_length(batch, schema.max_len)
    mask = history_mask(batch, steps)  # (B, T')
    behaviours = embed_history(bank, batch, schema.behavior, steps)  # (B, T', I)
    item, user, context = bank.single_fields(batch, (schema.item, schema.user, schema.context))
    candidate = item.flatten(1)
    query = model.attention(candidate)
    states = model.extractor(behaviours)[0]  # (B, T', I), padding computed too
    attention = masked_softmax((states * query.unsqueeze(1)).sum(-1), mask, dim=1)
    ev = model.evolution
    evolved = augru_reference(ev.input_proj(states), attention, ev.hidden_proj.weight,
                              ev.hidden_proj.bias, every_step=True)  # (B, T', I)
    lengths = batch[HIST_LEN]
    last = (lengths - 1).clamp(0, steps - 1)
    final = evolved[torch.arange(last.shape[0]), last] * (lengths > 0)[:, None]
    inputs = [user.flatten(1), candidate, final, masked_mean(behaviours, mask),
              context.flatten(1)]
    logits = model.mlp(torch.cat(inputs, dim=-1)).squeeze(-1)
    negatives = embed_history(bank, batch, schema.neg_behavior, steps)
    pairs = mask[:, 1:].to(states.dtype)  # (B, T'-1): t + 1 valid
    current = states[:, :-1]
    pair_loss = (F.softplus(-(current * behaviours[:, 1:]).sum(-1))
                 + F.softplus((current * negatives[:, 1:]).sum(-1)))
    return logits, model.aux_weight * (pair_loss * pairs).sum() / pairs.sum().clamp_min(1.0)


def test_dien_packed_training_step_equals_one_over_the_padded_history():
    """Logits, auxiliary loss and every gradient of DIEN (recurrences, pooling and auxiliary
    loss packed by step) equal those of the padded reference."""
    model = card_model("dien", seed=2).train()
    batch = batch_with_lengths(seed=10, size=24)
    results = []
    for run in (model.forward_train, lambda b: padded_dien_forward_train(model, b)):
        torch.manual_seed(0)  # the same dropout masks
        logits, extra = run(batch)
        aux = extra["aux"] if isinstance(extra, dict) else extra
        results.append((logits, aux, grads(model, bce(logits, batch) + aux)))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    for name, grad in results[1][2].items():
        torch.testing.assert_close(dense(results[0][2][name]), dense(grad), rtol=1e-4,
                                   atol=1e-6)


def dense(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_dense() if grad.is_sparse else grad


# --------------------------------------------------------------------------- DIN
def test_din_attention_is_unnormalised_by_default_and_softmax_with_the_flag():
    batch = batch_with_lengths(seed=9)
    valid = torch.arange(T)[None, :] < batch[HIST_LEN][:, None]
    raw = card_model("din").eval().explain(batch)["attention"]
    soft = card_model("din", attention_softmax=True).eval().explain(batch)["attention"]
    assert raw.columns == soft.columns == ()  # history steps, not named columns
    raw, soft = raw.values, soft.values
    for weights in (raw, soft):
        assert weights.shape == (16, T)
        assert torch.equal(weights[~valid], torch.zeros(int((~valid).sum())))
    nonempty = batch[HIST_LEN] > 0
    torch.testing.assert_close(soft.sum(1)[nonempty], torch.ones(int(nonempty.sum())))
    assert not torch.allclose(raw.sum(1)[nonempty], torch.ones(int(nonempty.sum())))
    # same seed, same parameters: the flag only normalises the same raw scores
    torch.testing.assert_close(soft, masked_softmax(raw, valid, dim=1))
    long_rows = batch[HIST_LEN] >= 4  # unnormalised: more history, more total weight
    assert raw.sum(1)[long_rows].mean() > raw.sum(1)[nonempty & ~long_rows].mean()


# --------------------------------------------------------------------------- MIAN
def submodule_names(model) -> set[str]:
    return {name.split(".")[0] for name, _ in model.named_parameters()}


def test_full_mian_has_every_module_and_part():
    model = card_model("mian")
    assert {"transformer", "ibim", "iuim", "icim", "gim", "mlp", "bank"} == submodule_names(model)
    assert model.gim_parts == MIAN.GIM_PARTS
    assert len(model.gim.projections) == 7
    assert model.transformer.pre_ln
    assert not card_model("mian_postln").transformer.pre_ln


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_removes_its_module(name, monkeypatch):
    removed = ABLATIONS[name]
    model = card_model(name).eval()
    full_keys = set(card_model("mian").state_dict())
    keys = set(model.state_dict())
    for module in removed:
        assert getattr(model, module) is None
        assert not any(k.startswith(module + ".") for k in keys), module
    kept = {k for k in full_keys if k.split(".")[0] not in removed | {"gim", "mlp"}}
    assert kept <= keys  # nothing else was removed
    removed_parts = removed & {"ibim", "iuim", "icim"}
    assert set(model.gim_parts) == set(MIAN.GIM_PARTS) - removed_parts

    # count calls of every interaction module while scoring a batch
    calls: dict[str, list[int]] = {"field": [], "behavior": [], "global": [],
                                   "transformer": []}
    for cls, key, method in ((FieldInteraction, "field", "forward"),
                             (BehaviorInteraction, "behavior", "packed"),
                             (GlobalInteraction, "global", "forward"),
                             (TransformerBlock, "transformer", "forward_steps")):
        original = getattr(cls, method)

        def spy(self, *args, _original=original, _key=key):
            out = _original(self, *args)
            calls[_key].append(len(args[0]))
            return out

        monkeypatch.setattr(cls, method, spy)
    batch = batch_with_lengths(seed=10)
    with torch.no_grad():
        model(batch)
    assert len(calls["field"]) == 2 - len(removed & {"iuim", "icim"})
    assert len(calls["behavior"]) == (0 if "ibim" in removed else 1)
    # the transformer block runs once, on the packed valid steps (TransformerBlock.forward_steps)
    assert len(calls["transformer"]) == (0 if removed & {"ibim", "transformer"} else 1)
    assert calls["global"] == ([] if "gim" in removed else [len(model.gim_parts)])


def test_without_gim_the_parts_are_concatenated_into_the_mlp():
    model = card_model("mian_wo_gim").eval()
    batch = batch_with_lengths(seed=11)
    seen = []
    model.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(batch)
        parts, _ = model._parts(batch)
    torch.testing.assert_close(seen[0], torch.cat(parts, dim=-1))
    widths = [p.shape[1] for p in parts]  # item 2D, context K D, behavior 2D, user J D, ...
    assert widths == [32, 2 * 16, 32, 3 * 16, 64, 48, 48]


def test_without_ibim_the_history_only_enters_through_its_mean():
    model = card_model("mian_wo_ibim").eval()
    batch = batch_with_lengths(seed=12)
    shuffled = dict(batch)
    perm = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    full_rows = batch[HIST_LEN] == T  # reorder the valid steps of full histories
    for f in SCHEMA.behavior:
        shuffled[f.name] = torch.where(full_rows[:, None], batch[f.name][:, perm],
                                       batch[f.name])
    with torch.no_grad():
        torch.testing.assert_close(model(shuffled), model(batch))


def test_no_transformer_feeds_raw_behaviours_to_ibim():
    model = card_model("mian_no_transformer").eval()
    batch = batch_with_lengths(seed=13)
    seen = []
    packed = model.ibim.packed
    model.ibim.packed = lambda *args: seen.append(args) or packed(*args)  # (item, states, ...)
    with torch.no_grad():
        model(batch)
    raw = torch.cat([model.bank(batch, "hist_item_id"), model.bank(batch, "hist_cate_id")], -1)
    mask = seen[0][2].mask  # the packed valid steps of (B, T')
    torch.testing.assert_close(seen[0][1], raw[:, : mask.shape[1]][mask])


def test_mian_explain_weights():
    model = card_model("mian").eval()
    batch = batch_with_lengths(seed=14)
    with torch.no_grad():
        explained = model.explain(batch)
    assert set(explained) == {"gim", "ibim", "iuim", "icim"}
    # named columns: GIM's parts, IUIM's user fields, ICIM's context fields; IBIM's are steps
    assert explained["gim"].columns == MIAN.GIM_PARTS
    assert explained["iuim"].columns == tuple(f.name for f in SCHEMA.user)
    assert explained["icim"].columns == tuple(f.name for f in SCHEMA.context)
    assert explained["ibim"].columns == ()
    weights = {name: w.values for name, w in explained.items()}
    gim, ibim = weights["gim"], weights["ibim"]
    assert gim.shape == (16, 7) and (gim >= 0).all()
    torch.testing.assert_close(gim.sum(1), torch.ones(16))
    assert ibim.shape == (16, T)
    valid = torch.arange(T)[None, :] < batch[HIST_LEN][:, None]
    assert torch.equal(ibim[~valid], torch.zeros(int((~valid).sum())))
    nonempty = batch[HIST_LEN] > 0
    torch.testing.assert_close(ibim.sum(1)[nonempty], torch.ones(int(nonempty.sum())))
    assert weights["iuim"].shape == (16, 3) and weights["icim"].shape == (16, 2)
    assert set(card_model("mian_wo_gim").explain(batch)) == {"ibim", "iuim", "icim"}
    ablated = card_model("mian_wo_ibim").explain(batch)["gim"]
    # an ablation names only its own parts; the class attribute still lists all seven
    assert ablated.values.shape == (16, 6)
    assert ablated.columns == ("item", "context", "behavior", "user", "iuim", "icim")
    assert MIAN.GIM_PARTS == ("item", "context", "behavior", "user", "ibim", "iuim", "icim")


def test_mian_bad_parameters_are_card_errors():
    with pytest.raises(CardError, match="transformer"):
        card_model("mian", transformer="postln")
    with pytest.raises(CardError, match="divisible"):
        card_model("mian", heads=5)
    no_users = reference_schema(n_items=50, n_cates=5, max_len=T, user_fields={"a": 3},
                                context_fields={"b": 3})
    no_users = type(no_users)(tuple(f for f in no_users.fields if f.group != "user"), T)
    with pytest.raises(CardError, match="use_iuim"):
        card_model("mian", schema=no_users)
    model = card_model("mian_wo_iuim", schema=no_users)  # works without user fields
    assert "user" not in model.gim_parts


@pytest.mark.parametrize(("name", "bad", "message"), [
    ("din", {"attention_activation": "gelu"}, "attention_activation"),
    ("din", {"attention_softmax": "yes"}, "attention_softmax"),
    ("din", {"attention_hidden": []}, "attention_hidden"),
    ("dien", {"activation": "tanh"}, "activation"),
    ("dien", {"aux_weight": "one"}, "aux_weight"),
    ("mian", {"use_gim": "false"}, "use_gim"),
    ("mian", {"dropout": 1.0}, "dropout"),
    ("mian", {"gim_dim": 0}, "gim_dim"),
])
def test_bad_sequential_params_are_card_errors(name, bad, message):
    with pytest.raises(CardError, match=message):
        card_model(name, **bad)


# --------------------------------------------------------------------------- xDeepFM eval blocks
def test_xdeepfm_eval_in_cin_chunks_equals_one_pass(monkeypatch):
    model = card_model("xdeepfm").eval()
    assert isinstance(model.cin, BatchedCIN)
    batch = batch_with_lengths(seed=3, size=10)
    with torch.no_grad():
        whole = model(batch)
        monkeypatch.setattr(xdeepfm_module, "CIN_EVAL_ROWS", 3)  # 4 blocks: 3 + 3 + 3 + 1
        chunked = model(batch)
    torch.testing.assert_close(chunked, whole)
    assert model(batch).requires_grad  # with autograd: one pass, differentiable


def test_xdeepfm_trains_its_cin_in_row_blocks_on_the_cpu(monkeypatch):
    """Training on the CPU runs the CIN on blocks of ``CIN_TRAIN_ROWS`` rows (large batches'
    outer products were mapped afresh every step): same logits, same gradients up to rounding
    as one pass."""
    torch.manual_seed(0)
    model = card_model("xdeepfm").train()
    model.deep.eval()  # no dropout: both passes see the same function
    batch = batch_with_lengths(seed=6, size=10)
    rows_seen: list[int] = []
    model.cin.register_forward_pre_hook(lambda module, args: rows_seen.append(args[0].shape[0]))

    def logits_and_grads(block_rows: int):
        monkeypatch.setattr(xdeepfm_module, "CIN_TRAIN_ROWS", block_rows)
        model.zero_grad()
        logits = model(batch)
        logits.square().sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                 if p.grad is not None and n.startswith("cin")}

    whole, whole_grads = logits_and_grads(10)
    assert rows_seen == [10]
    rows_seen.clear()
    blocks, block_grads = logits_and_grads(4)
    assert rows_seen == [4, 4, 2]
    torch.testing.assert_close(blocks, whole)
    assert whole_grads.keys() == block_grads.keys() and whole_grads
    for name, grad in whole_grads.items():
        torch.testing.assert_close(block_grads[name], grad, msg=name)


def test_mian_eval_in_row_blocks_equals_one_pass(monkeypatch):
    model = card_model("mian").eval()
    batch = batch_with_lengths(seed=4, size=10)
    with torch.no_grad():
        whole = model(batch)
        monkeypatch.setattr(MIAN, "EVAL_ROWS", 3)  # blocks of 3, 3, 3, 1 rows
        blocks = model(batch)
    torch.testing.assert_close(blocks, whole)
    model.train()
    torch.manual_seed(0)
    train_logits = model(batch)
    assert train_logits.shape == (10,) and train_logits.requires_grad


def test_dien_eval_in_row_blocks_equals_one_pass(monkeypatch):
    model = card_model("dien").eval()
    batch = batch_with_lengths(seed=5, size=10)
    with torch.no_grad():
        whole = model(batch)
        monkeypatch.setattr(DIEN, "EVAL_ROWS", 4)  # blocks of 4, 4, 2 rows
        blocks = model(batch)
    torch.testing.assert_close(blocks, whole)


def test_dien_packed_recurrences_equal_the_padded_ones():
    """DIEN's recurrences run packed by step; at valid steps they equal nn.GRU and the
    reference AUGRU loop over the padded history (attention 0 on padding), and the final
    interest is the AUGRU state at the last valid step (0 for an empty history)."""
    from ctrbench.models.sequence import augru_reference

    model = card_model("dien", seed=7).train()
    batch = batch_with_lengths(seed=8)
    parts = model._interests(batch)
    packing = parts["packing"]
    behaviours = packing.unpack(parts["behaviours"])  # (B, T', I), 0 on padding
    mask = torch.arange(behaviours.shape[1])[None] < batch[HIST_LEN][:, None]
    lengths = batch[HIST_LEN]
    states = model.extractor(behaviours)[0] * mask[..., None]  # (B, T', I)
    torch.testing.assert_close(packing.unpack(parts["states"]), states)
    torch.testing.assert_close(packing.mean(parts["behaviours"]),
                               behaviours.sum(1) / lengths.clamp_min(1)[:, None])
    evolution = model.evolution
    gx = evolution.input_proj(states)
    evolved = augru_reference(gx, parts["attention"], evolution.hidden_proj.weight,
                              evolution.hidden_proj.bias, every_step=True)
    last = (lengths - 1).clamp_min(0)
    want = evolved[torch.arange(16), last] * (lengths > 0)[:, None]
    torch.testing.assert_close(parts["final"], want)
    assert torch.equal(parts["final"][0], torch.zeros_like(want[0]))  # the empty history
