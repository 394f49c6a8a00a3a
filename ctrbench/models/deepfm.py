"""DeepFM ("deepfm"): first-order term + FM second-order term + MLP, sharing the embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ctrbench.models.base import CTRModel
from ctrbench.models.inputs import (
    FieldEmbedding,
    checked_positive,
    deep_tower,
)
from ctrbench.models.layers import INIT_STD, FactorizationMachine
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema


@register("deepfm")
class DeepFM(CTRModel):
    """``logit = linear(x) + FM(E) + MLP(flatten(E))``, ``E [B, F, D]`` (histories mean-pooled)."""

    def __init__(self, schema: Schema, *, embedding_dim: int = 16,
                 hidden_units: Sequence[int] = (256, 128), dropout: float = 0.2,
                 activation: str = "relu", init_std: float = INIT_STD,
                 sparse: bool = False) -> None:
        super().__init__(schema)
        dim = checked_positive("embedding_dim", embedding_dim)
        self.embedding = FieldEmbedding(schema, dim, sparse=sparse, init_std=init_std,
                                        first_order=True)
        self.fm = FactorizationMachine()
        self.deep = deep_tower(self.embedding.num_fields * dim, hidden_units, dropout,
                               activation)

    def forward(self, batch: Batch) -> torch.Tensor:
        first, fields = self.embedding.with_first_order(batch)  # (B,), (B, F, D)
        second = self.fm(fields)  # (B,)
        deep = self.deep(fields.flatten(1)).squeeze(-1)  # (B,)
        return first + second + deep
