"""Deep & Cross Network ("dcn"): a cross network and an MLP in parallel, then one linear layer,
plus (as DeepCTR-Torch's ``DCN``, which the MIAN paper's cards cite) a first-order linear logit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctrbench.models.base import CTRModel
from ctrbench.models.config import Flag, PositiveInt, param
from ctrbench.models.inputs import DeepConfig, FieldEmbedding, deep_tower
from ctrbench.models.layers import CrossNetwork
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema


@dataclass(frozen=True)
class DCNConfig(DeepConfig):
    cross_layers: int = param(2, PositiveInt())  # depth of the cross network
    linear: bool = param(True, Flag())  # DeepCTR-Torch's first-order logit (false: the paper's)


@register("dcn")
class DCN(CTRModel):
    """``logit = [linear(x)] + w^T [cross(x0); MLP(x0)] + b`` with ``x0 = flatten(E)``,
    ``E [B, F, D]``.

    ``linear = true`` (the card; DeepCTR-Torch 0.2.x ``DCN``: ``logit = linear_model(X) +
    dnn_linear(stack_out)``) adds the first-order term ``bias + sum_f w_f[id_f]``, kept as one
    more column of the same fused embedding table (as DeepFM's). ``linear = false`` is the DCN
    paper's model (Wang et al. 2017), which has no separate wide part. ``hidden_units = []``
    drops the deep tower (cross network only).
    """

    config_class = DCNConfig

    def __init__(self, schema: Schema, config: DCNConfig) -> None:
        super().__init__(schema, config)
        dim = config.embedding_dim
        self.linear = config.linear
        self.embedding = FieldEmbedding(schema, dim, sparse=config.sparse,
                                        init_std=config.init_std, first_order=self.linear)
        width = self.embedding.num_fields * dim
        self.cross = CrossNetwork(width, config.cross_layers, config.init_std)
        hidden = config.hidden_units
        self.deep = deep_tower(width, hidden, config.dropout, config.activation,
                               out_dim=None) if hidden else None
        self.output = nn.Linear(width + (self.deep.out_dim if self.deep else 0), 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.linear:
            first, fields = self.embedding.with_first_order(batch)  # (B,), (B, F, D)
        else:
            first, fields = None, self.embedding(batch)  # (B, F, D)
        x0 = fields.flatten(1)  # (B, F*D)
        parts = [self.cross(x0)]  # (B, F*D)
        if self.deep is not None:
            parts.append(self.deep(x0))  # (B, H)
        logit = self.output(torch.cat(parts, dim=1)).squeeze(-1)  # (B,)
        return logit if first is None else logit + first
