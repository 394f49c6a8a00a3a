"""Input assembly for the non-sequential baselines (LR, Wide&Deep, DCN, DeepFM, xDeepFM).

As DeepCTR-Torch fed them for the MIAN paper, these models see the history as ONE field per
behaviour field: the masked mean of its embeddings over the ``hist_len`` valid steps. The field
order is: item fields, one pooled field per behaviour field, user fields, context fields.
Negative histories (DIEN's training-only input) are never read.

Initialisation: embedding and first-order tables are truncated-normal with ``init_std`` (the
paper's 0.02); dense layers keep PyTorch's default initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrbench.errors import CardError
from ctrbench.models.layers import (
    INIT_STD,
    MLP,
    EmbeddingBank,
    first_order_bank,
    masked_mean,
)
from ctrbench.schema import HIST_LEN, Batch, FieldSpec, Schema


def pooled_fields(schema: Schema) -> tuple[FieldSpec, ...]:
    """The fields a non-sequential model sees, in order (behaviour fields stand for their mean)."""
    return (*schema.item, *schema.behavior, *schema.user, *schema.context)


def num_fields(schema: Schema) -> int:
    """F: the number of fields (not embedding tables; fields may share a table)."""
    return len(pooled_fields(schema))


def embed_pooled_fields(bank: EmbeddingBank, schema: Schema, batch: Batch) -> torch.Tensor:
    """Batch -> ``[B, F, W]`` with ``W = bank.dim``: one embedding per field, histories pooled.

    Two lookups whatever the number of fields: one for every single-valued field (``[B, K]``
    ids) and one for every behaviour field (``[B, T, K']`` ids), then one masked mean over T.
    """
    # the order of pooled_fields: item fields, pooled behaviour fields, user and context fields
    item, others = bank.single_fields(batch, (schema.item, (*schema.user, *schema.context)))
    if not schema.behavior:
        return torch.cat([item, others], dim=1)  # (B, F, W)
    seq = bank.lookup_stacked([(s.vocab, batch[s.name]) for s in schema.behavior])  # (B,T,K',W)
    steps = torch.arange(seq.shape[1], device=seq.device)
    mask = steps.unsqueeze(0) < batch[HIST_LEN].unsqueeze(1)  # (B, T)
    pooled = masked_mean(seq.flatten(2), mask).unflatten(1, seq.shape[2:])  # (B, K', W)
    return torch.cat([item, pooled, others], dim=1)  # (B, F, W)


class FieldEmbedding(nn.Module):
    """Batch -> ``[B, F, D]``; owns one embedding table per vocabulary (``sparse`` optional).

    ``first_order=True`` adds LR's first-order weights as one more column of the SAME fused
    table (width ``D + 1``, column 0 = the weight): :meth:`with_first_order` then returns the
    first-order sum and the embeddings from the same two lookups, one gradient and one optimiser
    update per step. It is the same model as a separate 1-wide :class:`LinearTerm` (Adam and the
    touched-row L2 act per element and row, and the two tables are touched on the same rows);
    only the random initial values differ.
    """

    def __init__(self, schema: Schema, dim: int, *, sparse: bool = False,
                 init_std: float = INIT_STD, first_order: bool = False) -> None:
        super().__init__()
        self.schema = schema
        self.first_order = first_order
        self.bank = EmbeddingBank(schema, dim + int(first_order), sparse=sparse,
                                  init_std=init_std)
        self.bias = nn.Parameter(torch.zeros(1)) if first_order else None
        self.num_fields = num_fields(schema)
        self.dim = dim

    def forward(self, batch: Batch) -> torch.Tensor:
        fields = embed_pooled_fields(self.bank, self.schema, batch)  # (B, F, W)
        return fields[..., int(self.first_order):]  # (B, F, D)

    def with_first_order(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bias + sum_f w_f [B], embeddings [B, F, D])`` (needs ``first_order=True``)."""
        if self.bias is None:
            raise RuntimeError("built without first_order=True")
        fields = embed_pooled_fields(self.bank, self.schema, batch)  # (B, F, D + 1)
        return fields[..., 0].sum(dim=1) + self.bias, fields[..., 1:]


class LinearTerm(nn.Module):
    """The first-order (wide / LR) part: ``bias + sum_f w_f[id_f]``, pooled histories -> ``[B]``.

    One scalar weight per vocabulary row (1-wide embedding tables, see
    :func:`ctrbench.models.layers.first_order_bank`); a history contributes the mean of its valid
    steps' weights.
    """

    def __init__(self, schema: Schema, *, sparse: bool = False,
                 init_std: float = INIT_STD) -> None:
        super().__init__()
        self.schema = schema
        self.bank = first_order_bank(schema, sparse=sparse, init_std=init_std)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> torch.Tensor:
        weights = embed_pooled_fields(self.bank, self.schema, batch)  # (B, F, 1)
        return weights.sum(dim=(1, 2)) + self.bias  # (B,)


def checked_widths(name: str, value: Sequence[int], *, allow_empty: bool = True) -> tuple[int, ...]:
    """A card's list of layer widths as a tuple; a bad value is a CardError (a user's mistake)."""
    try:
        widths = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise CardError(
            f"model parameter {name} must be a list of integers, got {value!r}"
        ) from None
    if any(w < 1 for w in widths) or (not widths and not allow_empty):
        raise CardError(f"model parameter {name} must hold positive integers, got {list(widths)}")
    return widths


def checked_dropout(value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise CardError(f"model parameter dropout must be in [0, 1), got {value!r}")
    return float(value)


def checked_positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise CardError(f"model parameter {name} must be a positive integer, got {value!r}")
    return int(value)


def deep_tower(in_dim: int, hidden_units: Sequence[int], dropout: float, activation: str,
               out_dim: int | None = 1) -> MLP:
    """The baselines' MLP (no BatchNorm): ``[B, in_dim] -> [B, out_dim]`` (or the last width
    when ``out_dim`` is None); bad widths, dropout or activation are CardErrors."""
    hidden = checked_widths("hidden_units", hidden_units, allow_empty=out_dim is not None)
    try:
        return MLP(in_dim, hidden, checked_dropout(dropout), activation, out_dim=out_dim)
    except ValueError as exc:
        raise CardError(f"model parameter activation: {exc}") from None
