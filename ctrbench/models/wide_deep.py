"""Wide & Deep ("wide_deep"): LR's linear part plus an MLP over the field embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctrbench.models.base import CTRModel
from ctrbench.models.inputs import DeepConfig, FieldEmbedding, deep_tower
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema


@dataclass(frozen=True)
class WideDeepConfig(DeepConfig):
    """Wide & Deep: the shared tower parameters only."""


@register("wide_deep")
class WideDeep(CTRModel):
    """``logit = wide(x) + MLP(flatten(E))`` with ``E [B, F, D]`` (histories mean-pooled)."""

    config_class = WideDeepConfig

    def __init__(self, schema: Schema, config: WideDeepConfig) -> None:
        super().__init__(schema, config)
        dim = config.embedding_dim
        self.embedding = FieldEmbedding(schema, dim, sparse=config.sparse,
                                        init_std=config.init_std, first_order=True)
        self.deep = deep_tower(self.embedding.num_fields * dim, config.hidden_units,
                               config.dropout, config.activation)

    def forward(self, batch: Batch) -> torch.Tensor:
        wide, fields = self.embedding.with_first_order(batch)  # (B,), (B, F, D)
        deep = self.deep(fields.flatten(1)).squeeze(-1)  # (B,)
        return wide + deep
