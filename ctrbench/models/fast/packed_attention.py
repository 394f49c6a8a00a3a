"""Multi-head self-attention over the valid steps of left-aligned histories, by length group,
with a hand-written backward (the CPU path of MIAN's transformer block).

The queries, keys and values of a batch's ``N`` valid steps arrive packed, ``qkv [N, 3D]``
(the block's QKV projection, run once over the valid steps). They are scattered once into a
zero-padded ``[B, T_b, 3, D]`` buffer, rows in length-group order
(:func:`ctrbench.models.sequence.length_groups`: rows of at most ``bound`` valid steps). Each
group transposes its own rows and its keys once into **width-major** ``[3, R, D, T_k]``, so
each row's and head's ``Q^T``, ``K^T``, ``V^T`` are ``[d, T]`` views. Every product is then
formed so that its output has ``T`` columns, never the head width ``d``:

- forward: ``S = Q K^T`` (``[bound, d] x [d, keys]``), ``P = softmax(S + mask)``,
  ``C^T = V^T P^T`` (``[d, keys] x [keys, bound]``);
- backward: ``dV^T = dC^T P``, ``dP = dC V^T``, ``dS = P (dP - rowsum(dP P))``,
  ``dQ^T = K^T dS^T``, ``dK^T = Q^T dS``.

Why: with MIAN's 8 heads of width 4, a batched product with 4 output columns (``P V``,
``dS K``, ``dS^T Q``, ``P^T dC``) ran ~3x slower here than the same product transposed
(``[512, 30, 32] x [512, 32, 4]``: 313 us; ``[512, 4, 32] x [512, 32, 30]``: 118 us).
Keys per group are rounded up to a multiple of ``KEY_MULTIPLE`` (the buffer's padding, never
attended): torch's CPU softmax over a last dim that is not a multiple of its 16-float vector
width is slower per row than over the next multiple (``[512, 30, k]``: 415 us at k = 30,
329 us at k = 32, backward 104 vs 61 us), and far slower below 16.

Padded keys get weight exactly 0. A row with no valid step attends to its step 0 (finite,
never read: it has no query). Outputs exist only at valid steps.

Plain reference: :meth:`ctrbench.models.sequence.MaskedSelfAttention.mix` over the padded
batch, at the valid steps; tested equal in values and gradients, with float64 ``gradcheck``
(``tests/test_fast_attention.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

KEY_MULTIPLE = 16  # keys per group are rounded up to this (torch's CPU softmax vector width)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Group:
    """Buffer rows ``start:end`` (histories of at most ``queries`` valid steps), attending over
    the first ``keys`` steps of the buffer with ``bias [(end - start) h, 1, keys]`` (0 or
    -inf)."""

    start: int
    end: int
    queries: int
    keys: int
    bias: torch.Tensor


@dataclass(frozen=True)
class AttentionLayout:
    """Where the valid steps of a ``[B, T]`` left-aligned batch live in the attention buffer.

    Buffer row ``i`` holds batch row ``order[i]``; rows come in length-group order, so each
    group is a contiguous block of buffer rows. The ``N`` valid steps are numbered with rows in
    buffer order and steps ascending: step ``n`` is at ``places[n]`` in the batch and at
    ``slots[n]`` in the buffer."""

    order: torch.Tensor  # (B,): the batch row of each buffer row
    places: torch.Tensor  # (N,): flat index b * T + t of each valid step in [B * T]
    slots: torch.Tensor  # (N,): flat index i * T_b + t of each valid step in [B * T_b]
    groups: tuple[Group, ...]
    rows: int  # B
    buffer_steps: int  # T_b: T rounded up to KEY_MULTIPLE
    heads: int
    head_dim: int

    @staticmethod
    def of(mask: torch.Tensor, parts: list[tuple[int, torch.Tensor]], heads: int,
           head_dim: int, dtype: torch.dtype) -> AttentionLayout:
        """The layout of left-aligned ``mask [B, T]`` grouped as ``parts`` (``[(bound,
        rows)]``, :func:`~ctrbench.models.sequence.length_groups`), for ``heads`` heads of
        width ``head_dim``; the mask bias in ``dtype``."""
        batch_size, steps = mask.shape
        buffer_steps = _round_up(max(steps, 1), KEY_MULTIPLE)
        order = torch.cat([rows for _, rows in parts])  # (B,)
        mask_b = mask.index_select(0, order)  # (B, T): rows in buffer order
        row, step = mask_b.nonzero(as_tuple=True)  # (N,), (N,)
        places = order.index_select(0, row) * steps + step  # (N,)
        slots = row * buffer_steps + step  # (N,)
        attend = torch.nn.functional.pad(mask_b, (0, buffer_steps - steps))  # (B, T_b)
        attend[:, 0] |= ~mask_b.any(dim=1)  # an empty history attends to its step 0
        bias = torch.zeros(attend.shape, dtype=dtype, device=mask.device).masked_fill_(
            ~attend, float("-inf"))  # (B, T_b)
        groups, start = [], 0
        for bound, rows in parts:
            end = start + rows.shape[0]
            keys = min(buffer_steps, _round_up(bound, KEY_MULTIPLE))
            groups.append(Group(start, end, bound, keys, bias[start:end, :keys].repeat_interleave(
                heads, dim=0).unsqueeze(1)))  # bias: (R h, 1, keys)
            start = end
        return AttentionLayout(order, places, slots, tuple(groups), batch_size, buffer_steps,
                               heads, head_dim)


def _by_head(group_t: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """A group's ``[R, D, S]`` (width-major) -> ``[R h, d, S]`` (a view)."""
    return group_t.view(group_t.shape[0] * heads, head_dim, group_t.shape[2])


def _token_major(group_t: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """``[R h, d, S]`` -> ``[R, S, D]`` (a transposed view)."""
    return group_t.view(rows, width, group_t.shape[2]).transpose(1, 2)


class _PackedAttention(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, qkv: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        width = qkv.shape[1] // 3
        heads, head_dim = layout.heads, layout.head_dim
        batch_size, buffer_steps = layout.rows, layout.buffer_steps
        scale = head_dim ** -0.5
        padded = qkv.new_zeros(batch_size * buffer_steps, 3 * width).index_copy_(
            0, layout.slots, qkv).view(batch_size, buffer_steps, 3, width)  # (B, T_b, 3, D)
        context = qkv.new_empty(batch_size, buffer_steps, width)  # (B, T_b, D)
        saved = []
        for group in layout.groups:
            rows, tq, tk = group.end - group.start, group.queries, group.keys
            qkv_t = padded[group.start:group.end, :tk].permute(
                2, 0, 3, 1).contiguous()  # (3, R, D, Tk): width-major
            q_t, k_t, v_t = (_by_head(part, heads, head_dim) for part in qkv_t)  # (R h, d, Tk)
            bias = group.bias.to(qkv.dtype)  # (R h, 1, Tk)
            p = torch.softmax(torch.baddbmm(bias, q_t[:, :, :tq].transpose(1, 2), k_t,
                                            alpha=scale), dim=-1)  # (R h, Tq, Tk)
            c_t = torch.bmm(v_t, p.transpose(1, 2))  # (R h, d, Tq)
            context[group.start:group.end, :tq] = _token_major(c_t, rows, width)
            saved += [qkv_t, p]
        ctx.layout = layout
        ctx.save_for_backward(*saved)
        return context.view(-1, width).index_select(0, layout.slots)  # (N, D)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        layout = ctx.layout
        saved = ctx.saved_tensors
        width = grad.shape[1]
        heads, head_dim = layout.heads, layout.head_dim
        batch_size, buffer_steps = layout.rows, layout.buffer_steps
        scale = head_dim ** -0.5
        grad_context = grad.new_zeros(batch_size * buffer_steps, width).index_copy_(
            0, layout.slots, grad).view(batch_size, buffer_steps, width)  # (B, T_b, D)
        grad_qkv = grad.new_empty(batch_size, buffer_steps, 3, width)  # (B, T_b, 3, D)
        for index, group in enumerate(layout.groups):
            qkv_t, p = saved[2 * index], saved[2 * index + 1]  # (3, R, D, Tk), (R h, Tq, Tk)
            rows, tq = group.end - group.start, group.queries
            q_t, k_t, v_t = (_by_head(part, heads, head_dim) for part in qkv_t)  # (R h, d, Tk)
            dc_t = _by_head(grad_context[group.start:group.end, :tq].transpose(1, 2).contiguous(),
                            heads, head_dim)  # (R h, d, Tq)
            ds = torch._softmax_backward_data(torch.bmm(dc_t.transpose(1, 2), v_t), p, -1,
                                              p.dtype)  # (R h, Tq, Tk)
            target = grad_qkv[group.start:group.end]  # (R, T_b, 3, D)
            target[:, :tq, 0] = _token_major(torch.bmm(k_t, ds.transpose(1, 2)).mul_(scale),
                                             rows, width)  # dQ
            target[:, :group.keys, 1] = _token_major(torch.bmm(q_t[:, :, :tq], ds).mul_(scale),
                                                     rows, width)  # dK
            target[:, :group.keys, 2] = _token_major(torch.bmm(dc_t, p), rows, width)  # dV
        # grad_qkv past a group's queries (q) or keys (k, v): never written, never read
        return grad_qkv.view(-1, 3 * width).index_select(0, layout.slots), None  # (N, 3D)


def packed_attention(qkv: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """Scaled dot-product attention of each valid step over its own history's valid steps.

    ``qkv [N, 3D]``: the valid steps' projections in ``layout``'s order (``layout.places``),
    the last dim laid out ``[q | k | v]``, each ``heads x head_dim`` -> context ``[N, D]``
    (before the output projection). Differentiable in ``qkv`` (once)."""
    return _PackedAttention.apply(qkv, layout)
