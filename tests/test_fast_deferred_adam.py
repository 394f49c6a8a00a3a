"""DeferredAdam (ctrbench/models/fast/deferred_adam.py) against torch's Adam.

Open loop (the same gradients fed to both), the deferred rows must end where torch's Adam puts
them up to rounding: the same bound as torch's own fused against single-tensor Adam. Closed loop
(training), the weights of a model stepped by it stay within rounding-amplified distance of
the dense Adam's, and the trainer settles the rows before it copies a state dict.
"""

from __future__ import annotations

import pytest
import torch

from ctrbench.engine.optim import build_optimizers
from ctrbench.models.fast import deferred_adam
from ctrbench.models.fast.deferred_adam import DeferredAdam
from ctrbench.models.fast.embedding_bank import FusedEmbedding

pytestmark = pytest.mark.skipif(deferred_adam.library() is None,
                                reason="the native kernel is not built here")

ROWS, DIM, LR = 300, 16, 1e-3


def _tables(seed: int = 0) -> tuple[FusedEmbedding, torch.nn.Parameter]:
    torch.manual_seed(seed)
    table = FusedEmbedding(ROWS, DIM)
    with torch.no_grad():
        table.weight.normal_(0, 0.05)
    return table, torch.nn.Parameter(table.weight.detach().clone())


def _step_both(table, reference, opt, opt_ref, ids: torch.Tensor, unknown_rows: bool = False):
    """One step of both with the gradient of ``ids``' lookups (repeats and padding included)."""
    table.zero_dense_grad()
    (table(ids).sum(1) ** 2).mean().backward()
    if unknown_rows:
        table._dirty_rows = None  # as after a dense contribution from elsewhere: every row
    reference.grad = table.weight.grad.clone()
    opt.step()
    opt_ref.step()


@pytest.mark.parametrize("unknown_rows", [False, True])
def test_open_loop_matches_torch_adam_up_to_rounding(unknown_rows):
    table, reference = _tables()
    opt = DeferredAdam([table], lr=LR)
    opt_ref = torch.optim.Adam([reference], lr=LR, foreach=False)
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):  # skewed ids: some rows every step, most rarely, some never
        ids = (torch.rand(64, generator=generator) ** 3 * ROWS).long()
        _step_both(table, reference, opt, opt_ref, ids, unknown_rows)
    last = opt.state[table.weight]["last"]
    assert unknown_rows or last.min() < 200  # rows were left behind, to be caught up
    opt.settle()
    assert (opt.state[table.weight]["last"] == 200).all()
    torch.testing.assert_close(table.weight.detach(), reference.detach(), rtol=0, atol=1e-7)
    state = opt_ref.state[reference]
    torch.testing.assert_close(opt.state[table.weight]["exp_avg"], state["exp_avg"],
                               rtol=0, atol=1e-8)
    torch.testing.assert_close(opt.state[table.weight]["exp_avg_sq"], state["exp_avg_sq"],
                               rtol=0, atol=1e-9)


def test_a_lookup_reads_the_rows_dense_adam_would_have():
    table, reference = _tables()
    opt = DeferredAdam([table], lr=LR)
    opt_ref = torch.optim.Adam([reference], lr=LR, foreach=False)
    for step in range(30):  # row 7 touched at the first step only, then left to decay
        ids = torch.tensor([7, 9]) if step == 0 else torch.tensor([9, 9, 0])
        _step_both(table, reference, opt, opt_ref, ids)
        if step == 0:
            after_first = table.weight.detach()[7].clone()
    assert opt.state[table.weight]["last"][7] == 1  # not moved since
    with torch.no_grad():
        read = table(torch.tensor([7]))  # the lookup catches row 7 up first
    torch.testing.assert_close(read[0], reference.detach()[7], rtol=0, atol=1e-8)
    assert not torch.equal(read[0], after_first)  # dense Adam kept moving it


def test_a_row_left_for_1500_steps_decays_as_in_torch():
    """Past ~900 untouched steps a row's m is exactly zero (flushed denormals), and the kernel
    then only decays v; the row must still be where torch's Adam puts it, and a row never
    touched must not move at all."""
    table, reference = _tables()
    opt = DeferredAdam([table], lr=LR)
    opt_ref = torch.optim.Adam([reference], lr=LR, foreach=False)
    never = table.weight.detach()[11].clone()
    for step in range(1500):
        _step_both(table, reference, opt, opt_ref, torch.tensor([5, 6] if step < 3 else [6]))
    assert opt.state[table.weight]["last"][5] == 3
    opt.settle()
    torch.testing.assert_close(table.weight.detach()[5], reference.detach()[5], rtol=0,
                               atol=1e-7)
    assert torch.equal(opt.state[table.weight]["exp_avg"][5], torch.zeros(DIM))
    torch.testing.assert_close(opt.state[table.weight]["exp_avg_sq"][5],
                               opt_ref.state[reference]["exp_avg_sq"][5], rtol=1e-5, atol=0)
    assert torch.equal(table.weight.detach()[11], never)


def test_release_settles_and_detaches():
    table, _ = _tables()
    opt = DeferredAdam([table], lr=LR)
    table.zero_dense_grad()
    table(torch.tensor([3])).sum().backward()
    opt.step()
    table.zero_dense_grad()
    table(torch.tensor([4])).sum().backward()
    opt.step()  # row 3 is one step behind now
    assert opt.state[table.weight]["last"][3] == 1
    opt.release()
    assert table.deferred is None and (opt.state[table.weight]["last"] == 2).all()
    before = table.weight.detach().clone()
    with torch.no_grad():
        table(torch.tensor([3, 5]))
    assert torch.equal(table.weight.detach(), before)  # a plain table again


class _TwoTables(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = FusedEmbedding(50, 16)
        self.narrow = FusedEmbedding(50, 1)  # LR's 1-wide weights
        self.linear = torch.nn.Linear(16, 1)


@pytest.mark.parametrize("l2_target,deferred", [("batch_embeddings", True), ("all", False)])
def test_build_optimizers_defers_wide_tables_without_weight_decay(l2_target, deferred,
                                                                  monkeypatch):
    from ctrbench.cards import TrainConfig

    monkeypatch.setattr(deferred_adam, "MIN_VALUES", 0)
    model = _TwoTables()
    cfg = TrainConfig(optimizer="adam", l2=1e-4, l2_target=l2_target)
    optimizers = build_optimizers(model, cfg)
    kinds = {type(o).__name__: o for o in optimizers.optimizers}
    assert ("DeferredAdam" in kinds) == deferred
    if deferred:
        assert kinds["DeferredAdam"].param_groups[0]["params"] == [model.wide.weight]
        assert model.wide.deferred is kinds["DeferredAdam"] and model.narrow.deferred is None
    assert {id(p) for p in optimizers.params} == {id(p) for p in model.parameters()}
    assert set(optimizers.dense_tables) == {model.wide, model.narrow}


@pytest.mark.parametrize("native_on,min_values", [(False, 0), (True, 50 * 16 + 1)])
def test_native_switch_or_a_small_table_keeps_the_dense_adam(monkeypatch, native_on,
                                                             min_values):
    from ctrbench.cards import TrainConfig

    monkeypatch.setattr(deferred_adam, "NATIVE", native_on)
    monkeypatch.setattr(deferred_adam, "MIN_VALUES", min_values)
    optimizers = build_optimizers(_TwoTables(), TrainConfig(optimizer="adam"))
    assert [type(o).__name__ for o in optimizers.optimizers] == ["DenseAdam"]


def test_training_with_it_stays_within_rounding_of_dense_adam(tmp_path, monkeypatch):
    """Closed loop: a DIN trained 40 steps each way from one seed (rounding differences are
    amplified by training, as between torch's own Adam implementations)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from train_throughput import Variant, generated_train_split

    states = {}
    with generated_train_split(4000) as (data, train):
        for native_on in (False, True):
            monkeypatch.setattr(deferred_adam, "NATIVE", native_on)
            variant = Variant(data, "din", "adam", 128, train)
            variant.run(40)
            names = [type(o).__name__ for o in variant.step.optimizers.optimizers]
            assert ("DeferredAdam" in names) == native_on
            variant.step.close()  # settles and detaches, as the trainer does
            states[native_on] = variant.model.state_dict()
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, rtol=0, atol=1e-4, msg=key)
