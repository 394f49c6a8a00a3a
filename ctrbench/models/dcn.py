"""Deep & Cross Network ("dcn"): a cross network and an MLP in parallel, then one linear layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrbench.models.base import CTRModel
from ctrbench.models.inputs import FieldEmbedding, checked_positive, checked_widths, deep_tower
from ctrbench.models.layers import INIT_STD, CrossNetwork
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema


@register("dcn")
class DCN(CTRModel):
    """``logit = w^T [cross(x0); MLP(x0)] + b`` with ``x0 = flatten(E)``, ``E [B, F, D]``.

    As in the DCN paper there is no separate wide part. ``hidden_units = []`` drops the deep
    tower (cross network only).
    """

    def __init__(self, schema: Schema, *, embedding_dim: int = 16, cross_layers: int = 2,
                 hidden_units: Sequence[int] = (256, 128), dropout: float = 0.2,
                 activation: str = "relu", init_std: float = INIT_STD,
                 sparse: bool = False) -> None:
        super().__init__(schema)
        dim = checked_positive("embedding_dim", embedding_dim)
        self.embedding = FieldEmbedding(schema, dim, sparse=sparse, init_std=init_std)
        width = self.embedding.num_fields * dim
        self.cross = CrossNetwork(width, checked_positive("cross_layers", cross_layers), init_std)
        hidden = checked_widths("hidden_units", hidden_units)
        self.deep = deep_tower(width, hidden, dropout, activation, out_dim=None) if hidden else None
        self.output = nn.Linear(width + (self.deep.out_dim if self.deep else 0), 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x0 = self.embedding(batch).flatten(1)  # (B, F*D)
        parts = [self.cross(x0)]  # (B, F*D)
        if self.deep is not None:
            parts.append(self.deep(x0))  # (B, H)
        return self.output(torch.cat(parts, dim=1)).squeeze(-1)  # (B,)
