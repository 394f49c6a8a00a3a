"""Item popularity ("pop"): the floor every leaderboard should show. Nothing is trained.

The score of a row is its candidate item's training-set popularity: the number of positive
training rows whose candidate is that item (the same count as ``ctrbench stats``'s popularity
AUC). The trainer calls :meth:`Popularity.fit_statistics` once with the training split instead of
taking optimiser steps (the model has no trainable parameters; see
:mod:`ctrbench.engine.untrained`).

Logit = log(1 + count) - log(1 + max count), computed in float64 and cast to float32, so
probabilities lie in (0, 0.5] and adjacent counts stay distinct in float32 up to millions (a plain
sigmoid of the count would saturate at 1.0 from about 17 and tie every popular item). The
mapping is monotone, so the AUC is exactly the popularity ranking's; the probabilities are not
calibrated, so pop's logloss is not meaningful.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ctrbench.models.base import CTRModel
from ctrbench.models.config import ModelConfig
from ctrbench.models.registry import register
from ctrbench.schema import LABEL, Batch, Schema


@register("pop")
class Popularity(CTRModel):
    """``logit = log1p(count[item]) - log1p(max count)``; counts from :meth:`fit_statistics`.

    ``embedding_dim`` and ``sparse`` are accepted (and ignored) so that options given to every
    model (``--set params.embedding_dim=8``) apply to pop too.
    """

    #: the trainer fits this model from training statistics instead of optimiser steps
    trainable = False
    config_class = ModelConfig  # only the shared embedding_dim and sparse, both unused

    def __init__(self, schema: Schema, config: ModelConfig) -> None:
        super().__init__(schema, config)
        self.item_field = schema.item[0]  # the candidate item id (the first item field)
        # float64: exact counts and logits that keep adjacent counts apart (cast at the end)
        self.register_buffer("counts", torch.zeros(self.item_field.vocab_size,
                                                   dtype=torch.float64))  # (V,)
        self.register_buffer("log_max", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def fit_statistics(self, train: Mapping[str, torch.Tensor]) -> None:
        """Count each item's positive rows in ``train`` (columns ``item_id`` and ``label``)."""
        items = train[self.item_field.name].long().reshape(-1)  # (N,)
        positive = train[LABEL].reshape(-1) > 0.5  # (N,)
        counts = torch.bincount(items[positive].cpu(), minlength=self.item_field.vocab_size)
        counts = counts[: self.item_field.vocab_size].to(self.counts)
        self.counts.copy_(counts)
        self.log_max.copy_(torch.log1p(counts.max()))

    def forward(self, batch: Batch) -> torch.Tensor:
        count = self.counts[batch[self.item_field.name].long()]  # (B,)
        return (torch.log1p(count) - self.log_max).float()  # (B,) float64 -> float32
