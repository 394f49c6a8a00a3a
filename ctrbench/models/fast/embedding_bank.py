"""The embeddings of a schema as one fused table with one sparse gradient per step.

Plain reference: one ``nn.Embedding(V, D, padding_idx=0)`` per vocabulary with its own
gradient (dense, or sparse with ``sparse=True``). :class:`EmbeddingBank` holds the same
parameters (each vocabulary's table is a block of one fused table) and must give the same
lookups and, per block, the same gradient, however many lookups a step makes and whatever else
uses the weight (``tests/test_fast_paths.py``).

Why: one table means one gradient, one L2 pass and one optimiser update per step instead of one
per vocabulary, which halved the step time at batch 128 (README, "Deviations from DESIGN.md");
:class:`FusedEmbedding` builds that one gradient from all lookups at once (summing one sparse
gradient per lookup costs ~8x more), already coalesced by :func:`unique_rows` (about 2x
cheaper than ``torch.unique`` / ``coalesce``). A dense table in the trainer (``adam``) skips
even that: its lookups' gradients and touched-row L2 are added straight into ``weight.grad``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrbench.models.fast import native_rows
from ctrbench.models.init import INIT_STD, init_truncated_normal
from ctrbench.schema import Batch, FieldSpec, Schema


class FusedEmbedding(nn.Embedding):
    """One table holding the rows of several vocabularies (see :class:`EmbeddingBank`).

    Row 0 is the one padding row: zero, and never in a gradient. However many lookups a step
    makes, the table gets ONE sparse gradient: each lookup's backward only records its ids and
    output gradient, and a hook on ``weight`` builds the gradient from all of them at once when
    autograd delivers it (summing one sparse gradient per lookup costs ~8x more). ``sparse``
    says what ``weight.grad`` ends up as: for ``sparse=False`` the sparse gradient is added in
    place into a dense ``weight.grad`` (made dense on first use), never a full-table dense
    gradient per lookup as ``nn.Embedding`` builds it.

    In-place accumulation (dense tables, the trainer's ``adam``): :meth:`zero_dense_grad` arms
    the next backward pass to add the lookups' gradients (and the touched-row L2 of
    :attr:`row_l2`) straight into the zeroed dense ``weight.grad`` (:func:`add_rows`), with
    no sort, no sparse tensor and no sparse-into-dense accumulation; autograd then receives an
    empty gradient. The same values as the sparse route up to float rounding (the lookups'
    gradients are summed in the same order; the L2 term is scaled before it is added). Only a
    backward pass that follows :meth:`zero_dense_grad` takes this route (once): call
    ``torch.autograd.grad`` on the weight only without an armed table.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, sparse: bool = False) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=0, sparse=sparse)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ids [N], grads [N, D])
        #: touched-row L2 ``(l2, row scales [rows] or None)`` added by the in-place route
        #: (set by :class:`ctrbench.engine.optim.FusedRowL2`; the sparse route leaves it to
        #: that class's gradient hook)
        self.row_l2: tuple[float, torch.Tensor | None] | None = None
        self._in_place = False  # armed by zero_dense_grad for the next backward pass
        self._hooked: weakref.ref | None = None  # the weight the gradient hooks are on
        self._scratch: torch.Tensor | None = None  # [num_embeddings] int64, for unique_rows
        self._collected_indices: torch.Tensor | None = None  # the last sparse gradient's rows
        # dense tables: rows written into weight.grad since zero_dense_grad (None: unknown)
        self._dirty_rows: list[torch.Tensor] | None = None
        #: the :class:`~ctrbench.models.fast.deferred_adam.DeferredAdam` stepping this table
        #: (set by it): a lookup first brings the rows it reads up to date
        self.deferred = None
        self._ensure_hooks()

    def _ensure_hooks(self) -> None:
        """Hook the current ``weight`` (again after a copy, unpickling or a replaced weight:
        tensor hooks do not travel with a parameter)."""
        weight = self.weight
        if (self._hooked is not None and self._hooked() is weight) or not weight.requires_grad:
            return
        weight.register_hook(self._collect_gradient)
        weight.register_post_accumulate_grad_hook(
            self._mark_coalesced if self.sparse else self._track_dense_grad)
        self._hooked = weakref.ref(weight)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_hooked"], state["_pending"], state["_in_place"] = None, [], False
        state["_scratch"] = state["_collected_indices"] = state["_dirty_rows"] = None
        state["deferred"] = None  # a copy is plain (its optimiser settles the original first)
        return state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Global row ids ``[...]`` -> ``[..., D]``."""
        self._ensure_hooks()
        if self.deferred is not None:
            self.deferred.catch_up(self.weight, ids)
        return _RecordedLookup.apply(self.weight, ids, self)

    def dirty_rows(self) -> torch.Tensor | None:
        """The rows (``[N]``, repeats allowed) a dense ``weight.grad`` may hold non-zero since
        :meth:`zero_dense_grad`, or None when unknown (any row)."""
        if self._dirty_rows is None:
            return None
        if not self._dirty_rows:
            return torch.empty(0, dtype=torch.long, device=self.weight.device)
        return torch.cat(self._dirty_rows) if len(self._dirty_rows) > 1 else self._dirty_rows[0]

    def _collect_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """The weight's summed gradient (empty from the lookups) + the recorded lookups', as a
        COALESCED sparse tensor (unique sorted rows, padding row excluded) when ``grad`` is
        sparse: its consumers (touched-row L2, row-wise Adam) need no sort of their own."""
        if not self._pending:
            return grad
        if len(self._pending) == 1:
            ids, values = self._pending[0]  # (N,), (N, D)
        else:
            ids = torch.cat([i for i, _ in self._pending])  # (N,)
            values = torch.cat([g for _, g in self._pending])  # (N, D)
        self._pending.clear()
        in_place, self._in_place = self._in_place, False
        target = self.weight.grad
        if (in_place and grad.is_sparse and grad._nnz() == 0 and target is not None
                and not target.is_sparse):
            self._add_in_place(target, ids, values)
            return grad  # empty: everything is already in weight.grad
        if grad.is_sparse and grad._nnz() > 0:  # other uses of the weight: merge them in
            ids = torch.cat([ids, grad._indices()[0]])
            values = torch.cat([values, grad._values()])
        keep = (ids != self.padding_idx).nonzero().squeeze(1)  # (N',)
        ids, values = ids.index_select(0, keep).long(), values.index_select(0, keep)
        if not grad.is_sparse:  # a dense gradient from elsewhere: add the rows into it
            return grad.index_add(0, ids, values.to(grad.dtype))
        rows, inverse = unique_rows(ids, self._scratch_on(ids.device))  # (R,), (N,)
        summed = values.new_zeros(rows.shape[0], values.shape[1]).index_add_(0, inverse, values)
        self._collected_indices = rows.unsqueeze(0)  # (1, R)
        return torch.sparse_coo_tensor(self._collected_indices, summed, self.weight.shape,
                                       is_coalesced=True, check_invariants=False)

    def _scratch_on(self, device: torch.device) -> torch.Tensor:
        """The ``[num_embeddings]`` int64 buffer of :func:`unique_rows` / :func:`distinct_rows`
        on ``device`` (made once)."""
        if self._scratch is None or self._scratch.device != device:
            self._scratch = torch.empty(self.num_embeddings, dtype=torch.long, device=device)
        return self._scratch

    def _add_in_place(self, target: torch.Tensor, ids: torch.Tensor,
                      values: torch.Tensor) -> None:
        """Add lookup gradients ``values [N, D]`` at rows ``ids [N]`` (padding included) and
        the touched-row L2 into the dense gradient ``target``; records the written rows."""
        ids = ids.long()
        if native_rows.native_usable(target):  # the same additions in one loop
            written = native_rows.add_lookup_grads(target, self.weight, ids, values, self.row_l2,
                                                   self._scratch_on(ids.device), self.padding_idx)
            self._collected_indices = written.unsqueeze(0)  # (1, N or R)
            return
        add_rows(target, ids, values.to(target.dtype))
        if self.row_l2 is not None:
            rows = distinct_rows(ids, self._scratch_on(ids.device))  # (R,) unsorted, padding too
            l2, scale = self.row_l2
            decay = self.weight.detach().index_select(0, rows)  # (R, D)
            if scale is not None:
                decay = decay * scale.index_select(0, rows).unsqueeze(1)
            add_rows(target, rows, decay.mul_(2 * l2).to(target.dtype))
            ids = rows
        target[self.padding_idx] = 0.0  # the padding row never has a gradient
        self._collected_indices = ids.unsqueeze(0)  # (1, N or R): rows to zero next step

    def _track_dense_grad(self, weight: torch.Tensor) -> None:
        """After autograd accumulated into a dense table's gradient: densify a first sparse one,
        and remember which rows may be non-zero (for :meth:`zero_dense_grad`)."""
        made, self._collected_indices = self._collected_indices, None
        if weight.grad is None:
            return
        if weight.grad.is_sparse:
            weight.grad = weight.grad.to_dense()
        if made is None:  # a dense contribution from elsewhere: any row may be non-zero
            self._dirty_rows = None
        elif self._dirty_rows is not None:
            self._dirty_rows.append(made[0])

    def zero_dense_grad(self) -> None:
        """Zero a dense table's gradient in place (allocate it on first use), touching only the
        rows that earlier steps' sparse gradients wrote when they are known: ~1 ms less per step
        than zeroing a 4M-value table on one core, same result."""
        weight = self.weight
        if weight.grad is None or weight.grad.is_sparse:
            weight.grad = torch.zeros_like(weight)
        elif self._dirty_rows is None:
            weight.grad.zero_()
        elif self._dirty_rows:
            rows = torch.cat(self._dirty_rows)
            if native_rows.native_usable(weight.grad):
                native_rows.zero_rows(weight.grad, rows)
            else:
                weight.grad.index_fill_(0, rows, 0.0)
        self._dirty_rows = []
        self._in_place = weight.requires_grad

    def _mark_coalesced(self, weight: torch.Tensor) -> None:
        """Autograd stores a stolen sparse gradient without its coalesced flag: restore it when
        ``weight.grad`` holds exactly the indices :meth:`_collect_gradient` made (unique, sorted;
        not after an accumulation over several backward passes, which concatenates)."""
        grad, made = weight.grad, self._collected_indices
        self._collected_indices = None
        if (grad is None or not grad.is_sparse or grad.is_coalesced() or made is None
                or grad._indices().data_ptr() != made.data_ptr()
                or grad._nnz() != made.shape[1]):
            return
        weight.grad = torch.sparse_coo_tensor(grad._indices(), grad._values(), grad.shape,
                                              is_coalesced=True, check_invariants=False)


def unique_rows(ids: torch.Tensor, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted distinct values ``rows [R]`` of ``ids [N]`` (int64 in ``[0, len(scratch))``)
    and ``inverse [N]`` with ``rows[inverse] == ids``, without sorting all N ids.

    ``scratch`` is any int64 buffer of one slot per possible id (its contents are ignored and
    overwritten): each id's slot receives the position of one of its occurrences, which marks
    that occurrence as the id's representative; only the R representatives are sorted (about
    2x cheaper than ``torch.unique`` / ``coalesce`` on lookups with repeated ids).
    """
    n = ids.shape[0]
    positions = torch.arange(n, device=ids.device)
    # scatter_/gather, not indexing: ~3x cheaper per call on the CPU at these sizes
    scratch.scatter_(0, ids, positions)  # with repeated ids one position wins; any will do
    representative = scratch.gather(0, ids)  # (N,): position of the winning occurrence
    winners = (representative == positions).nonzero().squeeze(1)  # (R,) positions
    rows, order = ids.index_select(0, winners).sort()  # (R,)
    rank = torch.empty(n, dtype=torch.long, device=ids.device)
    rank.scatter_(0, winners.index_select(0, order),
                  torch.arange(rows.shape[0], device=ids.device))
    return rows, rank.gather(0, representative)


def add_rows(target: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> None:
    """``target[ids[i]] += values[i]`` for ``target [V, D]``, ``ids [N]`` (repeats summed in
    order), ``values [N, D]``; a 1-wide table (LR's weights) as a flat ``scatter_add_``, about
    2x cheaper than ``index_add_`` there."""
    if target.shape[1] == 1 and target.is_contiguous() and values.is_contiguous():
        target.view(-1).scatter_add_(0, ids, values.view(-1))
    else:
        target.index_add_(0, ids, values)


def distinct_rows(ids: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """The distinct values of ``ids [N]`` (int64 in ``[0, len(scratch))``), unsorted, in O(N):
    the occurrences that win a scatter of their positions into ``scratch`` (see
    :func:`unique_rows`, which also sorts them and maps every id to its row)."""
    positions = torch.arange(ids.shape[0], device=ids.device)
    scratch.scatter_(0, ids, positions)
    return ids.masked_select(scratch.gather(0, ids) == positions)  # (R,)


class _RecordedLookup(torch.autograd.Function):
    """``weight[ids]`` whose backward records ``(ids, grad)`` on the table (see
    :class:`FusedEmbedding`) and hands autograd an empty sparse gradient for ``weight``."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor,  # type: ignore[override]
                table: FusedEmbedding) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.table = table
        return F.embedding(ids, weight, padding_idx=table.padding_idx)  # (..., D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        table = ctx.table
        if not ctx.needs_input_grad[0]:
            return None, None, None
        dim = grad.shape[-1]
        table._pending.append((ids.reshape(-1), grad.reshape(-1, dim)))
        empty = torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.long, device=grad.device),
                                        grad.new_empty(0, dim), table.weight.shape,
                                        is_coalesced=True, check_invariants=False)
        return empty, None, None


class EmbeddingBank(nn.Module):
    """The embeddings of all vocabularies of a schema, fused into one table.

    Fields sharing a vocabulary share its rows. Vocabulary ``v`` (``V`` ids, id 0 = padding)
    owns the block of global rows ``offset_v .. offset_v + V - 1`` (id ``i`` -> row
    ``offset_v + i``), but id 0 of every vocabulary maps to the one global padding row 0 (the
    first block's row 0), which stays zero and receives no gradient; the other blocks' row 0 is
    zero and never looked up, so that a block is a view shaped like a per-vocabulary table
    (:meth:`block`). One table means one gradient, one L2 pass and one
    optimiser update per bank and step instead of one per vocabulary. ``sparse=True`` makes
    ``weight.grad`` sparse (for row-wise lazy Adam). Ids are not range-checked per lookup: a
    local id ``>= V`` would read the next vocabulary's rows (the data builder guarantees the
    ranges; ``nn.Embedding`` used to raise).

    :meth:`lookup` embeds a vocabulary's local ids, :meth:`lookup_stacked` several same-shaped
    id tensors in one lookup and :meth:`single_fields` groups of single-valued fields.
    """

    def __init__(self, schema: Schema, dim: int, sparse: bool = False,
                 init_std: float = INIT_STD) -> None:
        super().__init__()
        self.dim = dim
        self.sparse = sparse
        self.vocab_sizes = dict(schema.vocab_sizes)
        self.offsets: dict[str, int] = {}
        total = 0
        for vocab, size in self.vocab_sizes.items():
            self.offsets[vocab] = total  # local id i >= 1 -> global row offset + i
            total += size
        self.embedding = FusedEmbedding(total, dim, sparse=sparse)
        with torch.no_grad():
            init_truncated_normal(self.embedding.weight, init_std)
            self.embedding.weight[list(self.offsets.values())] = 0.0  # every block's row 0
        self._vocab_of = {f.name: f.vocab for f in schema.fields}
        self._offset_vectors: dict[tuple, torch.Tensor] = {}  # (vocabs, device) -> offsets [K]

    @property
    def weight(self) -> nn.Parameter:
        """The fused table ``[sum_v V_v, D]``."""
        return self.embedding.weight

    def vocab_rows(self, vocab: str) -> slice:
        """The global rows of ``vocab``'s block: local id ``i`` is row ``start + i``."""
        start = self.offsets[vocab]
        return slice(start, start + self.vocab_sizes[vocab])

    def block(self, vocab: str) -> torch.Tensor:
        """``vocab``'s block of the fused table, ``[V, D]``: a view (writes go through). Its
        row 0 is zero and unused (id 0 embeds as the shared padding row 0)."""
        if self.embedding.deferred is not None:  # a read outside the lookups: settle first
            self.embedding.deferred.settle()
        return self.weight[self.vocab_rows(vocab)]

    def global_ids(self, vocab: str, ids: torch.Tensor) -> torch.Tensor:
        """Local ids of ``vocab`` -> global rows (0 stays 0); same shape."""
        offset = self.offsets[vocab]
        if offset == 0:
            return ids
        return torch.where(ids > 0, ids + offset, 0)

    def lookup(self, vocab: str, ids: torch.Tensor) -> torch.Tensor:
        """Embed local ids of ``vocab``: ``[...]`` -> ``[..., D]``."""
        return self.embedding(self.global_ids(vocab, ids))

    def lookup_stacked(self, pairs: Sequence[tuple[str, torch.Tensor]]) -> torch.Tensor:
        """Embed same-shaped id tensors ``[(vocab, ids [...]), ...]`` in one lookup, stacked
        on a new axis before the embedding axis: ``[..., len(pairs), D]``."""
        if not pairs:
            raise ValueError("no fields to embed")
        ids = torch.stack([t for _, t in pairs], dim=-1)  # (..., K) local ids
        offsets = self._offsets_of(tuple(v for v, _ in pairs), ids.device)  # (K,)
        return self.embedding(torch.where(ids > 0, ids + offsets, 0))  # (..., K, D)

    def _offsets_of(self, vocabs: tuple[str, ...], device: torch.device) -> torch.Tensor:
        """The global row offsets of ``vocabs`` as a cached ``[K]`` int64 tensor."""
        key = (vocabs, device)
        offsets = self._offset_vectors.get(key)
        if offsets is None:
            offsets = torch.tensor([self.offsets[v] for v in vocabs], device=device)
            self._offset_vectors[key] = offsets
        return offsets

    def single_fields(self, batch: Batch, groups: Sequence[Sequence[FieldSpec]]
                      ) -> list[torch.Tensor]:
        """Embed groups of single-valued fields (``[B]`` ids each) in ONE lookup: one
        ``[B, K_g, D]`` per group, fields in order (``K_g`` may be 0)."""
        specs = [spec for group in groups for spec in group]
        if not specs:
            raise ValueError("no fields to embed")
        embedded = self.lookup_stacked([(s.vocab, batch[s.name]) for s in specs])  # (B, K, D)
        return list(embedded.split([len(group) for group in groups], dim=1))

    def fields_and_history(self, batch: Batch, singles: Sequence[FieldSpec],
                           history: Sequence[FieldSpec]) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-valued fields ``singles`` (``[B]`` ids each) and history fields ``history``
        (``[B, T]`` each) in ONE lookup: ``[B, K, D]`` and ``[B, T, K', D]``, fields in order.

        One lookup instead of :meth:`single_fields` + :meth:`lookup_stacked`: one autograd
        node, one recorded gradient and one id translation per step (LR's step at batch 128:
        a tenth of its time was the second lookup)."""
        rows = self.fields_and_history_rows(batch, singles, history)  # (B, K + T K')
        steps = (rows.shape[1] - len(singles)) // len(history)
        embedded = self.embedding(rows)  # (B, K + T K', D)
        first, rest = embedded.split([len(singles), steps * len(history)], dim=1)
        return first, rest.unflatten(1, (steps, len(history)))  # (B, K, D), (B, T, K', D)

    def fields_and_history_rows(self, batch: Batch, singles: Sequence[FieldSpec],
                                history: Sequence[FieldSpec]) -> torch.Tensor:
        """The global rows :meth:`fields_and_history` looks up, ``[B, K + T K']``: the single
        fields in order, then the history fields step by step (step-major)."""
        if not singles or not history:
            raise ValueError("fields_and_history needs single and history fields")
        single_ids = torch.stack([batch[s.name] for s in singles], dim=-1)  # (B, K)
        history_ids = torch.stack([batch[s.name] for s in history], dim=-1)  # (B, T, K')
        steps = history_ids.shape[1]
        ids = torch.cat([single_ids, history_ids.flatten(1)], dim=1)  # (B, K + T K')
        vocabs = (*(s.vocab for s in singles), *tuple(s.vocab for s in history) * steps)
        offsets = self._offsets_of(vocabs, ids.device)  # (K + T K',)
        return torch.where(ids > 0, ids + offsets, 0)  # (B, K + T K')

    def forward(self, batch: Batch, name: str) -> torch.Tensor:
        """Embed field ``name``: ``[B]`` -> ``[B, D]`` or ``[B, T]`` -> ``[B, T, D]``."""
        return self.lookup(self._vocab_of[name], batch[name])
