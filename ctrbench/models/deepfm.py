"""DeepFM ("deepfm"): first-order term + FM second-order term + MLP, sharing the embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctrbench.models.base import CTRModel
from ctrbench.models.inputs import DeepConfig, FieldEmbedding, deep_tower
from ctrbench.models.layers import FactorizationMachine
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema


@dataclass(frozen=True)
class DeepFMConfig(DeepConfig):
    """DeepFM: the shared tower parameters only (the FM part has none)."""


@register("deepfm")
class DeepFM(CTRModel):
    """``logit = linear(x) + FM(E) + MLP(flatten(E))``, ``E [B, F, D]`` (histories mean-pooled)."""

    config_class = DeepFMConfig

    def __init__(self, schema: Schema, config: DeepFMConfig) -> None:
        super().__init__(schema, config)
        dim = config.embedding_dim
        self.embedding = FieldEmbedding(schema, dim, sparse=config.sparse,
                                        init_std=config.init_std, first_order=True)
        self.fm = FactorizationMachine()
        self.deep = deep_tower(self.embedding.num_fields * dim, config.hidden_units,
                               config.dropout, config.activation)

    def forward(self, batch: Batch) -> torch.Tensor:
        first, fields = self.embedding.with_first_order(batch)  # (B,), (B, F, D)
        second = self.fm(fields)  # (B,)
        deep = self.deep(fields.flatten(1)).squeeze(-1)  # (B,)
        return first + second + deep
