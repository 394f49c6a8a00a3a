"""DIN ("din", Zhou et al. KDD'18): attention pooling of the history by a local activation unit.

``logit = MLP([e_u; e_i; sum_t w_t e_t; e_c])`` where ``w_t = LAU(e_i, e_t)`` (unnormalised by
default, as in the DIN paper) over the valid steps of the left-aligned history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctrbench.models.base import AttentionWeights, CTRModel, Explanation
from ctrbench.models.config import ACTIVATIONS, Flag, ModelConfig, Number, OneOf, Widths, param
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.init import INIT_STD
from ctrbench.models.layers import MLP
from ctrbench.models.registry import register
from ctrbench.models.sequence import (
    LocalActivationUnit,
    effective_length,
    embed_history,
    pad_steps,
)
from ctrbench.schema import Batch, Schema, history_mask


@dataclass(frozen=True)
class DINConfig(ModelConfig):
    attention_hidden: tuple[int, ...] = param((80, 40), Widths(allow_empty=False))
    attention_activation: str = param("dice", OneOf(ACTIVATIONS))
    attention_softmax: bool = param(False, Flag())  # normalise the weights (the paper: no)
    hidden_units: tuple[int, ...] = param((200, 80), Widths())
    activation: str = param("dice", OneOf(ACTIVATIONS))
    dropout: float = param(0.0, Number(0.0, 1.0))
    init_std: float = param(INIT_STD, Number(low_open=True))


@register("din")
class DIN(CTRModel):
    """Deep Interest Network. Inputs: user fields, candidate item, history, context fields."""

    config_class = DINConfig

    def __init__(self, schema: Schema, config: DINConfig) -> None:
        super().__init__(schema, config)
        dim = config.embedding_dim
        self.bank = EmbeddingBank(schema, dim, sparse=config.sparse, init_std=config.init_std)
        item_width = len(schema.item) * dim
        self.attention = LocalActivationUnit(
            item_width, config.attention_hidden, config.attention_activation,
            softmax=config.attention_softmax)
        in_width = (len(schema.user) + len(schema.context)) * dim + 2 * item_width
        self.mlp = MLP(in_width, config.hidden_units, config.dropout, config.activation,
                       out_dim=1)

    def _singles(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate ``[B, I]``, user ``[B, J D]`` and context ``[B, K D]`` in one lookup."""
        item, user, context = self.bank.single_fields(
            batch, (self.schema.item, self.schema.user, self.schema.context))  # (B, ., D)
        return item.flatten(1), user.flatten(1), context.flatten(1)

    def _attend(self, batch: Batch, candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled interest ``[B, I]`` and attention weights ``[B, T']`` for ``candidate``."""
        steps = effective_length(batch, self.schema.max_len)
        history = embed_history(self.bank, batch, self.schema.behavior, steps)  # (B, T', I)
        mask = history_mask(batch, steps)  # (B, T')
        return self.attention(candidate, history, mask)  # (B, I), (B, T')

    def forward(self, batch: Batch) -> torch.Tensor:
        candidate, user, context = self._singles(batch)
        pooled, _ = self._attend(batch, candidate)
        inputs = torch.cat([user, candidate, pooled, context], dim=-1)  # (B, in_width)
        return self.mlp(inputs).squeeze(-1)  # (B,)

    def explain(self, batch: Batch) -> Explanation:
        """``attention``: the local activation unit's weight per history step ``[B, T]``."""
        candidate, _, _ = self._singles(batch)
        _, weights = self._attend(batch, candidate)
        return {"attention": AttentionWeights(pad_steps(weights, self.schema.max_len))}

