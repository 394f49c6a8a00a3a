"""Logistic regression ("lr"): a bias plus one learned weight per feature value."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctrbench.models.base import CTRModel
from ctrbench.models.config import ModelConfig, Number, param
from ctrbench.models.init import INIT_STD
from ctrbench.models.inputs import LinearTerm
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema


@dataclass(frozen=True)
class LRConfig(ModelConfig):
    init_std: float = param(INIT_STD, Number(low_open=True))  # std of the truncated normal init


@register("lr")
class LogisticRegression(CTRModel):
    """``logit = b + sum_f w_f[id_f]``; each history field adds the mean weight of its valid steps.

    ``embedding_dim`` is accepted so that the shared paper card applies, but LR has no
    embeddings wider than 1 and ignores it.
    """

    config_class = LRConfig

    def __init__(self, schema: Schema, config: LRConfig) -> None:
        super().__init__(schema, config)
        self.linear = LinearTerm(schema, sparse=config.sparse, init_std=config.init_std)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.linear(batch)  # (B,)
