"""Each CPU fast path (``ctrbench/models/fast/``) against its plain reference.

- the fused embedding bank against one ``nn.Embedding`` per vocabulary (values, gradients);
- the fused Dice function against :func:`ctrbench.models.layers.dice` (values, gradients);
- ``UniformDropout`` against ``nn.Dropout`` (same distribution, the designed random stream);
- evaluation in row blocks against one pass.
"""

from __future__ import annotations

from itertools import accumulate

import pytest
import torch
from test_layers import tiny_batch, tiny_schema

from ctrbench.models.fast.dropout import UniformDropout
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.layers import Dice


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))


# --------------------------------------------------------------------------- embedding bank
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


def test_dice_matches_the_formula_through_autograd():
    """Values and gradients of Dice on [B, T, H] equal the formula written with autograd ops."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=gen, requires_grad=True)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.25, -0.5, 1.5]))
    out = dice.train()(x)
    flat = x.reshape(-1, 3)
    mean, var = flat.mean(0), flat.var(0, unbiased=False)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
    expected = p * x + (1 - p) * dice.alpha * x
    torch.testing.assert_close(out, expected)
    weights = torch.randn(6, 4, 3, generator=gen)
    grads = torch.autograd.grad((out * weights).sum(), (x, dice.alpha))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (x, dice.alpha))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


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
