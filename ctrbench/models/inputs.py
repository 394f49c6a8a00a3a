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
from dataclasses import dataclass

import torch
from torch import nn

from ctrbench.models.config import ACTIVATIONS, ModelConfig, Number, OneOf, Widths, param
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.init import INIT_STD
from ctrbench.models.layers import MLP, first_order_bank, masked_mean
from ctrbench.schema import HIST_LEN, Batch, FieldSpec, Schema


@dataclass(frozen=True)
class DeepConfig(ModelConfig):
    """What the baselines with an MLP tower share (each registers its own subclass)."""

    hidden_units: tuple[int, ...] = param((256, 128), Widths())  # the tower's widths
    dropout: float = param(0.2, Number(0.0, 1.0))  # after each tower layer
    activation: str = param("relu", OneOf(ACTIVATIONS))  # of the tower
    init_std: float = param(INIT_STD, Number(low_open=True))  # truncated normal, embeddings


def pooled_fields(schema: Schema) -> tuple[FieldSpec, ...]:
    """The fields a non-sequential model sees, in order (behaviour fields stand for their mean)."""
    return (*schema.item, *schema.behavior, *schema.user, *schema.context)


def num_fields(schema: Schema) -> int:
    """F: the number of fields (not embedding tables; fields may share a table)."""
    return len(pooled_fields(schema))


def embed_pooled_fields(bank: EmbeddingBank, schema: Schema, batch: Batch) -> torch.Tensor:
    """Batch -> ``[B, F, W]`` with ``W = bank.dim``: one embedding per field, histories pooled.

    One lookup whatever the number of fields (every single-valued field, ``[B, K]`` ids, and
    every behaviour field, ``[B, T, K']`` ids, together), then one masked mean over T.
    """
    # the order of pooled_fields: item fields, pooled behaviour fields, user and context fields
    if not schema.behavior:
        item, others = bank.single_fields(batch, (schema.item, (*schema.user, *schema.context)))
        return torch.cat([item, others], dim=1)  # (B, F, W)
    singles, seq = bank.fields_and_history(  # (B, K, W), (B, T, K', W)
        batch, (*schema.item, *schema.user, *schema.context), schema.behavior)
    item, others = singles.split([len(schema.item), singles.shape[1] - len(schema.item)], dim=1)
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
        schema = self.schema
        if not schema.behavior:
            weights = embed_pooled_fields(self.bank, schema, batch)  # (B, F, 1)
            return weights.sum(dim=(1, 2)) + self.bias  # (B,)
        # one lookup and one weighted sum: the same sum as pooling each history field first
        # (the mean's 1/len moved onto the steps' weights), with fewer ops forward and back
        singles = (*schema.item, *schema.user, *schema.context)
        rows = self.bank.fields_and_history_rows(batch, singles, schema.behavior)  # (B, N)
        weights = self.bank.embedding(rows).view(rows.shape)  # (B, N)
        return (weights * pooled_sum_coefficients(batch, len(singles), len(schema.behavior),
                                                  rows.shape[1])).sum(dim=1) + self.bias  # (B,)


def pooled_sum_coefficients(batch: Batch, singles: int, history_fields: int,
                            width: int) -> torch.Tensor:
    """``[B, K + T K']`` coefficients that turn the ids of
    :meth:`EmbeddingBank.fields_and_history_rows` into the sum over pooled fields: 1 for each
    of the ``K = singles`` single-valued fields, ``1 / hist_len`` at each valid step of the
    ``K' = history_fields`` history fields, 0 at padded steps (and for an empty history)."""
    steps = (width - singles) // history_fields
    hist_len = batch[HIST_LEN]  # (B,)
    valid = torch.arange(steps, device=hist_len.device).unsqueeze(0) < hist_len.unsqueeze(1)
    per_step = valid / hist_len.clamp(1, steps).unsqueeze(1)  # (B, T) float, 1/len
    return torch.cat([per_step.new_ones(hist_len.shape[0], singles),
                      per_step.repeat_interleave(history_fields, dim=1)], dim=1)  # (B, N)


def deep_tower(in_dim: int, hidden_units: Sequence[int], dropout: float, activation: str,
               out_dim: int | None = 1) -> MLP:
    """The baselines' MLP (no BatchNorm): ``[B, in_dim] -> [B, out_dim]`` (or the last width
    when ``out_dim`` is None); the values come validated from a :class:`DeepConfig`."""
    return MLP(in_dim, hidden_units, dropout, activation, out_dim=out_dim)
