"""GRU and AUGRU recurrences over variable-length, left-aligned histories, packed by step.

The same equations, gate layout and hand-written backward as :mod:`gated_scan`, but each step
runs only on the rows whose history is still going: rows are taken longest first, so that the
rows active at step ``t`` (``hist_len > t``) are a prefix of those active at ``t - 1``, and
every step's tensors are ``[n_t, .]`` slices of one packed ``[N, .]`` buffer (``N = sum_t n_t``
= the valid steps; the layout of ``nn.utils.rnn.PackedSequence``). Against one pass over the
padded ``[B, T]``: the same number of ops per step, no arithmetic on padding (about half of T
on Amazon-like histories); against running per history-length group (``apply_by_length``):
one loop of T steps instead of one per group, so far fewer dispatched ops at large batches.

The forward loop runs on ``(h + 1) / 2`` (see :func:`_forward_loop`); 16-bit inputs run in
float32 and return in their own dtype.

Outputs at steps ``t >= hist_len`` are 0 and carry no gradient (the recurrence stops at the
last valid step; a row with ``hist_len = 0`` is all zeros).

Float32 on the CPU outside autocast, :func:`packed_gru_scan` and :func:`packed_augru_scan` run
the native kernel of :mod:`native_scan` (same equations and layout, no op dispatched per step)
when it is built; ``NATIVE = False`` or ``CTRBENCH_NATIVE=0`` keeps them on the torch loop here.

Plain reference: :func:`gated_scan.gru_scan` / :func:`gated_scan.augru_scan` over the padded
history (attention 0 on padding), at the valid steps; tested equal in values and gradients,
with float64 ``gradcheck`` (``tests/test_fast_scans.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch.autograd.function import once_differentiable

from ctrbench.models.fast import native_scan
from ctrbench.models.fast.gated_scan import BLOCK_ROWS, gate_coefficients

NATIVE = True  # use native_scan's kernel where it can run (tests turn it off to compare)


@dataclass(frozen=True)
class StepPacking:
    """Where each valid step of a ``[B, T]`` left-aligned batch lives in the packed layout.

    Packed row ``offsets[t] + j`` is step ``t`` of the ``j``-th longest row; ``sizes[t]`` =
    ``n_t`` rows are active at step ``t`` (non-increasing)."""

    places: torch.Tensor  # (N,): flat index b * T + t of each packed row in [B * T]
    row_of: torch.Tensor  # (N,): the batch row b of each packed row
    previous: torch.Tensor  # (N,): packed row of the same history's step t - 1; N for t = 0
    last_index: torch.Tensor  # (B,): packed row of each history's last valid step; N if none
    lengths: torch.Tensor  # (B,): valid steps per history (clamped to 0..T)
    sizes: list[int]  # n_t for t = 0 .. T - 1 (trailing zeros dropped)
    rows: int  # B
    steps: int  # T

    @staticmethod
    def of(lengths: torch.Tensor, steps: int) -> StepPacking:
        """The packing of histories of ``lengths [B]`` (clamped to ``0..steps``)."""
        lengths = lengths.long().clamp(0, steps)
        batch_size = lengths.shape[0]
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,) longest first
        active = torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths.index_select(
            0, order).unsqueeze(0)  # (T, B) in sorted order: a prefix of each row is True
        sizes = active.sum(dim=1).tolist()  # one host sync
        while sizes and sizes[-1] == 0:
            sizes.pop()
        steps_used = len(sizes)
        step_of, slot = active[:steps_used].nonzero(as_tuple=True)  # (N,), (N,): t-major
        row_of = order.index_select(0, slot)  # (N,)
        places = row_of * steps + step_of  # (N,)
        total = places.shape[0]
        offsets = torch.tensor([0, *sizes], device=lengths.device).cumsum(0)  # (T' + 1,)
        # step t of slot j is packed row offsets[t] + j (j < n_t <= n_{t-1})
        previous = torch.where(step_of > 0, offsets.index_select(0, (step_of - 1).clamp_min(0))
                               + slot, total)
        sorted_lengths = lengths.index_select(0, order)  # (B,)
        last_sorted = torch.where(
            sorted_lengths > 0, offsets.index_select(0, (sorted_lengths - 1).clamp_min(0))
            + torch.arange(batch_size, device=lengths.device), total)  # (B,) by slot
        last_index = torch.empty_like(last_sorted).scatter_(0, order, last_sorted)
        return StepPacking(places, row_of, previous, last_index, lengths, sizes, batch_size,
                           steps)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...]`` -> ``[N, ...]``."""
        return x.reshape(self.rows * self.steps, *x.shape[2:]).index_select(0, self.places)

    def mean(self, packed: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` -> ``[B, ...]``: each history's mean over its valid steps (0 if none)."""
        total = packed.new_zeros(self.rows, *packed.shape[1:]).index_add(0, self.row_of, packed)
        count = self.lengths.clamp_min(1).to(packed.dtype)  # (B,)
        return total / count.view(-1, *([1] * (packed.dim() - 1)))

    def last(self, packed: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` -> ``[B, ...]``: each history's last valid step (0 for an empty one)."""
        if self.sizes and self.sizes[0] == self.rows:  # no empty history: no zero row needed
            return packed.index_select(0, self.last_index)
        padded = torch.cat([packed, packed.new_zeros(1, *packed.shape[1:])])
        return padded.index_select(0, self.last_index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` -> ``[B, T, ...]``, zeros at steps beyond each history."""
        out = packed.new_zeros(self.rows * self.steps, *packed.shape[1:])
        return out.index_copy_(0, self.places, packed).view(self.rows, self.steps,
                                                            *packed.shape[1:])


def prefix_views(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """For packed ``x [N, ...]``: the rows of step ``t - 1`` still active at step ``t``
    (``x[offsets[t - 1] : offsets[t - 1] + n_t]``) for ``t = 1 .. T' - 1``, as views made by
    one ``split`` (instead of one slice per step in the loops)."""
    parts = []
    for before, rows in pairwise(sizes):
        parts += [rows, before - rows]
    pieces = x.split([*parts, sizes[-1]] if sizes else [])
    return pieces[0 : len(parts) : 2]


def _forward_loop(gx: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
                  gate: torch.Tensor | None, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """Packed ``gx [N, 3H]`` (and ``gate [N, 1]``) -> packed states ``[N + 1, H]`` (row N is
    0, the state before step 0 for the backward), pre-activations, gates and candidates
    ``[N, .]`` (see :mod:`gated_scan`: the candidate's part of ``P`` holds ``2 hn``).

    The loop runs on ``u = (h + 1) / 2`` and ``s = (n + 1) / 2 = sigmoid(2 n_pre)`` (``tanh``
    as a ``sigmoid``, which costs ~4x less here): both updates are the same ``lerp`` in these
    coordinates, ``W_hh h = 2 W_hh u - W_hh 1`` folds into the weights and a bias from step 1
    on, and ``h``, ``n`` are recovered by one whole-buffer op each after the loop. Per step:
    five ops for the GRU, six for AUGRU."""
    hidden = w_hh.shape[1]
    two_h = 2 * hidden
    scale = torch.ones(3 * hidden, 1, dtype=gx.dtype, device=gx.device)
    scale[two_h:] = 2.0  # the candidate's rows produce 2 hn
    w_scaled = w_hh * scale  # (3H, H)
    w_t = (2.0 * w_scaled).t()  # (H, 3H): acts on u
    # P: gx + b_hh for r and z, 2 b_hn for the candidate (r and z are then replaced by their
    # gates in place: the backward reads only P's candidate part)
    pre = torch.empty_like(gx)  # (N, 3H)
    torch.add(gx[:, :two_h], b_hh[:two_h], out=pre[:, :two_h])
    pre[:, two_h:] = 2.0 * b_hh[two_h:]
    first = sizes[0] if sizes else 0
    pre[first:] -= w_scaled.sum(dim=1)  # - W_hh 1 from step 1 on (h_0 = 0 adds nothing)
    cand = gx[:, two_h:] * 2.0  # (N, H): 2 gx_n, then s, then n
    states = gx.new_empty(gx.shape[0] + 1, hidden)  # u, then h; row N: h_{-1} = 0
    state_v, pre_v, cand_v = (b.split(sizes) for b in (states[:-1], pre, cand))
    rz_v, hn2_v = pre[:, :two_h].split(sizes), pre[:, two_h:].split(sizes)
    r_v, z_v = pre[:, :hidden].split(sizes), pre[:, hidden:two_h].split(sizes)
    previous_v = (gx.new_full((first, hidden), 0.5), *prefix_views(states[:-1], sizes))
    gates = gate.split(sizes) if gate is not None else None  # (n_t, 1) each
    for t in range(len(sizes)):
        u = previous_v[t]  # (n_t, H)
        if t:
            pre_v[t].addmm_(u, w_t)  # (n_t, 3H)
        rz_v[t].sigmoid_()  # (n_t, 2H)
        s = cand_v[t].addcmul_(r_v[t], hn2_v[t]).sigmoid_()  # (n_t, H)
        if gates is None:
            torch.lerp(s, u, z_v[t], out=state_v[t])  # u' = s + z (u - s)
        else:
            torch.lerp(u, s, z_v[t] * gates[t], out=state_v[t])  # u' = u + a z (s - u)
    states.mul_(2.0).sub_(1.0)[-1] = 0.0  # h = 2 u - 1
    cand.mul_(2.0).sub_(1.0)  # n = 2 s - 1
    return states, pre, pre[:, :two_h], cand


def _backward(grad_out: torch.Tensor, saved: tuple[torch.Tensor, ...],
              gate: torch.Tensor | None, packing: StepPacking) -> tuple[torch.Tensor, ...]:
    """Gradients of packed ``gx [N, 3H]``, ``w_hh``, ``b_hh`` and (AUGRU) ``gate [N, 1]`` from
    the packed gradient of every state ``grad_out [N, H]`` (our own copy: updated in place)."""
    states, pre, rz, cand, w_hh = saved
    sizes = packing.sizes
    hidden = w_hh.shape[1]
    prev = states.index_select(0, packing.previous)  # (N, H): h_{t-1}, row N (0) at t = 0
    grad = grad_out
    grad_v = grad.split(sizes)
    grad_u = grad.unsqueeze(1).split(sizes)  # (n_t, 1, H) each
    grad_previous = (None, *prefix_views(grad, sizes))  # dL/dh_{t-1} of step t's rows
    d_gx = pre.new_empty(pre.shape)
    d_w = w_hh.new_zeros(3 * hidden, hidden)
    d_b = w_hh.new_zeros(3 * hidden)
    d_gate = None if gate is None else pre.new_empty(pre.shape[0], 1)
    offsets = [0]
    for rows in sizes:
        offsets.append(offsets[-1] + rows)
    end = len(sizes)
    while end > 0:  # blocks of steps, last first, of at most BLOCK_ROWS packed rows
        start = end - 1
        while start > 0 and offsets[end] - offsets[start - 1] <= BLOCK_ROWS:
            start -= 1
        block = slice(offsets[start], offsets[end])
        coef, keep, d_cand, new_minus_old = (
            None if x is None else x.squeeze(0) for x in gate_coefficients(
                prev[block].unsqueeze(0), pre[block].unsqueeze(0), rz[block].unsqueeze(0),
                cand[block].unsqueeze(0), None if gate is None else gate[block].unsqueeze(0)))
        block_sizes = sizes[start:end]
        coef_v, keep_v = coef.split(block_sizes), keep.split(block_sizes)
        products = torch.empty_like(coef)  # (S, 3, H): coef * dh, step by step
        products_v = products.split(block_sizes)
        flat_v = products.view(-1, 3 * hidden).split(block_sizes)
        for t in range(end - 1, max(start, 1) - 1, -1):  # dL/dh_{t-1} from step t
            i = t - start
            torch.mul(coef_v[i], grad_u[t], out=products_v[i])  # (n_t, 3, H)
            grad_previous[t].addcmul_(grad_v[t], keep_v[i]).addmm_(flat_v[i], w_hh)
        g_blk = grad[block]  # final: every later step has been walked
        d_gates = coef.mul_(g_blk.unsqueeze(1)).view(-1, 3 * hidden)  # (S, 3H): d(pre)
        d_w.addmm_(d_gates.t(), prev[block])
        d_b += d_gates.sum(dim=0)
        d_gx[block, : 2 * hidden] = d_gates[:, : 2 * hidden]
        torch.mul(g_blk, d_cand, out=d_gx[block, 2 * hidden :])  # n's input part: no r
        if d_gate is not None:  # dh'/da = z (n - h)
            z = rz[block, hidden:]
            torch.sum(g_blk * new_minus_old * z, dim=-1, keepdim=True, out=d_gate[block])
        end = start
    return d_gx, d_w, d_b, d_gate


class _PackedGatedScan(torch.autograd.Function):
    """Packed states ``[N, H]`` of the GRU (``gate`` None) or AUGRU recurrence."""

    @staticmethod
    def forward(ctx, gx, w_hh, b_hh, gate, packing):  # type: ignore[override]
        with torch.autocast(device_type=gx.device.type, enabled=False):
            states, pre, rz, cand = _forward_loop(gx, w_hh, b_hh, gate, packing.sizes)
        ctx.packing = packing
        ctx.has_gate = gate is not None
        ctx.save_for_backward(states, pre, rz, cand, w_hh, *(() if gate is None else (gate,)))
        return states[:-1]  # (N, H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        saved = ctx.saved_tensors
        gate = saved[5] if ctx.has_gate else None
        with torch.autocast(device_type=grad_out.device.type, enabled=False):
            grad = grad_out.to(saved[0].dtype, copy=True).contiguous()
            return (*_backward(grad, saved[:5], gate, ctx.packing), None)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence runs in: float32 for 16-bit inputs (bf16 under autocast). The
    loop keeps ``h`` and ``n`` as ``(x + 1) / 2``, whose rounding in bf16 is absolute (~2^-9
    near 0), and its states feed every later step; the recurrence is latency-bound, so float32
    costs two casts of ``[N, .]``."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _scan(gx: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, gate: torch.Tensor | None,
          packing: StepPacking) -> torch.Tensor:
    """Packed states in the work dtype: the native kernel where usable, else the torch loop."""
    if NATIVE and native_scan.usable(gx):
        return native_scan.native_gated_scan(gx, w_hh, b_hh, gate, packing.sizes,
                                             packing.previous)
    return _PackedGatedScan.apply(gx, w_hh, b_hh, gate, packing)


def packed_gru_scan(gx: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
                    packing: StepPacking) -> torch.Tensor:
    """GRU states, packed ``[N, H]`` in ``gx``'s dtype, from packed input projections
    ``gx [N, 3H]``."""
    work = _work_dtype(gx.dtype)
    return _scan(gx.to(work), w_hh.to(work), b_hh.to(work), None, packing).to(gx.dtype)


def packed_augru_scan(gx: torch.Tensor, attention: torch.Tensor, w_hh: torch.Tensor,
                      b_hh: torch.Tensor, packing: StepPacking) -> torch.Tensor:
    """AUGRU states, packed ``[N, H]`` in ``gx``'s dtype, from packed ``gx [N, 3H]`` and
    ``attention [N]``."""
    work = _work_dtype(gx.dtype)
    return _scan(gx.to(work), w_hh.to(work), b_hh.to(work), attention.to(work).unsqueeze(1),
                 packing).to(gx.dtype)
