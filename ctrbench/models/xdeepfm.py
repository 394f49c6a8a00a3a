"""xDeepFM ("xdeepfm"): linear term + compressed interaction network (CIN) + MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrbench.errors import CardError
from ctrbench.models.base import CTRModel
from ctrbench.models.inputs import (
    FieldEmbedding,
    LinearTerm,
    checked_positive,
    checked_widths,
    deep_tower,
)
from ctrbench.models.layers import CIN, INIT_STD
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema


@register("xdeepfm")
class XDeepFM(CTRModel):
    """``logit = linear(x) + w^T CIN(E) + MLP(flatten(E))``, ``E [B, F, D]``.

    The CIN is sized by the number of FIELDS F (item fields, one pooled field per behaviour
    field, user and context fields), whatever tables they share.
    """

    def __init__(self, schema: Schema, *, embedding_dim: int = 16,
                 cin_layer_sizes: Sequence[int] = (256, 128), cin_split_half: bool = True,
                 cin_activation: str = "relu", hidden_units: Sequence[int] = (256, 128),
                 dropout: float = 0.2, activation: str = "relu", init_std: float = INIT_STD,
                 sparse: bool = False) -> None:
        super().__init__(schema)
        dim = checked_positive("embedding_dim", embedding_dim)
        cin_sizes = checked_widths("cin_layer_sizes", cin_layer_sizes, allow_empty=False)
        self.linear = LinearTerm(schema, sparse=sparse, init_std=init_std)
        self.embedding = FieldEmbedding(schema, dim, sparse=sparse, init_std=init_std)
        try:
            self.cin = CIN(self.embedding.num_fields, cin_sizes, bool(cin_split_half),
                           cin_activation)
        except ValueError as exc:
            raise CardError(f"xdeepfm parameters: {exc}") from None
        self.cin_output = nn.Linear(self.cin.out_dim, 1)
        self.deep = deep_tower(self.embedding.num_fields * dim, hidden_units, dropout,
                               activation)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        first = self.linear(batch)  # (B,)
        cin = self.cin_output(self.cin(fields)).squeeze(-1)  # (B,)
        deep = self.deep(fields.flatten(1)).squeeze(-1)  # (B,)
        return first + cin + deep
