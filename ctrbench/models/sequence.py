"""Sequential building blocks: DIN's local activation unit, the AUGRU of DIEN, and the Pre-LN /
Post-LN transformer blocks of MIAN.

B = batch, T = history length, D = width of one step, H = hidden width, N = valid steps.
Histories are left-aligned (``ctrbench.schema``): a ``[B, T]`` bool mask marks valid steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ctrbench.models.fast import transformer_block as fused_block
from ctrbench.models.fast.dropout import UniformDropout
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.fast.fused_attention import RowPacking, fused_attention, usable
from ctrbench.models.fast.gated_scan import augru_scan
from ctrbench.models.fast.packed_attention import AttentionLayout, packed_attention
from ctrbench.models.fast.packed_scan import StepPacking, packed_augru_scan
from ctrbench.models.fast.row_blocks import in_row_blocks
from ctrbench.models.layers import MLP, masked_softmax
from ctrbench.schema import HIST_LEN, Batch, FieldSpec


# --------------------------------------------------------------------------- helpers
def effective_length(batch: Batch, max_len: int) -> int:
    """The longest valid history in the batch (at least 1): steps beyond it are all padding.

    Models slice their ``[B, T]`` histories to this length so that no work is spent on columns
    that are padding in every row (the mean Amazon history is about half of T = 30).
    """
    longest = int(batch[HIST_LEN].max()) if batch[HIST_LEN].numel() else 0
    return max(1, min(max_len, longest))


def embed_history(bank: EmbeddingBank, batch: Batch, specs: Sequence[FieldSpec],
                  steps: int) -> torch.Tensor:
    """The first ``steps`` steps of the history fields ``specs``, embedded and concatenated:
    ``[B, steps, len(specs) * D]`` (ids are sliced before the lookup)."""
    pairs = [(spec.vocab, batch[spec.name][:, :steps]) for spec in specs]
    return bank.lookup_stacked(pairs).flatten(-2)  # one lookup: (B, steps, len(specs) * D)


def embed_packed_history(bank: EmbeddingBank, batch: Batch, specs: Sequence[FieldSpec],
                         packing: RowPacking | StepPacking) -> torch.Tensor:
    """The history fields ``specs`` embedded at the valid steps of ``packing`` only, in its
    order: ``[N, len(specs) * D]`` (the ids are packed before the one lookup)."""
    pairs = [(spec.vocab, packing.pack(batch[spec.name][:, :packing.steps])) for spec in specs]
    return bank.lookup_stacked(pairs).flatten(1)  # (N, len(specs) * D)


def pad_steps(weights: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, T']`` -> ``[B, T]``, zeros for the trimmed steps (padding in every row)."""
    return nn.functional.pad(weights, (0, max_len - weights.shape[1]))


# --------------------------------------------------------------------------- DIN
class LocalActivationUnit(nn.Module):
    """DIN's attention pooling: weight per step from an MLP over ``[q, k, q - k, q * k]``.

    ``query [B, D]``, ``keys [B, T, D]``, ``mask [B, T]`` -> pooled ``[B, D]``, weights ``[B, T]``.
    Weights are unnormalised by default (the DIN paper keeps the intensity of interest);
    ``softmax=True`` normalises them over valid steps. The MLP runs on the valid steps only
    (gathered with the mask), so padded steps cost nothing and never enter Dice's batch
    statistics; their weight is exactly 0.

    The MLP's first Linear over the concatenation is evaluated split by blocks of its weight
    ``[W_q | W_k | W_d | W_p]``: ``(W_q + W_d) q + b`` once per sample, plus
    ``[W_k - W_d | W_p] [k; q * k]`` per valid step (the same function and parameters as the
    plain concatenation, half the per-step work, no ``[N, 4D]`` tensor). In eval mode the valid
    steps are scored in blocks of ``EVAL_ROWS`` (exact: Dice then uses its running statistics).
    """

    EVAL_ROWS = 4096  # valid steps per block at evaluation (a block's activations fit in cache)

    def __init__(self, dim: int, hidden: Sequence[int] = (80, 40), activation: str = "dice",
                 softmax: bool = False) -> None:
        super().__init__()
        self.softmax = softmax
        self.mlp = MLP(4 * dim, hidden, activation=activation, out_dim=1)

    def first_layer(self, query: torch.Tensor, keys: torch.Tensor,
                    rows: torch.Tensor) -> torch.Tensor:
        """The first Linear of ``[q, k, q - k, q * k]`` for ``keys [N, D]`` whose samples are
        ``rows [N]`` (indices into ``query [B, D]``): ``[N, H_1]``."""
        first = self.mlp.net[0]
        w_q, w_k, w_d, w_p = first.weight.chunk(4, dim=1)  # each (H_1, D)
        per_sample = torch.addmm(first.bias, query, (w_q + w_d).t())  # (B, H_1)
        q = query.index_select(0, rows)  # (N, D)
        per_step = torch.cat([keys, q * keys], dim=1)  # (N, 2D)
        return torch.addmm(per_sample.index_select(0, rows), per_step,
                           torch.cat([w_k - w_d, w_p], dim=1).t())  # (N, H_1)

    def scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw scores ``[B, T]`` (0 at padding)."""
        k = keys[mask]  # (N, D)
        if k.shape[0] == 0:  # no valid step in the batch: keep Dice's statistics out of it
            return keys.new_zeros(mask.shape)
        rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
        if self.training:  # Dice's batch statistics: one pass
            valid_scores = self._step_scores(query, k, rows)  # (N,)
        else:  # row-wise at evaluation: blocks that stay in cache (~7x faster Dice here)
            valid_scores = in_row_blocks(lambda part: self._step_scores(query, *part), (k, rows),
                                         self.EVAL_ROWS)  # (N,)
        return valid_scores.new_zeros(mask.shape).masked_scatter(mask, valid_scores)  # (B, T)

    def _step_scores(self, query: torch.Tensor, keys: torch.Tensor,
                     rows: torch.Tensor) -> torch.Tensor:
        """The MLP's score ``[N]`` for ``keys [N, D]`` of samples ``rows [N]``."""
        hidden = self.first_layer(query, keys, rows)  # (N, H_1)
        for layer in self.mlp.net[1:]:
            hidden = layer(hidden)
        return hidden.squeeze(-1)  # (N,)

    def forward(self, query: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores(query, keys, mask)  # (B, T)
        weights = masked_softmax(scores, mask, dim=1) if self.softmax else scores
        pooled = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (B, D)
        return pooled, weights


# --------------------------------------------------------------------------- AUGRU
# Gate layout of the fused projections (3H wide): [reset | update | candidate].
# One step, with gx = W x + b_x (all steps at once) and gh = U h + b_h:
#   r = sigmoid(gx_r + gh_r); u = a * sigmoid(gx_u + gh_u); n = tanh(gx_n + r * gh_n)
#   h' = (1 - u) * h + u * n          (DIEN's convention: u weights the new candidate)
# The reset gate multiplies U_n h + b_hn (the cuDNN / PyTorch GRU form), so the recurrent
# projection of all three gates is a single matmul per step.


def augru_reference(gx: torch.Tensor, attention: torch.Tensor, w_hh: torch.Tensor,
                    b_hh: torch.Tensor, every_step: bool = False) -> torch.Tensor:
    """Plain autograd AUGRU recurrence (the readable reference): final state ``[B, H]``, or
    with ``every_step`` the state after every step ``[B, T, H]``.

    ``gx [B, T, 3H]`` input projections, ``attention [B, T]``, ``w_hh [3H, H]``, ``b_hh [3H]``.
    """
    h = gx.new_zeros(gx.shape[0], w_hh.shape[1])  # (B, H)
    states = []
    for t in range(gx.shape[1]):
        gh = torch.addmm(b_hh, h, w_hh.t())  # (B, 3H)
        x_r, x_u, x_n = gx[:, t].chunk(3, dim=1)
        h_r, h_u, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        u = torch.sigmoid(x_u + h_u) * attention[:, t : t + 1]
        n = torch.tanh(x_n + r * h_n)
        h = h + u * (n - h)
        states.append(h)
    return torch.stack(states, dim=1) if every_step else h


def augru_recurrence(gx: torch.Tensor, attention: torch.Tensor, w_hh: torch.Tensor,
                     b_hh: torch.Tensor) -> torch.Tensor:
    """Final AUGRU state ``[B, H]`` (fast path, :func:`~ctrbench.models.fast.gated_scan.augru_scan`;
    same values and gradients as the reference)."""
    return augru_scan(gx, attention, w_hh, b_hh)[:, -1]


class AUGRU(nn.Module):
    """GRU with attentional update gate (DIEN): ``u'_t = a_t * u_t``.

    ``x [B, T, D]``, ``attention [B, T]`` -> final state ``[B, H]`` (:meth:`states`: every
    step's). Where ``a_t = 0`` (padding
    of a left-aligned history) the state is carried unchanged, so the final state is the state
    at the last valid step, and zeros for an empty history. The input projections of all steps
    are computed at once before the loop; only the recurrent part runs step by step.
    ``fast=False`` uses the plain autograd loop (reference; used by tests and the benchmark).
    """

    def __init__(self, input_dim: int, hidden_dim: int, fast: bool = True) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fast = fast
        self.input_proj = nn.Linear(input_dim, 3 * hidden_dim)
        self.hidden_proj = nn.Linear(hidden_dim, 3 * hidden_dim)
        bound = 1.0 / math.sqrt(hidden_dim)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.states(x, attention)[:, -1]  # (B, H)

    def packed_states(self, x: torch.Tensor, attention: torch.Tensor,
                      packing: StepPacking) -> torch.Tensor:
        """The states at the valid steps of packed ``x [N, D]``, ``attention [N]``
        (:class:`StepPacking`): ``[N, H]``, each history's recurrence stopping at its last
        valid step (the same states as :meth:`states` there)."""
        gx = self.input_proj(x)  # (N, 3H), every valid step at once
        weight, bias = self.hidden_proj.weight, self.hidden_proj.bias
        if self.fast:
            return packed_augru_scan(gx, attention, weight, bias, packing)
        return packing.pack(augru_reference(packing.unpack(gx), packing.unpack(attention),
                                            weight, bias, every_step=True))

    def states(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """The state after every step ``[B, T, H]`` (the last is :meth:`forward`'s)."""
        gx = self.input_proj(x)  # (B, T, 3H), every step at once
        weight, bias = self.hidden_proj.weight, self.hidden_proj.bias
        if self.fast:
            return augru_scan(gx, attention, weight, bias)
        return augru_reference(gx, attention, weight, bias, every_step=True)


# --------------------------------------------------------------------------- transformer
class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask: ``x [B, T, D]``, ``mask [B, T]``.

    Padded keys get weight exactly 0, so outputs at valid steps never depend on padded steps.
    A row with no valid step attends to its step 0 so that no softmax is empty (NaN); its
    outputs are finite and must be ignored by the caller, like any padded step. No dropout on
    the attention weights (the block applies dropout on its residual branches).

    ``fused=None`` (default) uses the fused ``scaled_dot_product_attention`` kernel off the CPU
    and two batched matmuls around a softmax on the CPU, where the fused kernel is slower for
    MIAN's many narrow heads (8 heads of width 4, T <= 30: ~7% slower forward + backward, ~45%
    slower forward alone here). ``True`` / ``False`` force one implementation (same function).

    torch's CPU softmax over a last dim shorter than its vector width (16 floats with AVX-512)
    takes a scalar path, ~13x slower per element here (and its backward ~10x): the matmul path
    appends never-attended keys up to ``MIN_KEYS`` (weight exactly 0; same outputs), which
    matters for short histories and for the short length groups of :func:`apply_by_length`.
    """

    MIN_KEYS = 16  # keys the matmul path's softmax runs over at least

    def __init__(self, dim: int, heads: int, fused: bool | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.mix(self.qkv(x), mask))  # (B, T, D)

    def mix(self, qkv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention between the projections: ``qkv [B, T, 3D]`` (``self.qkv``'s output),
        ``mask [B, T]`` -> context ``[B, T, D]`` (before ``self.out``)."""
        batch_size, steps, dim = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        qkv = qkv.view(batch_size, steps, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, d)
        empty_row = ~mask.any(dim=1, keepdim=True)  # (B, 1)
        first_step = torch.arange(steps, device=mask.device) == 0  # (T,)
        attend = mask | (empty_row & first_step)  # (B, T)
        fused = self.fused if self.fused is not None else qkv.device.type != "cpu"
        if not fused and steps < self.MIN_KEYS:  # extra keys that are never attended
            extra = self.MIN_KEYS - steps
            k, v = (nn.functional.pad(t, (0, 0, 0, extra)) for t in (k, v))  # (B, h, T_k, d)
            attend = nn.functional.pad(attend, (0, extra), value=False)  # (B, T_k)
        bias = torch.zeros(attend.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~attend, float("-inf"))[:, None, None, :]  # (B, 1, 1, T_k)
        if fused:
            context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            scores = torch.matmul(q * self.head_dim ** -0.5, k.transpose(-1, -2))  # (B,h,T,T_k)
            weights = torch.softmax(scores.add_(bias), dim=-1)  # (B,h,T,T_k), 0 on padded keys
            context = torch.matmul(weights, v)  # (B, h, T, d)
        return context.transpose(1, 2).reshape(batch_size, steps, dim)  # (B, T, D)


class FeedForward(nn.Module):
    """Position-wise ``Linear -> ReLU -> Linear``: ``[..., D] -> [..., D]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """One transformer encoder block over a behaviour sequence: ``[B, T, D] -> [B, T, D]``.

    ``pre_ln=True`` (MIAN): ``x + MHSA(LN(x))`` then ``x + FFN(LN(x))``.
    ``pre_ln=False`` (Post-LN, Table 4): ``LN(x + MHSA(x))`` then ``LN(x + FFN(x))``.
    Outputs at valid steps never depend on padded steps (key padding mask).
    """

    PACKED_ROWS = 512  # off the CPU, forward_by_length: forward_packed below this many rows
    #: on the CPU, forward_packed's attention is packed_attention (False: MaskedSelfAttention.mix
    #: per length group, the path off the CPU; same function)
    PACKED_ATTENTION = True
    #: on the CPU in float32, forward_packed's attention is the native kernel
    #: (:mod:`~ctrbench.models.fast.fused_attention`) where it is built (False: the torch paths)
    NATIVE_ATTENTION = True
    #: with the native attention, a Pre-LN block runs as one autograd node with a hand-written
    #: backward (:mod:`~ctrbench.models.fast.transformer_block`) where its kernels are built
    #: (False: through autograd; same function, same dropout masks)
    FUSED_BLOCK = True

    def __init__(self, dim: int, heads: int = 8, ffn_mult: int = 4, dropout: float = 0.0,
                 pre_ln: bool = True) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.attention = MaskedSelfAttention(dim, heads)
        self.ffn = FeedForward(dim, ffn_mult * dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = UniformDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            x = self.dropout.residual(x, self.attention(self.norm1(x), mask))  # (B, T, D)
            return self.dropout.residual(x, self.ffn(self.norm2(x)))  # (B, T, D)
        x = self.norm1(self.dropout.residual(x, self.attention(x, mask)))  # (B, T, D)
        return self.norm2(self.dropout.residual(x, self.ffn(x)))  # (B, T, D)

    def forward_by_length(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The block by history length: ``x [B, T, D]``, left-aligned ``mask [B, T]`` ->
        ``[B, T, D]``, equal to ``forward`` at valid steps (up to float rounding), 0 at padded
        steps. On the CPU :meth:`forward_packed` at every batch size; elsewhere from
        ``PACKED_ROWS`` rows :func:`apply_by_length` runs the whole block per length group."""
        if x.device.type != "cpu" and x.shape[0] >= self.PACKED_ROWS:
            return apply_by_length(self, x, mask)
        return self.forward_packed(x, mask)

    def forward_steps(self, h: torch.Tensor, packing: RowPacking) -> torch.Tensor:
        """The block on the valid steps packed by row (:class:`RowPacking`): ``[N, D] ->
        [N, D]``, the outputs of :meth:`forward_by_length` at the valid steps. The native
        kernel's path stays packed; the others (fallbacks) run padded in between."""
        if packing.rows == 0:
            return h.new_zeros(h.shape)
        if h.device.type != "cpu" and packing.rows >= self.PACKED_ROWS:
            return packing.pack(apply_by_length(self, packing.unpack(h), packing.mask))
        if self.NATIVE_ATTENTION and usable(h, self.attention.head_dim):
            return self._native_steps(h, packing)
        return packing.pack(self._by_group(packing.unpack(h), packing.mask))

    def forward_packed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Position-wise parts (LayerNorms, projections, FFN, dropout) once over the ``N``
        valid steps ``[N, D]``, and the attention between the projections:

        - on the CPU in float32, where the native kernel is built (``NATIVE_ATTENTION``):
          :func:`~ctrbench.models.fast.fused_attention.fused_attention`, each row over its own
          valid steps, fused per (row, head);
        - otherwise per length group (:func:`length_groups`, :func:`auto_groups`): on the CPU
          :func:`~ctrbench.models.fast.packed_attention.packed_attention` (one width-major
          buffer, products oriented for narrow heads, a hand-written backward), elsewhere
          :meth:`MaskedSelfAttention.mix` per group, trimmed to the group's bound.

        ``[B, T, D] -> [B, T, D]``, 0 at padded steps."""
        if x.shape[0] == 0:
            return x.new_zeros(x.shape)
        if self.NATIVE_ATTENTION and usable(x, self.attention.head_dim):
            packing = RowPacking.of(mask)
            return packing.unpack(self._native_steps(packing.pack(x), packing))
        return self._by_group(x, mask)

    def _native_steps(self, h: torch.Tensor, packing: RowPacking) -> torch.Tensor:
        """The block over packed ``h [N, D]`` with the native attention: ``[N, D]``."""
        if self.FUSED_BLOCK and fused_block.usable(h, self):
            return fused_block.pre_ln_block(h, packing.offsets, self)
        attention = self.attention
        qkv = attention.qkv(self.norm1(h) if self.pre_ln else h)  # (N, 3D)
        return self._after_attention(h, fused_attention(qkv, packing.offsets, attention.heads))

    def _by_group(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The block with the attention per length group (torch paths): ``[B, T, D] ->
        [B, T, D]``, 0 at padded steps."""
        batch_size, steps, dim = x.shape
        attention = self.attention
        parts = length_groups(mask, auto_groups(batch_size))
        layout = AttentionLayout.of(mask, parts, attention.heads, attention.head_dim, x.dtype)
        h = x.reshape(-1, dim).index_select(0, layout.places)  # (N, D)
        qkv = attention.qkv(self.norm1(h) if self.pre_ln else h)  # (N, 3D)
        if x.device.type == "cpu" and self.PACKED_ATTENTION:
            context = packed_attention(qkv, layout)  # (N, D)
        else:
            context = self._mix_by_group(qkv, mask, parts, layout)  # (N, D)
        h = self._after_attention(h, context)
        return h.new_zeros(batch_size * steps, dim).index_copy_(0, layout.places, h).view(
            batch_size, steps, dim)  # (B, T, D)

    def _after_attention(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The rest of the block over packed steps: input ``h [N, D]``, attention context
        ``[N, D]`` (before the output projection) -> ``[N, D]``."""
        mixed = self.attention.out(context)  # (N, D)
        if self.pre_ln:
            h = self.dropout.residual(h, mixed)  # (N, D): h + dropout(mixed)
            return self.dropout.residual(h, self.ffn(self.norm2(h)))
        h = self.norm1(self.dropout.residual(h, mixed))
        return self.norm2(self.dropout.residual(h, self.ffn(h)))

    def _mix_by_group(self, qkv: torch.Tensor, mask: torch.Tensor,
                      parts: list[tuple[int, torch.Tensor]],
                      layout: AttentionLayout) -> torch.Tensor:
        """:meth:`MaskedSelfAttention.mix` per length group over the padded ``qkv``: packed
        ``[N, 3D]`` in ``layout``'s order -> context ``[N, D]`` in the same order (padded as
        in ``layout``'s buffer: rows in group order, ``T_b`` steps)."""
        batch_size, steps = layout.rows, layout.buffer_steps
        mask_g = mask.index_select(0, layout.order)  # (B, T), rows in group order
        padded = qkv.new_zeros(batch_size * steps, qkv.shape[1]).index_copy_(
            0, layout.slots, qkv).view(batch_size, steps, -1)  # (B, T_b, 3D)
        sizes = [rows.shape[0] for _, rows in parts]
        contexts = []
        for (bound, _), qkv_g, mask_part in zip(parts, padded.split(sizes), mask_g.split(sizes)):
            context = self.attention.mix(qkv_g[:, :bound], mask_part[:, :bound])  # (R, bound, D)
            contexts.append(nn.functional.pad(context, (0, 0, 0, steps - bound)))  # (R, T_b, D)
        return torch.cat(contexts).reshape(batch_size * steps, -1).index_select(0, layout.slots)


def length_groups(mask: torch.Tensor, groups: int = 6) -> list[tuple[int, torch.Tensor]]:
    """Rows of a left-aligned ``mask [B, T]`` grouped by history length: ``[(bound, rows)]``
    where every row of ``rows`` has at most ``bound`` valid steps, bounds ``ceil(T k / groups)``
    for k = 1..groups (empty groups left out; rows in increasing order within a group)."""
    steps = mask.shape[1]
    bounds = sorted({max(1, math.ceil(steps * k / groups)) for k in range(1, groups + 1)})
    lengths = mask.sum(dim=1)  # (B,)
    bucket = torch.bucketize(lengths, torch.tensor(bounds, device=mask.device))  # (B,)
    counts = torch.bincount(bucket, minlength=len(bounds)).tolist()  # one host sync
    order = torch.argsort(bucket, stable=True)  # (B,): rows grouped, increasing within a group
    out, start = [], 0
    for bound, count in zip(bounds, counts):
        if count:
            out.append((bound, order[start:start + count]))
        start += count
    return out


def auto_groups(rows: int) -> int:
    """Length groups for a batch of ``rows`` rows: ``rows // 128`` within 2..6 (2 at batch
    128 and 256, 4 at 512, 6 from 768).

    Each group costs the block's per-call overhead (~75 ops forward + backward); the savings
    grow with its rows. Interleaved A/B of the MIAN training step (CPU time, Amazon-like
    lengths): at batch 128 two groups beat six by 8-10%, at 512 four beat six by 1-4%, at
    1024 four and six are within 3% and two lose 8-30% (docs/performance.md)."""
    return min(6, max(2, rows // 128))


def apply_by_length(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                    mask: torch.Tensor, groups: int | None = None) -> torch.Tensor:
    """``fn(x, mask)`` for a row-wise sequence function (each row's valid outputs depend only
    on its own valid steps, e.g. a :class:`TransformerBlock`), run per length group.

    ``x [B, T, D]``, ``mask [B, T]`` (left-aligned) -> ``[B, T, D']``. Rows are grouped by
    :func:`length_groups` (bounds T/G, 2T/G, ..., T; G = :func:`auto_groups` of the batch by
    default) and each group runs trimmed to its bound: attention costs ``T^2`` per row, and
    each group adds per-call overhead (docs/performance.md).
    Outputs at valid steps are those of ``fn`` on the whole batch (up to float rounding);
    outputs at trimmed steps are 0 (other padded steps: whatever ``fn`` gives). With one group
    ``fn`` runs once on ``x`` as given.
    """
    parts = length_groups(mask, auto_groups(x.shape[0]) if groups is None else groups)
    if len(parts) == 1 and parts[0][0] == x.shape[1]:
        return fn(x, mask)
    order = torch.cat([rows for _, rows in parts])  # (B,): row of each output
    sizes = [rows.shape[0] for _, rows in parts]
    # one gather, then contiguous row blocks: split's backward is one cat, where indexing x
    # per group would allocate and sum a full-size zero gradient per group
    outputs = []
    for (bound, _), x_g, mask_g in zip(parts, x.index_select(0, order).split(sizes),
                                       mask.index_select(0, order).split(sizes)):
        y = fn(x_g[:, :bound], mask_g[:, :bound])  # (R, bound, D')
        outputs.append(nn.functional.pad(y, (0, 0, 0, x.shape[1] - bound)))  # (R, T, D')
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    return torch.cat(outputs).index_select(0, inverse)  # (B, T, D')
