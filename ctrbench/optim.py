"""Optimisers and regularisation for the trainer.

- ``adam``: ``torch.optim.Adam`` over every parameter (dense embedding gradients: every step
  reads and writes every row of every table, whatever the batch touched).
- ``lazy_adam``: the model is built with ``sparse=True`` so embedding tables emit sparse
  gradients; ``torch.optim.SparseAdam`` updates (and keeps moments for) only the rows a batch
  touched ("row-wise lazy Adam"), plain Adam the dense rest.

L2 (``TrainConfig.l2_target``):

- ``batch_embeddings``: DIN's mini-batch-aware regularisation, simplified: each step adds
  ``l2 * sum ||w_r||^2`` over the UNIQUE rows ``r`` of every embedding table that the batch
  looked up (padding rows excluded) to the mean BCE of the batch. It is not divided by the batch
  size nor weighted by feature frequency (DIN's ``1/n_j``): a row seen in many batches is
  decayed in each of them, so frequent ids are regularised more, as in DIN. Dense layers are not
  regularised.
- ``all``: coupled weight decay ``l2`` (Adam's ``weight_decay``) on every dense parameter; under
  ``lazy_adam`` the sparse tables get the touched-row penalty above instead (a lazy optimiser
  cannot decay rows it does not touch).
- ``none``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrbench.cards import TrainConfig


class TouchedRows:
    """Records which rows each embedding table looks up during forward passes.

    Forward hooks on the ``nn.Embedding`` modules collect the index tensors; :meth:`penalty`
    returns ``sum ||w_r||^2`` over the unique touched rows, looked up with the table's own
    ``sparse`` setting so that a sparse table keeps receiving sparse gradients.
    """

    def __init__(self, modules: Iterable[nn.Embedding]) -> None:
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
        rows = torch.unique(torch.cat(ids).long())
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
            term = weights.float().pow(2).sum()
            total = term if total is None else total + term
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class Optimizers:
    """One or two torch optimisers stepped together (dense Adam + SparseAdam for tables)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]


def sparse_tables(model: nn.Module) -> list[nn.Embedding]:
    """Embedding modules of ``model`` that emit sparse gradients."""
    return [m for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> Optimizers:
    """Adam (dense) and, for ``lazy_adam``, SparseAdam over the sparse embedding tables."""
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
    if dense:
        optimizers.append(torch.optim.Adam(dense, lr=cfg.lr, betas=cfg.betas, fused=True,
                                           weight_decay=weight_decay))
    if sparse_params:
        optimizers.append(torch.optim.SparseAdam(sparse_params, lr=cfg.lr, betas=cfg.betas))
    return Optimizers(optimizers)


def penalised_tables(model: nn.Module, cfg: TrainConfig) -> list[nn.Embedding]:
    """The embedding tables that get the touched-row L2 penalty under ``cfg``."""
    if cfg.l2 <= 0 or cfg.l2_target == "none":
        return []
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if cfg.l2_target == "batch_embeddings":
        return tables
    return [m for m in tables if m.sparse and cfg.optimizer == "lazy_adam"]  # "all"


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
