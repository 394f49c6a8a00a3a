"""The model interface every architecture implements.

``Model(schema, **params)``; ``forward(batch) -> logits [B]``; ``forward_train(batch)`` returns the
logits and a dict of named auxiliary loss terms (already weighted; empty for most models);
optionally ``explain(batch)`` returns named attention weights. Models are pure modules: the
optimiser, loss, early stopping and evaluation live in ``ctrbench.engine.train``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ctrbench.schema import Batch, Schema


class CTRModel(nn.Module):
    """Base class: holds the schema; subclasses implement ``forward``."""

    #: whether ``forward_train`` returns auxiliary loss terms
    has_auxiliary_loss: bool = False
    #: False for models fitted from training statistics, never by optimiser steps (``pop``)
    trainable: bool = True

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        self.schema = schema

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``[B]`` and weighted auxiliary loss terms (name -> scalar)."""
        return self(batch), {}

    def explain(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named attention weights (e.g. MIAN's GIM part weights); empty if none."""
        return {}

    def embedding_modules(self) -> list[nn.Embedding]:
        """Every embedding table (for sparse updates and mini-batch-aware L2)."""
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]


def build_model(arch: str, schema: Schema, params: Mapping[str, Any]) -> CTRModel:
    """Instantiate a registered architecture; unknown parameters are a CardError."""
    import inspect

    from ctrbench.cards import check_keys
    from ctrbench.models import ARCHITECTURES

    cls = ARCHITECTURES.get(arch)
    signature = inspect.signature(cls.__init__)
    allowed = [p for p in signature.parameters if p not in ("self", "schema")]
    check_keys(f"parameters of architecture {arch!r}", params, allowed)
    return cls(schema, **params)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
