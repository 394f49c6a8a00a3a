"""The model interface every architecture implements.

``Model(schema, config)`` with ``config`` the architecture's typed parameters (its
``config_class``, :mod:`ctrbench.models.config`); ``forward(batch) -> logits [B]``;
``forward_train(batch)`` returns the logits and a dict of named auxiliary loss terms (already
weighted; empty for most models); optionally ``explain(batch)`` returns named attention weights
(:class:`AttentionWeights`). Models are pure modules: the optimiser, loss, early stopping and
evaluation live in ``ctrbench.engine.train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ctrbench.models.config import ModelConfig
from ctrbench.schema import Batch, Schema


@dataclass(frozen=True)
class AttentionWeights:
    """One set of attention weights from :meth:`CTRModel.explain`: ``values [B, K]`` and what
    its K columns are. ``columns`` names them when they are named things (MIAN's GIM parts, the
    user or context fields); it is empty when they are history steps (``K = T``, oldest first,
    exactly 0 on padding)."""

    values: torch.Tensor
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.columns and len(self.columns) != self.values.shape[-1]:
            raise ValueError(f"{len(self.columns)} column names for "
                             f"{self.values.shape[-1]} columns")


#: what ``explain`` returns: name (e.g. "gim", "ibim", "attention") -> weights
Explanation = dict[str, AttentionWeights]


class CTRModel(nn.Module):
    """Base class: holds the schema and the config; subclasses implement ``forward``."""

    #: the architecture's typed parameters (a frozen ModelConfig subclass)
    config_class: ClassVar[type[ModelConfig]]
    #: whether ``forward_train`` returns auxiliary loss terms
    has_auxiliary_loss: bool = False
    #: False for models fitted from training statistics, never by optimiser steps (``pop``)
    trainable: bool = True

    def __init__(self, schema: Schema, config: ModelConfig) -> None:
        super().__init__()
        self.schema = schema
        self.config = config

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``[B]`` and weighted auxiliary loss terms (name -> scalar)."""
        return self(batch), {}

    def explain(self, batch: Batch) -> Explanation:
        """Named attention weights (e.g. MIAN's GIM part weights); empty if none."""
        return {}

    def embedding_modules(self) -> list[nn.Embedding]:
        """Every embedding table (for sparse updates and mini-batch-aware L2)."""
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
