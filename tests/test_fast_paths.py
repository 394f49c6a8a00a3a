"""Each CPU fast path (``ctrbench/models/fast/``) against its plain reference.

- the fused embedding bank against one ``nn.Embedding`` per vocabulary (values, gradients);
- the fused Dice function against :func:`ctrbench.models.layers.dice` (values, gradients);
- ``UniformDropout`` against ``nn.Dropout`` (same distribution, the designed random stream);
- ``BatchedCIN`` against :class:`ctrbench.models.layers.CIN` (values, gradients);
- evaluation in row blocks against one pass.

The GRU / AUGRU scans (padded and packed) are in ``test_fast_scans.py``.
"""

from __future__ import annotations

from itertools import accumulate

import pytest
import torch
from test_layers import tiny_batch, tiny_schema
from torch import nn

from ctrbench.models.fast import native_outer
from ctrbench.models.fast.cin import BatchedCIN
from ctrbench.models.fast.dropout import UniformDropout
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.fast.row_blocks import in_row_blocks
from ctrbench.models.layers import CIN, Dice


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))


# --------------------------------------------------------------------------- embedding bank
def per_vocabulary_tables(bank: EmbeddingBank, sparse: bool) -> dict[str, nn.Embedding]:
    """The plain reference: one ``nn.Embedding`` per vocabulary holding the bank's block."""
    tables = {}
    for vocab, size in bank.vocab_sizes.items():
        table = nn.Embedding(size, bank.dim, padding_idx=0, sparse=sparse)
        with torch.no_grad():
            table.weight.copy_(bank.block(vocab))
        tables[vocab] = table
    return tables


def dense(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_dense() if grad.is_sparse else grad


@pytest.mark.parametrize("direct_use", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_embedding_bank_equals_one_nn_embedding_per_vocabulary(sparse, direct_use):
    """Every kind of lookup (single fields in one lookup, stacked histories, one field, single
    fields and histories in one), with or without a direct use of the weight (a dense gradient
    from elsewhere), two backward passes accumulated: the bank's values and, block by block,
    its gradient (dense or sparse as the reference's) equal those of one nn.Embedding per
    vocabulary."""
    schema, batch = tiny_schema(), tiny_batch()
    bank = EmbeddingBank(schema, dim=3, sparse=sparse)
    tables = per_vocabulary_tables(bank, sparse)
    fields = {f.name: f for f in schema.fields}
    gen = torch.Generator().manual_seed(5)

    def plain(name: str) -> torch.Tensor:
        return tables[fields[name].vocab](batch[name])

    singles = [[fields["item_id"], fields["cate_id"]], [fields["fav_cate"], fields["weekday"]]]
    history = ["hist_item_id", "hist_cate_id"]
    for _ in range(2):  # the second backward accumulates into the first one's gradient
        got = [*bank.single_fields(batch, singles),
               bank.lookup_stacked([(fields[n].vocab, batch[n]) for n in history]),
               bank(batch, "neg_hist_item_id"),
               *bank.fields_and_history(batch, singles[1], [fields[n] for n in history])]
        want = [torch.stack([plain(f.name) for f in group], dim=1) for group in singles]
        want += [torch.stack([plain(n) for n in history], dim=-2), plain("neg_hist_item_id")]
        want += [want[1], want[2]]  # fields_and_history: the same two lookups in one
        loss, ref_loss = torch.zeros(()), torch.zeros(())
        if direct_use:
            loss = 0.5 * bank.weight.square().sum()
            ref_loss = sum(0.5 * t.weight.square().sum() for t in tables.values())
        for a, b in zip(got, want):
            assert torch.equal(a, b)
            weights = torch.randn(a.shape, generator=gen)
            loss, ref_loss = loss + (a * weights).sum(), ref_loss + (b * weights).sum()
        loss.backward()
        ref_loss.backward()
    grad = dense(bank.weight.grad)
    for vocab, table in tables.items():
        torch.testing.assert_close(grad[bank.vocab_rows(vocab)], dense(table.weight.grad))
    assert bank.weight.grad.is_sparse == tables["item"].weight.grad.is_sparse


def test_linear_term_is_the_sum_of_pooled_field_weights_values_and_gradients():
    """LR's one weighted lookup equals embedding every field, pooling each history by its
    masked mean and summing (a full, a partial and an empty history)."""
    from ctrbench.models.inputs import LinearTerm, embed_pooled_fields

    schema = tiny_schema()
    batch = tiny_batch()
    batch["hist_item_id"] = torch.tensor([[3, 4, 0], [0, 0, 0]])
    batch = {k: torch.cat([v, v[:1]]) for k, v in batch.items()}  # a third row: full history
    batch["hist_item_id"][2], batch["hist_cate_id"][2] = torch.tensor([1, 2, 5]), torch.tensor(
        [1, 1, 3])
    batch["hist_len"][2] = 3
    torch.manual_seed(0)
    term = LinearTerm(schema, init_std=0.5)
    with torch.no_grad():
        term.bias.fill_(0.3)
    got = term(batch)
    got.pow(2).sum().backward()
    got_grad = term.bank.weight.grad.clone()
    term.bank.weight.grad = None
    want = embed_pooled_fields(term.bank, schema, batch).sum(dim=(1, 2)) + term.bias
    want.pow(2).sum().backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(dense(got_grad), dense(term.bank.weight.grad))
    assert not torch.equal(got[0], got[1])  # the histories matter


def test_embedding_bank_padding_row_zero_and_shared_tables():
    schema = tiny_schema()
    bank = EmbeddingBank(schema, dim=4)
    assert set(bank.vocab_sizes) == {"item", "cate", "weekday"}  # 8 fields, 3 tables
    for vocab in bank.vocab_sizes:
        assert torch.equal(bank.block(vocab)[0], torch.zeros(4))
    batch = tiny_batch()
    cand = bank(batch, "item_id")  # (2, 4)
    hist = bank(batch, "hist_item_id")  # (2, 3, 4)
    torch.testing.assert_close(hist[0, 0], bank.block("item")[3])
    assert torch.equal(hist[1], torch.zeros(3, 4))  # padding embeds to zero
    # shared table: fav_cate id 3 == cate_id 3 (sample 0's candidate category)
    assert torch.equal(bank(batch, "fav_cate")[1], bank(batch, "cate_id")[0])
    (cand.sum() + hist.sum()).backward()
    grad = bank.weight.grad  # one fused table: one gradient
    assert not grad.is_sparse  # sparse=False: a dense gradient, as nn.Embedding gives
    item = grad[bank.vocab_rows("item")]  # (6, 4)
    assert torch.equal(grad[0], torch.zeros(4))  # no grad to padding
    # item 3 is looked up once in the history and item 2 / 5 as candidates: grad = count
    torch.testing.assert_close(item[:, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0]))


def test_embedding_bank_fuses_vocabularies_into_one_table():
    schema = tiny_schema()
    bank = EmbeddingBank(schema, dim=2)
    sizes = schema.vocab_sizes
    assert bank.weight.shape == (sum(sizes.values()), 2)
    assert [m for m in bank.modules() if isinstance(m, torch.nn.Embedding)] == [bank.embedding]
    blocks = [bank.vocab_rows(v) for v in sizes]
    assert [b.start for b in blocks] == [0, *accumulate(list(sizes.values())[:-1])]
    for vocab in sizes:
        assert torch.equal(bank.block(vocab)[0], torch.zeros(2))  # every block's row 0
        assert bank.vocab_sizes[vocab] == sizes[vocab]
    with torch.no_grad():  # the per-vocabulary view writes through to the fused table
        bank.block("cate")[2] = torch.tensor([7.0, 8.0])
    assert torch.equal(bank.weight[bank.vocab_rows("cate").start + 2], torch.tensor([7.0, 8.0]))
    ids = torch.tensor([[2, 0], [0, 1]])
    out = bank.lookup("cate", ids)  # (2, 2, 2)
    assert torch.equal(out[0, 0], torch.tensor([7.0, 8.0]))
    assert torch.equal(out[0, 1], torch.zeros(2)) and torch.equal(out[1, 0], torch.zeros(2))
    # one lookup for several same-shaped fields == the concatenation of separate lookups
    batch = tiny_batch()
    specs = [f for f in schema.fields if f.name in ("hist_item_id", "hist_cate_id")]
    fused = bank.lookup_stacked([(f.vocab, batch[f.name]) for f in specs])  # (2, 3, 2, 4)
    one_by_one = [bank(batch, f.name) for f in specs]  # one lookup per field
    torch.testing.assert_close(fused, torch.stack(one_by_one, dim=-2), rtol=0, atol=0)
    singles = [[f for f in schema.fields if f.name in names]
               for names in (("item_id", "cate_id"), (), ("fav_cate", "weekday"))]
    groups = bank.single_fields(batch, singles)  # one lookup: (2, 2, 4), (2, 0, 4), (2, 2, 4)
    assert [g.shape[1] for g in groups] == [2, 0, 2]
    for group, specs_of_group in zip(groups, singles):
        for k, spec in enumerate(specs_of_group):
            assert torch.equal(group[:, k], bank(batch, spec.name))
    fused.sum().backward()
    grad = bank.weight.grad
    padding_rows = [bank.vocab_rows(v).start for v in sizes]
    assert torch.equal(grad[padding_rows], torch.zeros(len(padding_rows), 2))


def test_embedding_bank_sparse_gradients():
    bank = EmbeddingBank(tiny_schema(), dim=4, sparse=True)
    batch = tiny_batch()
    (bank(batch, "item_id").sum() + bank(batch, "hist_cate_id").sum()).backward()
    grad = bank.weight.grad
    assert grad.is_sparse
    rows = set(grad.coalesce().indices()[0].tolist())
    item, cate = bank.vocab_rows("item").start, bank.vocab_rows("cate").start
    # items 2, 5; history cates 2, 3 (sample 0); padding (row 0) never in the gradient
    assert rows == {item + 2, item + 5, cate + 2, cate + 3}


def test_embedding_bank_copy_keeps_its_gradient_hooks():
    """The gradient is built by hooks on the fused weight; a deep copy must hook its own."""
    import copy

    bank = EmbeddingBank(tiny_schema(), dim=2)
    twin = copy.deepcopy(bank)
    ids = torch.tensor([[1, 2, 0], [3, 0, 0]])
    twin.lookup("cate", ids).sum().backward()
    bank.lookup("cate", ids).sum().backward()
    assert not twin.weight.grad.is_sparse
    torch.testing.assert_close(twin.weight.grad, bank.weight.grad, rtol=0, atol=0)
    cate = bank.vocab_rows("cate").start
    assert twin.weight.grad[[cate + 1, cate + 2, cate + 3]].eq(1.0).all()
    assert twin.weight.grad.sum().item() == 3 * 2


def test_unique_rows_matches_torch_unique():
    from ctrbench.models.fast.embedding_bank import unique_rows

    gen = torch.Generator().manual_seed(3)
    scratch = torch.full((50,), 7, dtype=torch.long)  # stale contents must not matter
    for n in (1, 5, 200):
        ids = torch.randint(0, 50, (n,), generator=gen)
        rows, inverse = unique_rows(ids, scratch)
        assert torch.equal(rows, torch.unique(ids))
        assert torch.equal(rows[inverse], ids)


def test_fused_table_gradient_is_coalesced_and_exact():
    """The bank's one sparse gradient: sorted unique rows, duplicates summed, no padding row."""
    bank = EmbeddingBank(tiny_schema(), dim=3, sparse=True)
    ids = torch.tensor([[2, 2, 0], [4, 2, 1]])
    weights = torch.randn(2, 3, 3)
    (bank.lookup("item", ids) * weights).sum().backward()
    grad = bank.weight.grad
    assert grad.is_sparse and grad.is_coalesced()
    dense = torch.zeros_like(bank.weight)
    global_ids = bank.global_ids("item", ids)
    for position, row in enumerate(global_ids.reshape(-1).tolist()):
        if row != 0:
            dense[row] += weights.reshape(-1, 3)[position]
    torch.testing.assert_close(grad.to_dense(), dense)
    assert 0 not in grad.indices()[0].tolist()


def test_dense_table_gradient_zeroing_touches_written_rows_and_is_exact():
    """zero_dense_grad clears the rows earlier sparse gradients wrote (or everything after a
    dense use of the weight): the next step's gradient equals a fresh one."""
    bank = EmbeddingBank(tiny_schema(), dim=2)  # dense table
    table = bank.embedding
    first, second = torch.tensor([[2, 3, 0]]), torch.tensor([[4, 2, 1]])
    for dense_use in (False, True):
        table.zero_dense_grad()
        loss = bank.lookup("item", first).pow(2).sum()
        if dense_use:  # the weight also used directly: every row may be non-zero
            loss = loss + bank.weight.sum()
        loss.backward()
        table.zero_dense_grad()
        assert torch.equal(bank.weight.grad, torch.zeros_like(bank.weight))
        (bank.lookup("item", second) * 3).sum().backward()
        expected = torch.zeros_like(bank.weight)
        for row in bank.global_ids("item", second).reshape(-1).tolist():
            if row != 0:
                expected[row] += 3
        torch.testing.assert_close(bank.weight.grad, expected)



def _touched_row_step(dim: int, route: str, scaled: bool, l2: float = 0.25
                      ) -> tuple[EmbeddingBank, torch.Tensor]:
    """One backward pass through two lookups (repeated ids, padding) of a dense bank with the
    touched-row L2 of FusedRowL2; ``route``: ``in_place`` (after zero_dense_grad, as the
    trainer runs it) or ``sparse`` (no zeroed gradient: the coalesced sparse route)."""
    from ctrbench.engine.optim import FusedRowL2

    torch.manual_seed(0)
    bank = EmbeddingBank(tiny_schema(), dim=dim)
    scales = ({id(bank.weight): torch.rand(bank.weight.shape[0]) + 0.5} if scaled else None)
    hook = FusedRowL2([bank.embedding], l2, scales)
    if route == "in_place":
        bank.embedding.zero_dense_grad()
    gen = torch.Generator().manual_seed(1)
    history = bank.lookup("item", torch.tensor([[2, 2, 0], [4, 2, 1]]))  # (2, 3, D)
    single = bank.lookup_stacked([("item", torch.tensor([4, 0])),
                                  ("cate", torch.tensor([1, 1]))])  # (2, 2, D)
    ((history * torch.randn(history.shape, generator=gen)).sum()
     + (single * torch.randn(single.shape, generator=gen)).sum()).backward()
    hook.remove()
    return bank, dense(bank.weight.grad)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("dim", [1, 3])
def test_in_place_dense_gradient_equals_the_sparse_route_and_the_formula(dim, scaled):
    """A zeroed dense table (the trainer's adam) accumulates its lookups and touched-row L2
    in place: the same gradient as the coalesced sparse route and as the formula (lookup
    gradients summed per row, + 2 l2 w_r (x the row's scale) once per distinct touched row,
    nothing on the padding row); 1-wide (LR, flat scatter) and wider tables."""
    bank, in_place = _touched_row_step(dim, "in_place", scaled)
    _, sparse = _touched_row_step(dim, "sparse", scaled)
    torch.testing.assert_close(in_place, sparse)
    assert torch.equal(in_place[0], torch.zeros(dim))
    item, cate = bank.vocab_rows("item").start, bank.vocab_rows("cate").start
    touched = torch.tensor([item + 2, item + 4, item + 1, cate + 1])
    untouched = torch.ones(bank.weight.shape[0], dtype=torch.bool)
    untouched[touched] = False
    untouched[0] = False
    assert torch.equal(in_place[untouched], torch.zeros(int(untouched.sum()), dim))
    # no data gradient at all: exactly the decay of each distinct touched row, once
    _, with_data = _touched_row_step(dim, "in_place", scaled, l2=0.0)
    decay = in_place - with_data
    weight = bank.weight.detach()
    scale = torch.ones(weight.shape[0])
    if scaled:
        torch.manual_seed(0)
        EmbeddingBank(tiny_schema(), dim=dim)  # the same draws as in _touched_row_step
        scale = torch.rand(weight.shape[0]) + 0.5
    expected = 2 * 0.25 * weight[touched] * scale[touched].unsqueeze(1)
    torch.testing.assert_close(decay[touched], expected)


def test_in_place_route_runs_once_per_zeroing_and_leaves_autograd_grad_exact():
    """The in-place route is armed by zero_dense_grad for ONE backward pass: a second pass
    without zeroing accumulates through the sparse route (sum of both), and
    ``torch.autograd.grad`` afterwards still returns the true gradient."""
    bank = EmbeddingBank(tiny_schema(), dim=2)
    ids = torch.tensor([[2, 3, 2]])
    bank.embedding.zero_dense_grad()
    (bank.lookup("item", ids) * 2).sum().backward()
    (bank.lookup("item", ids) * 3).sum().backward()  # not re-armed: accumulates
    row = bank.vocab_rows("item").start
    torch.testing.assert_close(bank.weight.grad[row + 2], torch.full((2,), 10.0))
    torch.testing.assert_close(bank.weight.grad[row + 3], torch.full((2,), 5.0))
    (grad,) = torch.autograd.grad((bank.lookup("item", ids) * 7).sum(), bank.weight)
    torch.testing.assert_close(dense(grad)[row + 2], torch.full((2,), 14.0))


def test_trainer_step_takes_the_in_place_route(monkeypatch):
    """TrainStep under adam zeroes the fused table and adds its gradient in place (not through
    the sparse route): the route is what the trainer runs, not only what the tests call."""
    from ctrbench.cards import load_model_card
    from ctrbench.engine.train import TrainStep, build_for_training
    from ctrbench.models.fast.embedding_bank import FusedEmbedding

    calls = []
    original = FusedEmbedding._add_in_place
    monkeypatch.setattr(FusedEmbedding, "_add_in_place",
                        lambda self, *a: calls.append(1) or original(self, *a))
    schema, batch = tiny_schema(), tiny_batch()
    card = load_model_card("lr")
    assert card.train.optimizer == "adam"
    model = build_for_training(card, schema)
    step = TrainStep(model, card.train, torch.device("cpu"))
    for _ in range(2):
        step(batch, torch.tensor([1.0, 0.0]))
    step.close()
    assert len(calls) == 2


# --------------------------------------------------------------------------- Dice
@pytest.mark.parametrize("batch_stats", [True, False])
def test_dice_hand_written_backward_matches_numerical_gradients(batch_stats):
    """gradcheck (float64) of the fused Dice function, with batch statistics (gradient flows
    through mean and variance, as in batch norm) and with fixed running statistics."""
    from ctrbench.models.fast.dice import DiceFunction

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    mean = None if batch_stats else torch.randn(5, generator=gen, dtype=torch.float64)
    var = None if batch_stats else torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda x, a: DiceFunction.apply(x, a, mean, var, 1e-8)[0], (x, alpha))


@pytest.mark.parametrize("training", [True, False])
def test_fused_dice_equals_the_plain_formula(training):
    """Dice on [B, T, H], fused (the default) and plain (layers.dice): same values, same
    gradients of the input and of alpha, same running statistics after a training step."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=gen) * 2 + 0.5
    fused, plain = Dice(3), Dice(3, fused=False)
    for module in (fused, plain):
        with torch.no_grad():
            module.alpha.copy_(torch.tensor([0.25, -0.5, 1.5]))
            module.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
            module.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
        module.train(training)
    weights = torch.randn(6, 4, 3, generator=gen)
    results = []
    for module in (fused, plain):
        inputs = x.clone().requires_grad_(True)
        out = module(inputs)
        results.append((out, *torch.autograd.grad((out * weights).sum(), (inputs, module.alpha))))
    (out, dx, dalpha), (ref, ref_dx, ref_dalpha) = results
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dalpha, ref_dalpha, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.running_mean, plain.running_mean)
    torch.testing.assert_close(fused.running_var, plain.running_var)
    if training:  # the batch's statistics moved the running ones
        assert not torch.equal(fused.running_mean, torch.tensor([0.3, -0.2, 0.1]))


# --------------------------------------------------------------------------- dropout
def test_uniform_dropout_behaves_like_dropout():
    x = torch.ones(200, 50)
    drop = UniformDropout(0.2)
    torch.manual_seed(0)
    out = drop(x)
    kept = out != 0
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1.25))
    assert abs(kept.float().mean().item() - 0.8) < 0.02
    torch.manual_seed(0)
    assert torch.equal(drop(x), out)  # seeded: deterministic
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(UniformDropout(0.0)(x), x)
    assert torch.equal(UniformDropout(1.0)(x), torch.zeros_like(x))


def test_uniform_dropout_mask_is_rand_and_values_and_gradient_are_dropouts(monkeypatch):
    """The designed stream without the native kernel: the keep mask is ``rand >= p`` drawn from
    the global generator; kept elements are scaled by 1 / (1 - p) and the gradient is the same
    mask times the scale, as nn.Dropout's; the keep rate of both is 1 - p; eval, p = 0 and p = 1
    behave as nn.Dropout. (The native mask: tests/test_fast_native_dropout.py.)"""
    monkeypatch.setattr(UniformDropout, "NATIVE", False)
    p = 0.3
    x = torch.randn(400, 250, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    drop, reference = UniformDropout(p), nn.Dropout(p)
    torch.manual_seed(4)
    out = drop(x)
    torch.manual_seed(4)
    keep = torch.rand(x.shape) >= p
    torch.testing.assert_close(out, torch.where(keep, x / (1 - p), 0.0), rtol=1e-6, atol=0)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    (dx,) = torch.autograd.grad((out * upstream).sum(), x)
    torch.testing.assert_close(dx, torch.where(keep, upstream / (1 - p), 0.0), rtol=1e-6, atol=0)
    ref = reference(x)  # its own mask, from bernoulli_
    ref_keep = ref != 0
    torch.testing.assert_close(ref[ref_keep], x[ref_keep] / (1 - p), rtol=1e-6, atol=0)
    sd = (p * (1 - p) / x.numel()) ** 0.5  # of a keep rate: 4 sd = 0.004 here
    for kept in (keep, ref_keep):
        assert abs(kept.float().mean().item() - (1 - p)) < 4 * sd
    y = x.detach()
    for q in (0.0, 1.0, p):
        assert torch.equal(UniformDropout(q).eval()(y), nn.Dropout(q).eval()(y))
    assert torch.equal(UniformDropout(0.0)(y), nn.Dropout(0.0)(y))
    assert torch.equal(UniformDropout(1.0)(y), nn.Dropout(1.0)(y))


# --------------------------------------------------------------------------- CIN
def test_batched_cin_equals_the_reference_cin_values_and_gradients():
    torch.manual_seed(0)
    reference = CIN(5, [6, 4], split_half=True, activation="relu")
    batched = BatchedCIN(5, [6, 4], split_half=True, activation="relu")
    batched.load_state_dict(reference.state_dict())  # same parameters, same names
    x = torch.randn(7, 5, 3, requires_grad=True)
    out_ref, out = reference(x), batched(x)
    torch.testing.assert_close(out, out_ref)
    weight = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * weight).sum(), [x, *batched.parameters()]),
                    torch.autograd.grad((out_ref * weight).sum(), [x, *reference.parameters()])):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="fields"):
        batched(torch.randn(2, 4, 3))


@pytest.mark.parametrize("outer", ["native", "torch"])
def test_batched_cin_at_the_cards_size_equals_the_reference_cin(outer, monkeypatch):
    """The card's CIN (13 fields, (256, 128), split-half) on 1024 embedding columns: its
    products are above onednn_linear.MIN_MACS, so they run in oneDNN where it is available;
    the first layer on its 91 distinct pairs; the second layer's outer-product backward by the
    native kernel or by torch's batched products."""
    if outer == "torch":
        monkeypatch.setattr(native_outer, "usable", lambda *_: False)
    torch.manual_seed(1)
    reference = CIN(13, [256, 128], split_half=True, activation="relu")
    batched = BatchedCIN(13, [256, 128], split_half=True, activation="relu")
    batched.load_state_dict(reference.state_dict())
    x = torch.randn(64, 13, 16, requires_grad=True)  # N = 64 * 16 = 1024 rows
    out_ref, out = reference(x), batched(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-4)
    weight = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * weight).sum(), [x, *batched.parameters()]),
                    torch.autograd.grad((out_ref * weight).sum(), [x, *reference.parameters()])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- row blocks
@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_in_row_blocks_equals_one_pass_block_by_block(form):
    """A row-wise function on blocks of 3, 3, 3 and 1 rows, concatenated, gives exactly its
    one-pass output; the blocks are consecutive and in the caller's form."""
    gen = torch.Generator().manual_seed(6)
    a, b = torch.randn(10, 4, generator=gen), torch.randn(10, 2, 4, generator=gen)
    inputs = {"tensor": a, "tuple": (a, b), "dict": {"a": a, "b": b}}[form]
    seen = []

    def fn(rows):
        parts = {"tensor": lambda: (rows, rows.unsqueeze(1)), "tuple": lambda: rows,
                 "dict": lambda: (rows["a"], rows["b"])}[form]()
        seen.append(parts[0][:, 0].clone())
        return torch.tanh(parts[0]).sum(1) * parts[1].mean(dim=(1, 2))  # (rows,)

    whole = fn(inputs)
    seen.clear()
    blocks = in_row_blocks(fn, inputs, 3)
    assert torch.equal(blocks, whole)
    assert [len(s) for s in seen] == [3, 3, 3, 1]
    assert torch.equal(torch.cat(seen), a[:, 0])
    seen.clear()
    assert torch.equal(in_row_blocks(fn, inputs, 10), whole) and len(seen) == 1  # no split
    with pytest.raises(ValueError, match="block_rows"):
        in_row_blocks(fn, inputs, 0)
