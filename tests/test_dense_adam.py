"""DenseAdam against torch.optim.Adam(fused=True): the same bits and the same state."""

from __future__ import annotations

import io

import pytest
import torch

from ctrbench.engine.dense_adam import DenseAdam


def _params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,), (16, 32)]
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def _grads(params: list[torch.Tensor], step: int, skip: set[int] = frozenset()) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        p.grad = None if i in skip else torch.randn(p.shape, generator=gen)


def _twins(**kwargs) -> tuple:
    ours, theirs = _params(), _params()
    return (ours, DenseAdam(ours, lr=1e-2, **kwargs),
            theirs, torch.optim.Adam(theirs, lr=1e-2, fused=True, **kwargs))


def _step_both(ours, opt, theirs, ref, steps: range, skip=lambda step: set()) -> None:
    """The same gradients into both parameter sets, then a step of each optimiser."""
    for step in steps:
        _grads(ours, step, skip(step))
        _grads(theirs, step, skip(step))
        opt.step()
        ref.step()


def _assert_same(ours, opt, theirs, ref) -> None:
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
        sa, sb = opt.state[a], ref.state[b]
        assert set(sa) == set(sb) == {"step", "exp_avg", "exp_avg_sq"}
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape
            assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_steps_are_bit_equal_to_torch_fused_adam(weight_decay):
    ours, opt, theirs, ref = _twins(betas=(0.8, 0.95), weight_decay=weight_decay)
    _step_both(ours, opt, theirs, ref, range(6))
    _assert_same(ours, opt, theirs, ref)
    assert opt._lists is not None  # the fast path ran


def test_missing_gradients_fall_back_and_count_as_torch_does():
    ours, opt, theirs, ref = _twins()
    # steps 1 and 2 without gradients for tensors 1 and 3: torch's step, those counters stay
    _step_both(ours, opt, theirs, ref, range(5),
               skip=lambda step: {1, 3} if step in (1, 2) else set())
    _assert_same(ours, opt, theirs, ref)
    assert opt.state[ours[1]]["step"].item() == 3.0


def test_load_state_dict_round_trip_continues_bit_equal():
    ours, opt, theirs, ref = _twins()
    _step_both(ours, opt, theirs, ref, range(3))
    saved = opt.state_dict()
    assert saved["state"][0]["step"].item() == 3.0
    fresh = [p.detach().clone().requires_grad_() for p in ours]
    resumed = DenseAdam(fresh, lr=1e-2)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)  # torch's own layout, as a checkpoint holds it
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    _step_both(fresh, resumed, theirs, ref, range(3, 6))
    _assert_same(fresh, resumed, theirs, ref)


def test_a_second_group_takes_torch_step():
    ours, theirs = _params(), _params()
    opt = DenseAdam([{"params": ours[:2]}, {"params": ours[2:], "lr": 1e-3}], lr=1e-2)
    ref = torch.optim.Adam([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 1e-3}],
                           lr=1e-2, fused=True)
    _step_both(ours, opt, theirs, ref, range(3))
    _assert_same(ours, opt, theirs, ref)
    assert opt._lists is None


def test_a_replaced_state_is_not_served_from_the_cache():
    ours, opt, theirs, ref = _twins()
    _step_both(ours, opt, theirs, ref, range(2))
    for p in ours:  # a user resets the moments in place of load_state_dict
        opt.state[p]["exp_avg"] = torch.zeros_like(p)
    for p in theirs:
        ref.state[p]["exp_avg"] = torch.zeros_like(p)
    _step_both(ours, opt, theirs, ref, range(2, 3))
    _assert_same(ours, opt, theirs, ref)


def test_its_state_dict_loads_into_torch_adam():
    ours, opt, theirs, ref = _twins()
    _step_both(ours, opt, theirs, ref, range(3))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # counters saved as views of one tensor
    buffer.seek(0)
    plain = [p.detach().clone().requires_grad_() for p in ours]
    loaded = torch.optim.Adam(plain, lr=1e-2, fused=True)
    loaded.load_state_dict(torch.load(buffer))
    _step_both(plain, loaded, theirs, ref, range(3, 5))
    _assert_same(plain, loaded, theirs, ref)
