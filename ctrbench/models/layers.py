"""Shared building blocks. Each layer documents its input and output shapes.

B = batch, T = history length, D = embedding width, F = number of fields.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrbench.schema import Batch, FieldSpec, Schema

INIT_STD = 0.02  # the paper's truncated-normal initialisation


def init_truncated_normal(tensor: torch.Tensor, std: float = INIT_STD) -> torch.Tensor:
    """Truncated normal in [-2 std, 2 std] (the paper's initialiser)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


class FusedEmbedding(nn.Embedding):
    """One table holding the rows of several vocabularies (see :class:`EmbeddingBank`).

    Row 0 is the one padding row: zero, and never in a gradient. However many lookups a step
    makes, the table gets ONE sparse gradient: each lookup's backward only records its ids and
    output gradient, and a hook on ``weight`` builds the gradient from all of them at once when
    autograd delivers it (summing one sparse gradient per lookup costs ~8x more). ``sparse``
    says what ``weight.grad`` ends up as: for ``sparse=False`` the sparse gradient is added in
    place into a dense ``weight.grad`` (made dense on first use), never a full-table dense
    gradient per lookup as ``nn.Embedding`` builds it.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, sparse: bool = False) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=0, sparse=sparse)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ids [N], grads [N, D])
        self._hooked: weakref.ref | None = None  # the weight the gradient hooks are on
        self._scratch: torch.Tensor | None = None  # [num_embeddings] int64, for unique_rows
        self._collected_indices: torch.Tensor | None = None  # the last sparse gradient's rows
        # dense tables: rows written into weight.grad since zero_dense_grad (None: unknown)
        self._dirty_rows: list[torch.Tensor] | None = None
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
        state["_hooked"], state["_pending"] = None, []
        state["_scratch"] = state["_collected_indices"] = state["_dirty_rows"] = None
        return state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Global row ids ``[...]`` -> ``[..., D]``."""
        self._ensure_hooks()
        return _RecordedLookup.apply(self.weight, ids, self)

    def _collect_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """The weight's summed gradient (empty from the lookups) + the recorded lookups', as a
        COALESCED sparse tensor (unique sorted rows, padding row excluded) when ``grad`` is
        sparse: its consumers (touched-row L2, row-wise Adam) need no sort of their own."""
        if not self._pending:
            return grad
        ids = torch.cat([i for i, _ in self._pending])  # (N,)
        values = torch.cat([g for _, g in self._pending])  # (N, D)
        self._pending.clear()
        if grad.is_sparse and grad._nnz() > 0:  # other uses of the weight: merge them in
            ids = torch.cat([ids, grad._indices()[0]])
            values = torch.cat([values, grad._values()])
        keep = ids != self.padding_idx
        ids, values = ids[keep].long(), values[keep]
        if not grad.is_sparse:  # a dense gradient from elsewhere: add the rows into it
            return grad.index_add(0, ids, values.to(grad.dtype))
        if self._scratch is None or self._scratch.device != ids.device:
            self._scratch = torch.empty(self.num_embeddings, dtype=torch.long, device=ids.device)
        rows, inverse = unique_rows(ids, self._scratch)  # (R,), (N,)
        summed = values.new_zeros(rows.shape[0], values.shape[1]).index_add_(0, inverse, values)
        self._collected_indices = rows.unsqueeze(0)  # (1, R)
        return torch.sparse_coo_tensor(self._collected_indices, summed, self.weight.shape,
                                       is_coalesced=True, check_invariants=False)

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
            weight.grad.index_fill_(0, torch.cat(self._dirty_rows), 0.0)
        self._dirty_rows = []

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
    scratch[ids] = positions  # with repeated ids one position wins; any winner will do
    representative = scratch[ids]  # (N,): position of the winning occurrence of each id
    winners = (representative == positions).nonzero().squeeze(1)  # (R,) positions
    rows, order = ids[winners].sort()  # (R,)
    rank = torch.empty(n, dtype=torch.long, device=ids.device)
    rank[winners[order]] = torch.arange(rows.shape[0], device=ids.device)
    return rows, rank[representative]


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

    def forward(self, batch: Batch, name: str) -> torch.Tensor:
        """Embed field ``name``: ``[B]`` -> ``[B, D]`` or ``[B, T]`` -> ``[B, T, D]``."""
        return self.lookup(self._vocab_of[name], batch[name])


class MLP(nn.Module):
    """Linear -> activation -> dropout, per hidden width. Input ``[..., in]`` -> ``[..., out]``.

    ``activation`` is "relu", "prelu" or "dice"; no BatchNorm, so a sample's output never depends
    on the rest of its batch.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0,
                 activation: str = "relu", out_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            layers.append(make_activation(activation, h))
            if dropout > 0:
                layers.append(UniformDropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Dice(nn.Module):
    """DIN's data-adaptive activation: ``p(x) * x + (1 - p(x)) * alpha * x``,
    ``p(x) = sigmoid((x - mean) / sqrt(var + eps))``.

    Training normalises with the batch's statistics and updates running ones; evaluation uses the
    running statistics only, so at evaluation a sample's output is independent of its batch.
    Input ``[B, H]`` or ``[B, T, H]``; statistics per feature over all leading axes, in float32
    (the running buffers' dtype) also under bf16 autocast. Computed by :class:`_DiceFunction`
    (hand-written backward: half the passes over ``[N, H]`` of autograd's graph).
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.01) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.eps, self.momentum = eps, momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()  # (N, H)
        if self.training:
            out, mean, var = _DiceFunction.apply(flat, self.alpha.float(), None, None,
                                                 self.eps)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            out, _, _ = _DiceFunction.apply(flat, self.alpha.float(), self.running_mean,
                                            self.running_var, self.eps)
        return out.to(x.dtype).reshape(x.shape)


class _DiceFunction(torch.autograd.Function):
    """Dice on ``x [N, H]`` (float32) with ``alpha [H]``: returns ``(y, mean, var)``.

    ``mean``/``var`` None: the batch's statistics (biased variance), differentiated through as in
    batch normalisation; given: fixed statistics. With ``z = (x - mean) * rstd``,
    ``p = sigmoid(z)``, ``g = alpha + (1 - alpha) p`` and ``y = x g``:
    ``dL/dalpha = sum_n dy x (1 - p)``; ``dz = dy x (1 - alpha) p (1 - p)``;
    ``dL/dx = dy g + rstd (dz - mean_n(dz) - z mean_n(dz z))`` (the last two terms only with
    batch statistics).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor,  # type: ignore[override]
                mean: torch.Tensor | None, var: torch.Tensor | None, eps: float):
        batch_stats = mean is None
        if batch_stats:
            n = x.shape[0]
            mean = x.sum(dim=0).div_(n)  # (H,)
            centred = x - mean  # (N, H)
            var = centred.square().sum(dim=0).div_(n)  # (H,)
        else:
            centred = x - mean
        rstd = (var + eps).rsqrt_()  # (H,)
        z = centred.mul_(rstd)  # (N, H)
        p = torch.sigmoid(z)  # (N, H)
        gate = torch.addcmul(alpha, p, 1 - alpha)  # (N, H)
        ctx.save_for_backward(x, z, p, gate, alpha, rstd)
        ctx.batch_stats = batch_stats
        ctx.mark_non_differentiable(mean, var)
        return x * gate, mean, var

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor
                 ):  # type: ignore[override]
        x, z, p, gate, alpha, rstd = ctx.saved_tensors
        dx = dy * gate  # (N, H)
        dyx = dy * x  # (N, H)
        dalpha = (dyx - dyx * p).sum(dim=0)  # (H,)
        dz = dyx.mul_(p).mul_(1 - p).mul_(1 - alpha)  # (N, H)
        if ctx.batch_stats:
            n = x.shape[0]
            dz_mean = dz.sum(dim=0).div_(n)  # (H,)
            dzz_mean = (dz * z).sum(dim=0).div_(n)  # (H,)
            dz = dz.sub_(dz_mean).sub_(z * dzz_mean)
        dx.add_(dz.mul_(rstd))
        return dx, dalpha, None, None, None


class UniformDropout(nn.Dropout):
    """``nn.Dropout`` (same parameters, same train/eval behaviour, same distribution: keep with
    probability ``1 - p``, scale ``1 / (1 - p)``) drawing its keep mask from ``rand`` on the CPU,
    where ``bernoulli_`` (``F.dropout``) costs ~2x as much (forward + backward at ``[128, 256]``:
    210 vs 340 us). A different random stream than ``nn.Dropout``; not in place. Other devices
    use ``F.dropout`` (one fused kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        keep = torch.rand_like(x) >= self.p  # (..., D)
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))


def make_activation(name: str, width: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(width)
    if name == "dice":
        return Dice(width)
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r} (relu, prelu, dice, sigmoid)")


def masked_mean(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps: ``seq [B, T, D]``, ``mask [B, T]`` -> ``[B, D]`` (0 if none valid)."""
    weights = mask.to(seq.dtype).unsqueeze(-1)  # (B, T, 1)
    total = (seq * weights).sum(dim=1)  # (B, D)
    count = weights.sum(dim=1).clamp_min(1.0)  # (B, 1)
    return total / count


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring masked positions; rows with no valid position give zeros."""
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(weights, nan=0.0)


# --------------------------------------------------------------------------- feature interactions
def first_order_bank(schema: Schema, sparse: bool = False,
                     init_std: float = INIT_STD) -> EmbeddingBank:
    """The linear (first-order) weights: a 1-wide embedding bank (one fused table).

    Initialised truncated-normal with ``init_std`` (0.02 by default; ``0`` gives exact zeros),
    never N(0, 1): with a dozen fields, unit-variance weights start the logits far from 0
    (FuxiCTR's LR began at logloss 1.3-2.3). Row 0 (padding) is zero. Embed fields with it as
    with any bank: ``[B] -> [B, 1]``.
    """
    bank = EmbeddingBank(schema, 1, sparse=sparse, init_std=init_std if init_std > 0 else INIT_STD)
    if init_std <= 0:
        with torch.no_grad():
            bank.weight.zero_()
    return bank


class FactorizationMachine(nn.Module):
    """FM's second-order term: ``sum_{i<j} <v_i, v_j>``.

    Input ``[B, F, D]`` (one embedding per field) -> ``[B]``, computed in O(F D) as
    ``0.5 * sum_d ((sum_f v_fd)^2 - sum_f v_fd^2)``.
    """

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        square_of_sum = fields.sum(dim=1).pow(2)  # (B, D)
        sum_of_squares = fields.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)  # (B,)


class CrossLayer(nn.Module):
    """One DCN cross layer: ``x_{l+1} = x0 * (x_l . w) + b + x_l``.

    Inputs ``x0``, ``xl``: ``[B, W]`` -> ``[B, W]``; ``w`` and ``b`` are ``[W]`` vectors.
    """

    def __init__(self, width: int, init_std: float = INIT_STD) -> None:
        super().__init__()
        self.weight = nn.Parameter(init_truncated_normal(torch.empty(width), init_std))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        projection = (xl @ self.weight).unsqueeze(-1)  # (B, 1)
        return x0 * projection + self.bias + xl  # (B, W)


class CrossNetwork(nn.Module):
    """``n_layers`` stacked cross layers, each crossing with the input: ``[B, W] -> [B, W]``."""

    def __init__(self, width: int, n_layers: int, init_std: float = INIT_STD) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossLayer(width, init_std) for _ in range(n_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)  # (B, W)
        return x


class CIN(nn.Module):
    """xDeepFM's compressed interaction network.

    Input ``x0 [B, m, D]`` with ``m`` = the number of FIELDS (not embedding tables: fields that
    share a table are still separate fields). Layer k builds the ``m * H_{k-1}`` Hadamard
    products ``x0[:, i] * x_{k-1}[:, j]`` (flattened as ``i * H_{k-1} + j``) and compresses them
    with ``H_k`` filters (``layers[k]``: weight ``[H_k, m*H_{k-1}]``, a 1x1 convolution written
    as a linear map) into ``x_k [B, H_k, D]``. With ``split_half`` every layer but the last
    sends its second half of maps to the output and its first half to the next layer. Each
    output map is sum-pooled over D: output ``[B, out_dim]``.
    """

    def __init__(self, num_fields: int, layer_sizes: Sequence[int], split_half: bool = True,
                 activation: str = "relu") -> None:
        super().__init__()
        if not layer_sizes:
            raise ValueError("CIN needs at least one layer")
        if activation not in ("relu", "identity"):
            raise ValueError(f"CIN activation must be 'relu' or 'identity', not {activation!r}")
        if split_half and any(size % 2 for size in layer_sizes[:-1]):
            raise ValueError(f"CIN with split_half needs even layer sizes, got {list(layer_sizes)}")
        self.num_fields = num_fields
        self.split_half = split_half
        self.activation = activation
        self.layers = nn.ModuleList()
        self.next_sizes: list[int] = []  # maps passed on to the next layer, per layer
        out_dim, prev = 0, num_fields
        for k, size in enumerate(layer_sizes):
            self.layers.append(nn.Linear(num_fields * prev, size))
            split = split_half and k < len(layer_sizes) - 1
            self.next_sizes.append(size // 2 if split else size)
            out_dim += size - self.next_sizes[-1] if split else size
            prev = self.next_sizes[-1]
        self.out_dim = out_dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        batch, m, dim = x0.shape
        if m != self.num_fields:
            raise ValueError(f"CIN built for {self.num_fields} fields, got {m}")
        base = x0.transpose(1, 2).unsqueeze(3)  # (B, D, m, 1): maps kept D-major for the matmul
        hidden = x0.transpose(1, 2)  # (B, D, H_0 = m)
        pooled: list[torch.Tensor] = []
        for k, layer in enumerate(self.layers):
            z = (base * hidden.unsqueeze(2)).reshape(batch, dim, -1)  # (B, D, m*H_{k-1})
            out = layer(z)  # (B, D, H_k)
            if self.activation == "relu":
                out = torch.relu(out)
            if self.split_half and k < len(self.layers) - 1:
                hidden, direct = out.split([self.next_sizes[k], out.shape[2] - self.next_sizes[k]],
                                           dim=2)
            else:
                hidden, direct = out, out
            pooled.append(direct.sum(dim=1))  # (B, kept_k)
        return torch.cat(pooled, dim=1)  # (B, out_dim)
