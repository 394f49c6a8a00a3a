"""GRU and AUGRU recurrences with a hand-written backward of three ops per step.

Plain reference: ``nn.GRU`` (one layer, ``batch_first``) for :func:`gru_scan` and
:func:`ctrbench.models.sequence.augru_reference` for :func:`augru_scan`; both are tested equal
to them in values and gradients (``tests/test_fast_paths.py``, float64 ``gradcheck``).

One step, with ``gx = W_ih x + b_ih`` computed for all steps before the scan, gate layout
``[reset | update | candidate]`` (that of ``nn.GRU``) and ``hn = W_hn h + b_hn``:
  r = sigmoid(gx_r + W_hr h + b_hr); z = sigmoid(gx_z + W_hz h + b_hz)
  n = tanh(gx_n + r * hn)
  GRU:   h' = n + z (h - n)                 (keep gate k = z)
  AUGRU: h' = h + a z (n - h)               (k = 1 - a z; DIEN: the attention scales the update)

Why: autograd through a time loop replays ~20 small ops per step (``nn.GRU``'s CPU backward
too), each costing microseconds of dispatch on ``[B, H]`` tensors. Here the forward loop runs
five or six ops per step (the state update is one ``lerp``) and writes its results straight
into time-major buffers; every factor of the backward that does not depend on the incoming
gradient is computed for a block of steps at once, so that the reverse loop is
``g_t = A_t * dh`` and ``dh <- dh_out + k_t * dh + g_t W_hh`` (three ops); the gate, weight
and attention gradients are then whole-block ops. DIEN's step at batch 128 on one CPU thread:
-17 to -22% (both recurrences); at 1024: within +-3%.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

BLOCK_ROWS = 4096  # steps x rows per block of the backward (in cache)

# Saved per step, time-major: states S [T+1, B, H] (S[0] = 0), the recurrent pre-activations
# P [T, B, 3H] (r and z parts include gx; the candidate part is hn = W_hn h + b_hn), the gates
# RZ [T, B, 2H] and the candidates N [T, B, H].


def _forward_loop(gx: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
                  attention: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``gx [B, T, 3H]`` -> buffers ``S, P, RZ, N`` (see above), without autograd.

    ``tanh(x)`` is evaluated as ``2 sigmoid(2x) - 1`` (torch's CPU ``tanh`` costs ~4x its
    ``sigmoid`` per element here); the factor 2 is folded into the candidate's rows of ``W_hh``,
    ``b_hh`` and ``gx``, so ``P``'s candidate part holds ``2 hn``."""
    batch_size, steps, hidden = gx.shape[0], gx.shape[1], w_hh.shape[1]
    two_h = 2 * hidden
    scale = torch.ones(3 * hidden, 1, dtype=gx.dtype, device=gx.device)
    scale[two_h:] = 2.0
    w_t = (w_hh * scale).t()  # (H, 3H): candidate rows doubled
    gx_t = gx.transpose(0, 1)  # (T, B, 3H) view
    # Each step's addmm adds h W_hh^T in place onto what P starts as: gx + b_hh for r and z,
    # 2 b_hn alone for the candidate (in place: no copy of the addend per step).
    pre = torch.empty(steps, batch_size, 3 * hidden, dtype=gx.dtype, device=gx.device)
    torch.add(gx_t[..., :two_h], b_hh[:two_h], out=pre[..., :two_h])
    pre[..., two_h:] = 2.0 * b_hh[two_h:]
    gx_n2 = gx_t[..., two_h:] * 2.0  # (T, B, H)
    states = gx.new_zeros(steps + 1, batch_size, hidden)
    rz = gx.new_empty(steps, batch_size, two_h)
    cand = gx.new_empty(steps, batch_size, hidden)
    minus_one = gx.new_full((), -1.0)
    gates = attention.t().unsqueeze(-1).unbind(0) if attention is not None else None  # (B, 1)
    state_v, pre_v, rz_v, cand_v = (b.unbind(0) for b in (states, pre, rz, cand))
    pre_rz_v, hn2_v = pre[..., :two_h].unbind(0), pre[..., two_h:].unbind(0)
    r_v, z_v = rz[..., :hidden].unbind(0), rz[..., hidden:].unbind(0)
    gx_n2_v = gx_n2.unbind(0)
    for t in range(steps):
        h, n = state_v[t], cand_v[t]
        pre_v[t].addmm_(h, w_t)  # (B, 3H)
        torch.sigmoid(pre_rz_v[t], out=rz_v[t])  # (B, 2H)
        half = torch.sigmoid(torch.addcmul(gx_n2_v[t], r_v[t], hn2_v[t]))  # sigmoid(2 n_pre)
        torch.add(minus_one, half, alpha=2.0, out=n)  # n = tanh(n_pre)
        if gates is None:
            torch.lerp(n, h, z_v[t], out=state_v[t + 1])  # n + z (h - n), one op
        else:
            torch.lerp(h, n, z_v[t] * gates[t], out=state_v[t + 1])  # h + a z (n - h)
    return states, pre, rz, cand


def gate_coefficients(prev: torch.Tensor, pre: torch.Tensor, rz: torch.Tensor,
                      cand: torch.Tensor, gate: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """For steps ``[S, B, .]``: ``A [S, B, 3, H]`` with d(pre-activation of r | z | hn) =
    ``A * dh'``, the keep gate ``k = dh'/dh`` (direct path), d(pre-activation of n)/dh' and,
    for AUGRU, ``n - h`` (for the attention's gradient). Each factor in as few passes as it
    takes (``x (1 - x)`` as one ``addcmul``, scalars broadcast from 0-d tensors)."""
    steps, batch_size, hidden = cand.shape
    r, z = rz[..., :hidden], rz[..., hidden:]
    one = cand.new_ones(())
    if gate is None:  # GRU: h' = n + z (h - n)
        keep, to_cand = z, torch.sub(one, z)  # dh'/dh, dh'/dn = 1 - z
        to_update, new_minus_old = prev - cand, None  # dh'/dz = h - n
    else:  # AUGRU: h' = h + a z (n - h)
        to_cand = gate * z  # dh'/dn = a z
        keep = torch.sub(one, to_cand)  # 1 - a z
        new_minus_old = cand - prev
        to_update = new_minus_old * gate  # dh'/dz = a (n - h)
    d_cand = torch.addcmul(one, cand, cand, value=-1.0).mul_(to_cand)  # (1 - n^2) dh'/dn
    coef = cand.new_empty(steps, batch_size, 3, hidden)
    hn2 = pre[..., 2 * hidden :]  # 2 hn (see _forward_loop)
    torch.addcmul(cand.new_zeros(()), d_cand, hn2, value=0.5, out=coef[:, :, 0])
    coef[:, :, 0].mul_(torch.addcmul(r, r, r, value=-1.0))  # ... r (1 - r)
    torch.mul(to_update, torch.addcmul(z, z, z, value=-1.0), out=coef[:, :, 1])  # ... z (1 - z)
    torch.mul(d_cand, r, out=coef[:, :, 2])
    return coef, keep, d_cand, new_minus_old


def _backward(grad_out: torch.Tensor, saved: tuple[torch.Tensor, ...],
              attention: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Gradients of ``gx [B, T, 3H]``, ``w_hh``, ``b_hh`` and (AUGRU) ``attention [B, T]`` from
    the gradient of every output state ``grad_out [B, T, H]``.

    Runs backwards over blocks of ``BLOCK_ROWS // B`` steps, so that each block's whole-tensor
    work (coefficients, gate and weight gradients) stays in cache at large batches."""
    states, pre, rz, cand, w_hh = saved
    steps, batch_size, hidden = rz.shape[0], rz.shape[1], w_hh.shape[1]
    prev = states[:-1]  # (T, B, H): h_{t-1}
    gate = attention.t().unsqueeze(-1) if attention is not None else None  # (T, B, 1)
    # (T, B, H), our own copy (never autograd's tensor): becomes dL/dh_t in the loop
    grad = grad_out.transpose(0, 1).clone(memory_format=torch.contiguous_format)
    grad_v = grad.unbind(0)
    # batch-major like gx (autograd's next node reshapes it without a copy), written through
    # a time-major view block by block
    d_gx = pre.new_empty(batch_size, steps, 3 * hidden).transpose(0, 1)  # (T, B, 3H) view
    d_w = w_hh.new_zeros(3 * hidden, hidden)
    d_b = w_hh.new_zeros(3 * hidden)
    d_att = None if gate is None else pre.new_empty(steps, batch_size)
    span = max(1, BLOCK_ROWS // max(1, batch_size))  # steps per block (any, for 0 rows)
    for end in range(steps, 0, -span):
        block = slice(max(0, end - span), end)
        coef, keep, d_cand, new_minus_old = gate_coefficients(
            prev[block], pre[block], rz[block], cand[block], None if gate is None else gate[block])
        first = block.start
        for t in range(end - 1, max(first, 1) - 1, -1):  # dL/dh_{t-1} from step t
            dh, i = grad_v[t], t - first
            g = (coef[i] * dh.unsqueeze(1)).view(batch_size, 3 * hidden)  # (B, 3H)
            grad_v[t - 1].addcmul_(dh, keep[i]).addmm_(g, w_hh)  # in place: no copies
        g_blk = grad[block]  # final: every later step has been walked
        d_gates = coef.mul_(g_blk.unsqueeze(2)).view(-1, 3 * hidden)  # (S B, 3H): d(pre)
        d_w.addmm_(d_gates.t(), prev[block].reshape(-1, hidden))
        d_b += d_gates.sum(dim=0)
        d_gx[block][..., : 2 * hidden] = d_gates.view(g_blk.shape[0], batch_size, 3 * hidden)[
            ..., : 2 * hidden]
        torch.mul(g_blk, d_cand, out=d_gx[block][..., 2 * hidden :])  # n's input part: no r
        if d_att is not None:  # dh'/da = z (n - h)
            z = rz[block][..., hidden:]
            torch.sum(g_blk * new_minus_old * z, dim=-1, out=d_att[block])
    if d_att is not None:
        d_att = d_att.t()  # (B, T)
    return d_gx.transpose(0, 1), d_w, d_b, d_att


class _GatedScan(torch.autograd.Function):
    """All states ``[B, T, H]`` of the GRU (``attention`` None) or AUGRU recurrence."""

    @staticmethod
    def forward(ctx, gx, w_hh, b_hh, attention):  # type: ignore[override]
        # Inputs all arrive in gx's dtype (bf16 under autocast); keep autocast out of the loop.
        with torch.autocast(device_type=gx.device.type, enabled=False):
            states, pre, rz, cand = _forward_loop(gx, w_hh, b_hh, attention)
        ctx.has_attention = attention is not None
        ctx.save_for_backward(states, pre, rz, cand, w_hh,
                              *(() if attention is None else (attention,)))
        return states[1:].transpose(0, 1)  # (B, T, H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        saved = ctx.saved_tensors
        attention = saved[5] if ctx.has_attention else None
        with torch.autocast(device_type=grad_out.device.type, enabled=False):
            return _backward(grad_out.to(saved[0].dtype), saved[:5], attention)


def gru_scan(gx: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """GRU states ``[B, T, H]`` from input projections ``gx [B, T, 3H]`` (``W_ih x + b_ih``),
    ``w_hh [3H, H]`` and ``b_hh [3H]`` (``nn.GRU``'s layout and equations; initial state 0)."""
    return _GatedScan.apply(gx, w_hh.to(gx.dtype), b_hh.to(gx.dtype), None)


def augru_scan(gx: torch.Tensor, attention: torch.Tensor, w_hh: torch.Tensor,
               b_hh: torch.Tensor) -> torch.Tensor:
    """AUGRU states ``[B, T, H]`` (``u_t = a_t z_t``; the last is DIEN's final interest)."""
    return _GatedScan.apply(gx, w_hh.to(gx.dtype), b_hh.to(gx.dtype), attention.to(gx.dtype))
