"""Shared building blocks. Each layer documents its input and output shapes.

B = batch, T = history length, D = embedding width, F = number of fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrbench.schema import Batch, FieldSpec, Schema

INIT_STD = 0.02  # the paper's truncated-normal initialisation


def init_truncated_normal(tensor: torch.Tensor, std: float = INIT_STD) -> torch.Tensor:
    """Truncated normal in [-2 std, 2 std] (the paper's initialiser)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


class EmbeddingBank(nn.Module):
    """One embedding table per vocabulary; fields sharing a vocabulary share a table.

    Row 0 (padding) is zero and receives no gradient. ``sparse=True`` makes the tables emit
    sparse gradients (for row-wise lazy Adam).
    """

    def __init__(self, schema: Schema, dim: int, sparse: bool = False,
                 init_std: float = INIT_STD) -> None:
        super().__init__()
        self.dim = dim
        self.tables = nn.ModuleDict()
        for vocab, size in schema.vocab_sizes.items():
            table = nn.Embedding(size, dim, padding_idx=0, sparse=sparse)
            with torch.no_grad():
                init_truncated_normal(table.weight, init_std)
                table.weight[0].zero_()
            self.tables[vocab] = table
        self._vocab_of = {f.name: f.vocab for f in schema.fields}

    def forward(self, batch: Batch, name: str) -> torch.Tensor:
        """Embed field ``name``: ``[B]`` -> ``[B, D]`` or ``[B, T]`` -> ``[B, T, D]``."""
        return self.tables[self._vocab_of[name]](batch[name])

    def fields(self, batch: Batch, specs: Sequence[FieldSpec]) -> list[torch.Tensor]:
        """Embed several fields; returns a list of ``[B, D]`` (or ``[B, T, D]``)."""
        return [self(batch, f.name) for f in specs]

    def concat(self, batch: Batch, specs: Sequence[FieldSpec]) -> torch.Tensor:
        """Concatenate several fields' embeddings on the last axis: ``[B, (T,) len(specs)*D]``."""
        if not specs:
            raise ValueError("no fields to concatenate")
        return torch.cat(self.fields(batch, specs), dim=-1)


class MLP(nn.Module):
    """Linear -> activation -> dropout, per hidden width. Input ``[..., in]`` -> ``[..., out]``.

    ``activation`` is "relu", "prelu" or "dice"; no BatchNorm, so a sample's output never depends
    on the rest of its batch.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0,
                 activation: str = "relu", out_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            layers.append(make_activation(activation, h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Dice(nn.Module):
    """DIN's data-adaptive activation: ``p(x) * x + (1 - p(x)) * alpha * x``,
    ``p(x) = sigmoid((x - mean) / sqrt(var + eps))``.

    Training normalises with the batch's statistics and updates running ones; evaluation uses the
    running statistics only, so at evaluation a sample's output is independent of its batch.
    Input ``[B, H]`` or ``[B, T, H]``; statistics per feature over all leading axes.
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.01) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.eps, self.momentum = eps, momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            flat = x.reshape(-1, x.shape[-1])
            mean = flat.mean(dim=0)
            var = flat.var(dim=0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean) / torch.sqrt(var + self.eps))
        return p * x + (1 - p) * self.alpha * x


def make_activation(name: str, width: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(width)
    if name == "dice":
        return Dice(width)
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r} (relu, prelu, dice, sigmoid)")


def masked_mean(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps: ``seq [B, T, D]``, ``mask [B, T]`` -> ``[B, D]`` (0 if none valid)."""
    weights = mask.to(seq.dtype).unsqueeze(-1)  # (B, T, 1)
    total = (seq * weights).sum(dim=1)  # (B, D)
    count = weights.sum(dim=1).clamp_min(1.0)  # (B, 1)
    return total / count


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring masked positions; rows with no valid position give zeros."""
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(weights, nan=0.0)
