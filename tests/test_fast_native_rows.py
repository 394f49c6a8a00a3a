"""The native row updates of a dense embedding gradient (``models/fast/native_rows.cpp``
through :mod:`ctrbench.models.fast.native_rows`): bit-equal to the torch route of
``FusedEmbedding._add_in_place`` (``index_add_``, then the touched-row L2 of the distinct rows,
then the padding row zeroed) with repeated ids, padding, row scales and no L2; ``zero_rows``
against ``index_fill_``; an id out of range refused without a write; and a model's table
gradient the same through both routes."""

from __future__ import annotations

import pytest
import torch

from ctrbench import native
from ctrbench.models.fast import native_rows
from ctrbench.models.fast.embedding_bank import add_rows, distinct_rows
from ctrbench.models.fast.native_rows import add_lookup_grads, native_usable, zero_rows

pytestmark = pytest.mark.skipif(native_rows.library() is None,
                                reason=f"native rows: {native.status('native_rows')}")

ROWS, DIM = 5000, 16


def torch_route(target, weight, ids, values, row_l2, scratch):
    """The torch route of ``FusedEmbedding._add_in_place`` (padding row 0)."""
    add_rows(target, ids, values)
    written = ids
    if row_l2 is not None:
        written = distinct_rows(ids, scratch)
        l2, scale = row_l2
        decay = weight.index_select(0, written)
        if scale is not None:
            decay = decay * scale.index_select(0, written).unsqueeze(1)
        add_rows(target, written, decay.mul_(2 * l2))
    target[0] = 0.0
    return written


@pytest.mark.parametrize("dim", [16, 1, 5, 24])
@pytest.mark.parametrize("l2", ["none", "plain", "scaled"])
def test_add_lookup_grads_is_bit_equal_to_the_torch_route(dim, l2):
    torch.manual_seed(dim)
    weight = torch.randn(ROWS, dim)
    ids = torch.randint(0, ROWS, (3000,))
    ids[::7] = 0  # padding
    ids[1::5] = ids[0]  # many repeats of one row
    values = torch.randn(3000, dim)
    scale = torch.rand(ROWS) + 0.5
    row_l2 = {"none": None, "plain": (1e-3, None), "scaled": (3.3e-4, scale)}[l2]
    start = torch.randn(ROWS, dim)  # what the gradient held before
    want, got = start.clone(), start.clone()
    scratch = torch.empty(ROWS, dtype=torch.long)
    want_rows = torch_route(want, weight, ids, values, row_l2, scratch)
    got_rows = add_lookup_grads(got, weight, ids, values, row_l2, scratch, 0)
    assert torch.equal(got, want)
    assert sorted(got_rows.tolist()) == sorted(want_rows.tolist())


@pytest.mark.parametrize("dim", [DIM, 1, 5, 24])  # narrow rows take a scalar loop
def test_zero_rows_equals_index_fill(dim):
    target = torch.randn(ROWS, dim)
    ids = torch.randint(0, ROWS, (700,))
    want = target.clone().index_fill_(0, ids, 0.0)
    zero_rows(target, ids)
    assert torch.equal(target, want)


@pytest.mark.parametrize("bad", [-1, ROWS])
def test_an_id_out_of_range_is_refused_before_any_write(bad):
    target = torch.zeros(ROWS, DIM)
    ids = torch.tensor([3, 4, bad])
    with pytest.raises(RuntimeError, match="code 2"):
        add_lookup_grads(target, torch.randn(ROWS, DIM), ids, torch.ones(3, DIM), None,
                         torch.empty(ROWS, dtype=torch.long), 0)
    with pytest.raises(RuntimeError, match="code 2"):
        zero_rows(target, ids)
    assert not target.any()


def test_only_contiguous_float32_cpu_tables():
    assert native_usable(torch.zeros(4, 3))
    assert not native_usable(torch.zeros(4, 3, dtype=torch.float64))
    assert not native_usable(torch.zeros(3, 4).t())


def test_a_models_table_gradient_is_the_same_through_both_routes(monkeypatch):
    """One training step's backward of a fused bank with the touched-row L2: the dense
    ``weight.grad`` from the kernel equals the torch route's bit for bit."""
    from ctrbench.engine.optim import FusedRowL2
    from ctrbench.models.fast.embedding_bank import FusedEmbedding

    grads = []
    for usable in (True, False):
        if not usable:
            monkeypatch.setattr(native_rows, "native_usable", lambda *_: False)
        torch.manual_seed(0)
        table = FusedEmbedding(ROWS, DIM)
        FusedRowL2([table], 1e-3)
        ids = torch.randint(0, ROWS, (64, 30))
        for _ in range(2):  # the second step zeroes the rows the first wrote
            table.zero_dense_grad()
            (table(ids) ** 2).sum().backward()
        grads.append(table.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
