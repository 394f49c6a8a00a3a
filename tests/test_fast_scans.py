"""The GRU / AUGRU scans (``ctrbench/models/fast/gated_scan.py``, ``packed_scan.py``) against
their plain references: ``nn.GRU`` and the autograd AUGRU loop (values, gradients, float64
gradcheck); the packed scans against the padded ones at valid steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctrbench.models.fast.gated_scan import augru_scan, gru_scan
from ctrbench.models.fast.packed_scan import (
    StepPacking,
    packed_augru_scan,
    packed_gru_scan,
    prefix_views,
)
from ctrbench.models.sequence import augru_reference


# --------------------------------------------------------------------------- gated scans
def scan_inputs(batch_size: int = 5, steps: int = 7, hidden: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    def make(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.double).requires_grad_()
    attention = torch.rand(batch_size, steps, generator=gen, dtype=torch.double)
    return (make(batch_size, steps, 3 * hidden), attention.requires_grad_(),
            make(3 * hidden, hidden), make(3 * hidden))


@pytest.mark.parametrize("block_rows", [4096, 10, 1])  # one block; 2 steps; 1 step per block
def test_gru_scan_equals_nn_gru_values_and_gradients(monkeypatch, block_rows):
    monkeypatch.setattr("ctrbench.models.fast.gated_scan.BLOCK_ROWS", block_rows)
    torch.manual_seed(0)
    gru = nn.GRU(6, 4, batch_first=True).double()
    x = torch.randn(5, 7, 6, dtype=torch.double, requires_grad=True)
    params = [x, *gru.parameters()]
    weights = torch.randn(5, 7, 4, dtype=torch.double)  # every state gets a gradient
    reference = gru(x)[0]
    gx = nn.functional.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
    scanned = gru_scan(gx, gru.weight_hh_l0, gru.bias_hh_l0)
    torch.testing.assert_close(scanned, reference)
    expected = torch.autograd.grad((reference * weights).sum(), params)
    got = torch.autograd.grad((scanned * weights).sum(), params)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs)
    gx, _, w_hh, b_hh = scan_inputs()
    assert torch.autograd.gradcheck(gru_scan, (gx, w_hh, b_hh))


@pytest.mark.parametrize("block_rows", [4096, 10, 1])
def test_augru_scan_equals_the_autograd_loop_at_every_step(monkeypatch, block_rows):
    monkeypatch.setattr("ctrbench.models.fast.gated_scan.BLOCK_ROWS", block_rows)
    inputs = scan_inputs(seed=3)
    assert torch.autograd.gradcheck(augru_scan, inputs)
    states = augru_scan(*inputs)  # (B, T, H)
    for t in (0, 3, 6):  # the state after step t is the reference run over the first t + 1
        gx, attention, w_hh, b_hh = inputs
        prefix = augru_reference(gx[:, : t + 1], attention[:, : t + 1], w_hh, b_hh)
        torch.testing.assert_close(states[:, t], prefix)
    weights = torch.randn(5, 4, dtype=torch.double)
    expected = torch.autograd.grad((augru_reference(*inputs) * weights).sum(), inputs)
    got = torch.autograd.grad((augru_scan(*inputs)[:, -1] * weights).sum(), inputs)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs)


def test_gated_scan_in_float32_and_one_step():
    gx, attention, w_hh, b_hh = (t.detach().float() for t in scan_inputs(steps=1))
    gru = nn.GRU(4, 4, batch_first=True)
    with torch.no_grad():
        gru.weight_hh_l0.copy_(w_hh)
        gru.bias_hh_l0.copy_(b_hh)
        gru.weight_ih_l0.copy_(torch.eye(12, 4))
        gru.bias_ih_l0.zero_()
        x = gx[..., :4].clone()
        gx = nn.functional.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
        torch.testing.assert_close(gru_scan(gx, w_hh, b_hh), gru(x)[0])
        # tanh as 2 sigmoid(2x) - 1: float32 agreement to rounding
        torch.testing.assert_close(augru_scan(gx, attention, w_hh, b_hh)[:, -1],
                                   augru_reference(gx, attention, w_hh, b_hh))


def test_gated_scans_take_an_empty_batch():
    """Zero rows (an empty block) give empty states and zero weight gradients, no error."""
    gx = torch.zeros(0, 5, 12, requires_grad=True)
    w_hh = torch.randn(12, 4, requires_grad=True)
    b_hh = torch.zeros(12, requires_grad=True)
    attention = torch.zeros(0, 5, requires_grad=True)
    (gru_scan(gx, w_hh, b_hh).sum() + augru_scan(gx, attention, w_hh, b_hh).sum()).backward()
    assert gx.grad.shape == (0, 5, 12) and attention.grad.shape == (0, 5)
    assert torch.equal(w_hh.grad, torch.zeros(12, 4))


# --------------------------------------------------------------------------- packed scans
PACKED_LENGTHS = torch.tensor([7, 0, 3, 1, 7, 2, 5])  # an empty history, two full ones


@pytest.mark.parametrize("block_rows", [4096, 9, 1])  # one block; a few steps; 1 step each
@pytest.mark.parametrize("kind", ["gru", "augru"])
def test_packed_scans_equal_the_padded_scans_at_valid_steps(monkeypatch, block_rows, kind):
    """Packed by step, each history's recurrence stops at its last valid step: the states at
    valid steps and every gradient equal those of the padded scan (AUGRU: attention 0 on
    padding, which carries the state) when only valid steps' outputs are used; float64
    gradcheck of the packed functions; 0 beyond each history."""
    monkeypatch.setattr("ctrbench.models.fast.packed_scan.BLOCK_ROWS", block_rows)
    batch_size, steps = PACKED_LENGTHS.shape[0], 7
    gx, attention, w_hh, b_hh = scan_inputs(batch_size, steps, seed=4)
    mask = torch.arange(steps)[None] < PACKED_LENGTHS[:, None]  # (B, T)
    packing = StepPacking.of(PACKED_LENGTHS, steps)
    assert packing.sizes == [6, 5, 4, 3, 3, 2, 2]
    weights = torch.randn(batch_size, steps, 4, dtype=torch.double) * mask[..., None]
    if kind == "gru":
        padded = gru_scan(gx, w_hh, b_hh)
        packed = packing.unpack(packed_gru_scan(packing.pack(gx), w_hh, b_hh, packing))
        inputs = (gx, w_hh, b_hh)
    else:
        gate = attention * mask
        padded = augru_scan(gx, gate, w_hh, b_hh)
        packed = packing.unpack(packed_augru_scan(packing.pack(gx), packing.pack(gate), w_hh,
                                                  b_hh, packing))
        inputs = (gx, attention, w_hh, b_hh)
    torch.testing.assert_close(packed, padded * mask[..., None])
    assert torch.equal(packed[~mask], torch.zeros(int((~mask).sum()), 4, dtype=torch.double))
    torch.testing.assert_close(packing.last(packing.pack(packed)),
                               padded[torch.arange(batch_size), (PACKED_LENGTHS - 1).clamp(0)]
                               * (PACKED_LENGTHS > 0)[:, None])
    expected = torch.autograd.grad((padded * weights).sum(), inputs, retain_graph=True)
    got = torch.autograd.grad((packed * weights).sum(), inputs)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs)
    gx_p = packing.pack(gx).detach().requires_grad_()
    if kind == "gru":
        assert torch.autograd.gradcheck(
            lambda g, w, b: packed_gru_scan(g, w, b, packing), (gx_p, w_hh, b_hh))
    else:
        gate_p = packing.pack(attention).detach().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda g, a, w, b: packed_augru_scan(g, a, w, b, packing), (gx_p, gate_p, w_hh, b_hh))


def test_step_packing_layout_and_empty_batches():
    """Packed rows are step-major, longest history first; pack/unpack round-trip; previous
    points at the same history's step before; nothing valid gives an empty packing."""
    lengths = torch.tensor([1, 3, 0, 2])
    packing = StepPacking.of(lengths, 4)
    assert packing.sizes == [3, 2, 1]
    # step 0: rows 1, 3, 0 (longest first, stable); step 1: rows 1, 3; step 2: row 1
    assert packing.row_of.tolist() == [1, 3, 0, 1, 3, 1]
    assert packing.places.tolist() == [4, 12, 0, 5, 13, 6]
    assert packing.previous.tolist() == [6, 6, 6, 0, 1, 3]
    assert packing.last_index.tolist() == [2, 5, 6, 4]
    x = torch.arange(16.0).view(4, 4) * (torch.arange(4) < lengths[:, None])
    assert torch.equal(packing.unpack(packing.pack(x)), x)
    assert torch.equal(packing.last(packing.pack(x)), torch.tensor([0.0, 6.0, 0.0, 13.0]))
    full = StepPacking.of(torch.tensor([2, 1]), 3)  # no empty history: no zero row appended
    y = torch.arange(6.0).view(2, 3)
    assert torch.equal(full.last(full.pack(y)), torch.tensor([1.0, 3.0]))
    empty = StepPacking.of(torch.zeros(3, dtype=torch.long), 4)
    assert empty.sizes == [] and empty.places.shape == (0,)
    gx = torch.zeros(0, 12, requires_grad=True)
    states = packed_gru_scan(gx, torch.randn(12, 4), torch.randn(12), empty)
    assert states.shape == (0, 4)
    assert torch.equal(empty.unpack(states), torch.zeros(3, 4, 4))


@pytest.mark.parametrize("scan", ["gru", "augru", "packed_gru"])
def test_scans_never_write_into_the_incoming_gradient(scan):
    """With one row, the time-major view of the incoming gradient is already contiguous: the
    backward must still work on its own copy (it updates dL/dh in place), never on the caller's
    ``grad_outputs`` tensor."""
    gx, attention, w_hh, b_hh = (t[:1] if t.dim() > 1 and t.shape[0] == 5 else t
                                 for t in scan_inputs(steps=4))
    if scan == "gru":
        states = gru_scan(gx, w_hh, b_hh)
    elif scan == "augru":
        states = augru_scan(gx, attention, w_hh, b_hh)
    else:
        packing = StepPacking.of(torch.tensor([4]), 4)
        states = packed_gru_scan(packing.pack(gx), w_hh, b_hh, packing)
    grad_out = torch.randn(states.shape, dtype=states.dtype)
    before = grad_out.clone()
    torch.autograd.grad(states, (gx, w_hh), grad_out)
    assert torch.equal(grad_out, before)


def test_prefix_views_are_the_rows_each_step_continues():
    """``prefix_views``: for each step t >= 1, the rows of step t - 1 still active at t."""
    sizes = [4, 3, 3, 1]
    x = torch.arange(11.0)
    views = prefix_views(x, sizes)
    assert [v.tolist() for v in views] == [[0.0, 1.0, 2.0], [4.0, 5.0, 6.0], [7.0]]
    assert prefix_views(x[:4], [4]) == () and prefix_views(x[:0], []) == ()


@pytest.mark.parametrize("kind", ["gru", "augru"])
def test_packed_scans_keep_bf16_inputs_accurate(kind):
    """bf16 inputs (autocast) run the recurrence in float32 and return bf16: the states stay
    within bf16 rounding of the float64 recurrence (the loop's ``(h + 1) / 2`` in bf16 itself
    erred ~3e-3 on average here, the all-bf16 loop before it 1.0-1.5e-3)."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 31, (256,), generator=gen)
    packing = StepPacking.of(lengths, 30)
    rows, hidden = packing.places.shape[0], 32
    gx = torch.randn(rows, 3 * hidden, generator=gen, dtype=torch.double) * 0.5
    w_hh = torch.randn(3 * hidden, hidden, generator=gen, dtype=torch.double) * 0.3
    b_hh = torch.randn(3 * hidden, generator=gen, dtype=torch.double) * 0.1
    gate = torch.rand(rows, generator=gen, dtype=torch.double)

    def scan(dtype):
        args = (gx.to(dtype), w_hh.to(dtype), b_hh.to(dtype))
        if kind == "gru":
            return packed_gru_scan(*args, packing)
        return packed_augru_scan(args[0], gate.to(dtype), *args[1:], packing)

    low, exact = scan(torch.bfloat16), scan(torch.double)
    assert low.dtype == torch.bfloat16
    assert (low.double() - exact).abs().mean() < 8e-4
