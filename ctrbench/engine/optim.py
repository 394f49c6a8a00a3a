"""Optimisers and regularisation for the trainer.

- ``adam``: Adam over every parameter (dense embedding gradients: every step moves every row
  of every table, whatever the batch touched). A bank's fused table keeps one dense gradient
  buffer, zeroed in place, into which its per-step sparse gradient is added (see
  :class:`ctrbench.models.fast.embedding_bank.FusedEmbedding`). ``torch.optim.Adam`` (fused;
  :class:`~ctrbench.engine.dense_adam.DenseAdam`, its bookkeeping once per step) steps the
  parameters, but for float32 CPU tables at least 8 wide of at least 1M values
  without weight decay:
  :class:`~ctrbench.models.fast.deferred_adam.DeferredAdam` applies the same steps, each
  untouched row's late (when it is next read, or :meth:`Optimizers.settle`), up to rounding.
- ``lazy_adam``: the model is built with ``sparse=True`` so embedding tables emit sparse
  gradients; :class:`RowWiseAdam` (SparseAdam's update) changes the moments and weights of only
  the rows a batch touched ("row-wise lazy Adam"), plain Adam the dense rest.

L2 (``TrainConfig.l2_target``):

- ``batch_embeddings``: touched-row L2: each step adds ``l2 * sum ||w_r||^2`` over the UNIQUE
  rows ``r`` of every embedding table that the batch looked up (padding rows excluded) to the
  mean BCE of the batch: as its gradient ``2 l2 w_r`` (a fused bank table under adam:
  :class:`FusedRowL2`, a hook on the table's one sparse gradient per step; lazy_adam's sparse
  tables: inside RowWiseAdam), or as a loss term for a plain dense ``nn.Embedding``
  (:class:`TouchedRows`). It is not divided by the batch size nor weighted by feature
  frequency: a row seen in many batches is decayed in each of them, so over an epoch frequent
  ids are regularised MORE than rare ones. This is NOT DIN's weighting (below), which
  divides by the frequency precisely so that they are not. Dense layers are not regularised.
- ``din_frequency``: DIN's mini-batch-aware regulariser (Zhou et al. 2018, eq. 4): the same
  touched-row L2 with each row ``j`` scaled by ``1 / n_j``, ``n_j`` = how often id ``j``
  occurs in the training split (every field and history step that uses its vocabulary;
  :func:`row_frequencies`), so that over an epoch every row is decayed about equally, whatever
  its frequency. Gradient per touched row: ``2 l2 w_j / n_j``.
- ``all``: coupled weight decay ``l2`` (Adam's ``weight_decay``) on every dense parameter; under
  ``lazy_adam`` the sparse tables get the touched-row L2 above instead (a lazy optimiser
  cannot decay rows it does not touch).
- ``none``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrbench.cards import TrainConfig
from ctrbench.engine.dense_adam import DenseAdam
from ctrbench.models.fast import deferred_adam
from ctrbench.models.fast.deferred_adam import DeferredAdam
from ctrbench.models.fast.embedding_bank import EmbeddingBank, FusedEmbedding
from ctrbench.schema import Schema

#: ``id(table weight) -> [rows]`` per-row L2 scale (``1 / n_j``) for ``din_frequency``
RowScales = dict[int, torch.Tensor]
ROW_L2_TARGETS = ("batch_embeddings", "din_frequency")

MASK_FACTOR = 32  # find touched rows with a boolean mask when rows <= this x lookups


class TouchedRows:
    """Records which rows each embedding table looks up during forward passes.

    Forward hooks on the ``nn.Embedding`` modules collect the index tensors; :meth:`penalty`
    returns ``sum ||w_r||^2`` over the unique touched rows, looked up with the table's own
    ``sparse`` setting so that a sparse table keeps receiving sparse gradients.
    """

    def __init__(self, modules: Iterable[nn.Embedding], scales: RowScales | None = None) -> None:
        self.scales = scales or {}
        self.modules: list[nn.Embedding] = []
        seen: set[int] = set()
        for module in modules:
            if id(module) not in seen:
                seen.add(id(module))
                self.modules.append(module)
        self._ids: dict[int, list[torch.Tensor]] = {id(m): [] for m in self.modules}
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._ids[id(module)].append(args[0].detach().reshape(-1))

    def clear(self) -> None:
        for ids in self._ids.values():
            ids.clear()

    def unique_rows(self, module: nn.Embedding) -> torch.Tensor:
        """Unique non-padding row ids ``module`` looked up since the last :meth:`clear`."""
        ids = self._ids[id(module)]
        if not ids:
            return torch.empty(0, dtype=torch.long, device=module.weight.device)
        flat = torch.cat(ids) if len(ids) > 1 else ids[0]
        if module.num_embeddings <= MASK_FACTOR * flat.numel():
            # cheaper than a sort when the table is small relative to the lookups
            touched = torch.zeros(module.num_embeddings, dtype=torch.bool, device=flat.device)
            touched[flat] = True
            if module.padding_idx is not None:
                touched[module.padding_idx] = False
            return touched.nonzero().squeeze(1)
        rows = torch.unique(flat.long())
        if module.padding_idx is not None:
            rows = rows[rows != module.padding_idx]
        return rows

    def penalty(self) -> torch.Tensor | None:
        """``sum ||w_r||^2`` over touched rows of all tables, or None if nothing was touched."""
        total: torch.Tensor | None = None
        for module in self.modules:
            rows = self.unique_rows(module)
            if rows.numel() == 0:
                continue
            weights = F.embedding(rows, module.weight, sparse=module.sparse)  # (R, D)
            squares = weights.float().pow(2).sum(1)  # (R,)
            scale = self.scales.get(id(module.weight))
            term = (squares * scale[rows]).sum() if scale is not None else squares.sum()
            total = term if total is None else total + term
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class FusedRowL2:
    """The touched-row L2 of fused bank tables (:class:`FusedEmbedding`), as a gradient hook.

    A fused table's backward yields ONE sparse gradient per step (autograd sums its lookups
    before the hook runs); the hook coalesces it (its indices are then the unique touched rows,
    padding excluded by the lookup) and adds ``2 * l2 * w_r`` to each touched row: the gradient
    of ``l2 * sum ||w_r||^2`` without a second lookup, ``unique`` or loss term. The penalty is
    therefore not part of the loss value the trainer sees. A dense table accumulating in
    place (:class:`FusedEmbedding`, after ``zero_dense_grad``) hands this hook an empty
    gradient and adds the same L2 itself, from its ``row_l2``, which this class sets.
    """

    def __init__(self, modules: Iterable[FusedEmbedding], l2: float,
                 scales: RowScales | None = None) -> None:
        self.l2 = l2
        self.scales = scales or {}
        self._handles = []
        self._tables: list[FusedEmbedding] = []
        seen: set[int] = set()
        for module in modules:
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                self._handles.append(module.weight.register_hook(self._hook_for(module.weight)))
                module.row_l2 = (l2, self.scales.get(id(module.weight)))
                self._tables.append(module)

    def _hook_for(self, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def add_l2(grad: torch.Tensor) -> torch.Tensor:
            if not grad.is_sparse:
                raise RuntimeError("FusedRowL2 needs the sparse gradient of a fused table")
            if grad._nnz() == 0:  # nothing touched, or added in place by the table
                return grad
            grad = grad.coalesce()  # (R unique rows, D)
            rows = grad.indices()[0]
            decay = weight.detach().index_select(0, rows)  # (R, D)
            scale = self.scales.get(id(weight))
            if scale is not None:
                decay = decay * scale[rows].unsqueeze(1)
            values = grad.values().add(decay, alpha=2 * self.l2)
            return torch.sparse_coo_tensor(grad.indices(), values, grad.shape,
                                           is_coalesced=True, check_invariants=False)
        return add_l2

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for table in self._tables:
            table.row_l2 = None
        self._tables = []


class BatchEmbeddingL2:
    """DIN's touched-row L2 over a model's embedding tables, whatever their kind: fused bank
    tables through :class:`FusedRowL2` (gradient hook), plain ``nn.Embedding`` modules through
    :class:`TouchedRows` (a loss term, :meth:`penalty`)."""

    def __init__(self, modules: Iterable[nn.Embedding], l2: float,
                 scales: RowScales | None = None) -> None:
        modules = list(modules)
        self.l2 = l2
        fused = [m for m in modules if isinstance(m, FusedEmbedding)]
        plain = [m for m in modules if not isinstance(m, FusedEmbedding)]
        self.fused = FusedRowL2(fused, l2, scales) if fused else None
        self.touched = TouchedRows(plain, scales) if plain else None

    def clear(self) -> None:
        if self.touched is not None:
            self.touched.clear()

    def penalty(self) -> torch.Tensor | None:
        """``l2 * sum ||w_r||^2`` over the plain tables' touched rows, or None."""
        if self.touched is None:
            return None
        penalty = self.touched.penalty()
        return None if penalty is None else self.l2 * penalty

    def remove(self) -> None:
        if self.fused is not None:
            self.fused.remove()
        if self.touched is not None:
            self.touched.remove()


class RowWiseAdam(torch.optim.Optimizer):
    """Lazy Adam for embedding tables with sparse gradients: only the rows in the gradient move.

    The same update as ``torch.optim.SparseAdam`` (moments and parameters change only on the
    rows a batch touched; the step count is global), with fewer passes over the rows; and
    ``l2`` adds the gradient of ``l2 * ||w_r||^2`` (``2 * l2 * w_r``) to each touched row, i.e.
    the touched-row L2 of the module docstring without an extra autograd term (times
    ``row_scales[id(p)][row]`` for ``din_frequency``).
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 l2: float = 0.0, row_scales: RowScales | None = None) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "l2": l2})
        self.row_scales = row_scales or {}

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("RowWiseAdam needs sparse gradients (sparse=True tables)")
                grad = p.grad.coalesce()  # unique touched rows, duplicates summed
                rows = grad.indices()[0]
                values = grad.values()  # (R, D)
                weights = p.index_select(0, rows)  # (R, D)
                if group["l2"] > 0:
                    scale = self.row_scales.get(id(p))
                    decay = weights if scale is None else weights * scale[rows].unsqueeze(1)
                    values = values.add(decay, alpha=2 * group["l2"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    # both moments in one [2, rows, D] tensor: one gather and one scatter per
                    # step, and each moment of the gathered rows is contiguous
                    state["moments"] = torch.zeros(2, *p.shape, dtype=p.dtype, device=p.device)
                state["step"] += 1
                moments = state["moments"].index_select(1, rows)  # (2, R, D)
                m, v = moments.unbind(0)  # contiguous (R, D) each
                m.lerp_(values, 1 - beta1)
                v.mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["moments"].index_copy_(1, rows, moments)
                bias1 = 1 - beta1 ** state["step"]
                bias2 = 1 - beta2 ** state["step"]
                step_size = group["lr"] * math.sqrt(bias2) / bias1
                # rows are unique: read-update-write (index_add_ costs ~4x more on the CPU)
                weights.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
                p.index_copy_(0, rows, weights)


class Optimizers:
    """One or two torch optimisers stepped together (dense Adam + RowWiseAdam for tables).

    ``dense_tables``: fused tables under dense Adam, whose dense gradient is zeroed in place
    instead of freed (:meth:`FusedEmbedding.zero_dense_grad`: their sparse per-step gradient
    then adds into it in place, so no full-table gradient is allocated per step).
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer],
                 dense_tables: Sequence[FusedEmbedding] = ()) -> None:
        self.optimizers = list(optimizers)
        self.dense_tables = list(dense_tables)

    def zero_grad(self) -> None:
        for table in self.dense_tables:
            table.zero_dense_grad()
        keep = {id(table.weight) for table in self.dense_tables}
        for opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) not in keep:
                        p.grad = None

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def settle(self) -> None:
        """Bring the rows of deferred tables up to date (before reading the weights other than
        through lookups, e.g. a state dict)."""
        for opt in self.optimizers:
            if isinstance(opt, DeferredAdam):
                opt.settle()

    def release(self) -> None:
        """:meth:`settle` and detach the deferred tables: training is over."""
        for opt in self.optimizers:
            if isinstance(opt, DeferredAdam):
                opt.release()

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]


def sparse_tables(model: nn.Module) -> list[nn.Embedding]:
    """Embedding modules of ``model`` that emit sparse gradients."""
    return [m for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]


def row_frequencies(model: nn.Module, schema: Schema,
                    columns: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``id(bank weight) -> n [rows]``: how often each row of every :class:`EmbeddingBank` of
    ``model`` is looked up by the training ``columns`` (field name -> ids ``[N]`` or
    ``[N, T]``; id 0 = padding, never counted)."""
    out: dict[int, torch.Tensor] = {}
    for bank in (m for m in model.modules() if isinstance(m, EmbeddingBank)):
        counts = torch.zeros(bank.weight.shape[0], dtype=torch.float64,
                             device=bank.weight.device)
        for spec in schema.fields:
            ids = columns[spec.name].reshape(-1).long()
            ids = ids[ids > 0]
            rows = bank.global_ids(spec.vocab, ids).to(counts.device)
            counts += torch.bincount(rows, minlength=counts.shape[0]).to(counts.dtype)
        out[id(bank.weight)] = counts
    return out


def frequency_scales(frequencies: dict[int, torch.Tensor]) -> RowScales:
    """``1 / n_j`` per row (rows never seen in training: 1), float32."""
    return {key: counts.clamp(min=1).reciprocal().float() for key, counts in frequencies.items()}


def build_optimizers(model: nn.Module, cfg: TrainConfig,
                     row_scales: RowScales | None = None) -> Optimizers:
    """Adam (dense) and, for ``lazy_adam``, RowWiseAdam over the sparse embedding tables
    (``row_scales``: the ``din_frequency`` weights of their touched-row L2)."""
    sparse_params: list[torch.Tensor] = []
    sparse_ids: set[int] = set()
    if cfg.optimizer == "lazy_adam":
        for module in sparse_tables(model):
            if id(module.weight) not in sparse_ids and module.weight.requires_grad:
                sparse_ids.add(id(module.weight))
                sparse_params.append(module.weight)
    elif sparse_tables(model):
        raise ValueError("optimizer 'adam' needs dense embeddings; the model was built sparse")
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    weight_decay = cfg.l2 if cfg.l2_target == "all" else 0.0
    optimizers: list[torch.optim.Optimizer] = []
    dense_ids = {id(p) for p in dense}
    fused_dense = {id(m.weight): m for m in model.modules()
                   if isinstance(m, FusedEmbedding) and id(m.weight) in dense_ids}
    # tables deferred_adam takes (float32 CPU, wide and large enough, no weight decay, built):
    # one optimiser each, with its own step count, as torch's Adam keeps one per tensor
    deferred = {key: table for key, table in fused_dense.items()
                if deferred_adam.usable(table.weight, weight_decay)}
    optimizers.extend(DeferredAdam([table], lr=cfg.lr, betas=cfg.betas)
                      for table in deferred.values())
    dense = [p for p in dense if id(p) not in deferred]
    if dense:
        try:  # torch's fused kernel for all dense parameters, bookkeeping once per step
            adam = DenseAdam(dense, lr=cfg.lr, betas=cfg.betas, weight_decay=weight_decay)
        except (RuntimeError, TypeError):
            adam = torch.optim.Adam(dense, lr=cfg.lr, betas=cfg.betas, weight_decay=weight_decay)
        optimizers.append(adam)
    if sparse_params:
        row_l2 = cfg.l2 if cfg.l2_target in (*ROW_L2_TARGETS, "all") else 0.0
        optimizers.append(RowWiseAdam(sparse_params, lr=cfg.lr, betas=cfg.betas, l2=row_l2,
                                      row_scales=row_scales))
    return Optimizers(optimizers, dense_tables=list(fused_dense.values()))


def penalised_tables(model: nn.Module, cfg: TrainConfig) -> list[nn.Embedding]:
    """The dense embedding tables that get the touched-row L2 penalty in the loss under ``cfg``.

    Sparse tables under ``lazy_adam`` get the same L2 inside :class:`RowWiseAdam`; under
    ``all`` dense tables are decayed by Adam's ``weight_decay`` instead.
    """
    if cfg.l2 <= 0 or cfg.l2_target not in ROW_L2_TARGETS:
        return []
    lazy = cfg.optimizer == "lazy_adam"
    return [m for m in model.modules()
            if isinstance(m, nn.Embedding) and not (lazy and m.sparse)]


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale gradients (dense and sparse) so that their global L2 norm is at most ``max_norm``.

    ``torch.nn.utils.clip_grad_norm_`` does not handle sparse gradients; sparse ones are
    coalesced first (an uncoalesced gradient's values would double-count repeated rows).
    Returns the norm before clipping.
    """
    norms = []
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            norms.append(p.grad._values().float().norm())
        else:
            norms.append(p.grad.float().norm())
        grads.append(p.grad)
    if not norms:
        return 0.0
    total = float(torch.stack(norms).norm())
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g.mul_(scale)
    return total
