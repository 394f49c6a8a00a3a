"""Logistic regression ("lr"): a bias plus one learned weight per feature value."""

from __future__ import annotations

import torch

from ctrbench.models.base import CTRModel
from ctrbench.models.inputs import LinearTerm, checked_positive
from ctrbench.models.layers import INIT_STD
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema


@register("lr")
class LogisticRegression(CTRModel):
    """``logit = b + sum_f w_f[id_f]``; each history field adds the mean weight of its valid steps.

    ``embedding_dim`` is accepted so that the shared paper card applies, but LR has no
    embeddings wider than 1 and ignores it.
    """

    def __init__(self, schema: Schema, *, embedding_dim: int = 16, init_std: float = INIT_STD,
                 sparse: bool = False) -> None:
        super().__init__(schema)
        self.embedding_dim = checked_positive("embedding_dim", embedding_dim)  # unused by LR
        self.linear = LinearTerm(schema, sparse=sparse, init_std=init_std)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.linear(batch)  # (B,)
