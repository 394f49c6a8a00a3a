"""Shared building blocks, written as their papers define them (MLP, DIN's Dice, FM's
second-order term, DCN's cross network, xDeepFM's CIN, masked pooling). Each layer documents its
input and output shapes.

The CPU fast paths live in :mod:`ctrbench.models.fast`, each tested equal to the plain
definition here (``tests/test_fast_paths.py``): the models compute Dice with
``fast.dice.DiceFunction`` (the default ``Dice(fused=True)``; :func:`dice` is the definition),
the MLP's dropout with ``fast.dropout.UniformDropout`` (``nn.Dropout``'s distribution),
xDeepFM's CIN with ``fast.cin.BatchedCIN``, and embed with ``fast.embedding_bank.EmbeddingBank``
(one ``nn.Embedding`` per vocabulary, fused into one table).

B = batch, T = history length, D = embedding width, F = number of fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrbench.models.fast.dice import DiceFunction
from ctrbench.models.fast.dropout import UniformDropout
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.init import INIT_STD, init_truncated_normal
from ctrbench.schema import Schema


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
                layers.append(UniformDropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def dice(x: torch.Tensor, alpha: torch.Tensor, mean: torch.Tensor | None = None,
         var: torch.Tensor | None = None, eps: float = 1e-8
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dice (the DIN paper's, its ``E[s]``, ``Var[s]`` per feature) on ``x [N, H]``:
    ``p * x + (1 - p) * alpha * x`` with ``p = sigmoid((x - mean) / sqrt(var + eps))``.

    ``mean``/``var`` ``[H]`` None: the batch's mean and biased variance over N, differentiated
    through (as in batch normalisation); given: fixed statistics. Returns ``(y [N, H], mean,
    var)``. The plain definition that :class:`ctrbench.models.fast.dice.DiceFunction` computes
    faster, tested equal to it.
    """
    if mean is None or var is None:
        mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)  # (H,), (H,)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + eps))  # (N, H)
    return p * x + (1 - p) * alpha * x, mean, var


class Dice(nn.Module):
    """DIN's data-adaptive activation (:func:`dice`) with running statistics.

    Training normalises with the batch's statistics and updates running ones (``lerp`` by
    ``momentum``); evaluation uses the running statistics only, so at evaluation a sample's
    output is independent of its batch. Input ``[B, H]`` or ``[B, T, H]``; statistics per
    feature over all leading axes, in float32 (the running buffers' dtype) also under bf16
    autocast. ``fused`` (the default) computes with the fast path
    :class:`ctrbench.models.fast.dice.DiceFunction`, else with the plain :func:`dice`.
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.01,
                 fused: bool = True) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.eps, self.momentum, self.fused = eps, momentum, fused
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()  # (N, H)
        stats = (None, None) if self.training else (self.running_mean, self.running_var)
        compute = DiceFunction.apply if self.fused else dice
        out, mean, var = compute(flat, self.alpha.float(), *stats, self.eps)  # (N, H), (H,), (H,)
        if self.training:
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        return out.to(x.dtype).reshape(x.shape)


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


# --------------------------------------------------------------------------- feature interactions
def first_order_bank(schema: Schema, sparse: bool = False,
                     init_std: float = INIT_STD) -> EmbeddingBank:
    """The linear (first-order) weights: a 1-wide embedding bank (one fused table).

    Initialised truncated-normal with ``init_std`` (0.02 by default; ``0`` gives exact zeros),
    never N(0, 1): with a dozen fields, unit-variance weights start the logits far from 0
    (FuxiCTR's LR began at logloss 1.3-2.3). Row 0 (padding) is zero. Embed fields with it as
    with any bank: ``[B] -> [B, 1]``.
    """
    bank = EmbeddingBank(schema, 1, sparse=sparse, init_std=init_std if init_std > 0 else INIT_STD)
    if init_std <= 0:
        with torch.no_grad():
            bank.weight.zero_()
    return bank


class FactorizationMachine(nn.Module):
    """FM's second-order term: ``sum_{i<j} <v_i, v_j>``.

    Input ``[B, F, D]`` (one embedding per field) -> ``[B]``, computed in O(F D) as
    ``0.5 * sum_d ((sum_f v_fd)^2 - sum_f v_fd^2)``.
    """

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        square_of_sum = fields.sum(dim=1).pow(2)  # (B, D)
        sum_of_squares = fields.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)  # (B,)


class CrossLayer(nn.Module):
    """One DCN cross layer: ``x_{l+1} = x0 * (x_l . w) + b + x_l``.

    Inputs ``x0``, ``xl``: ``[B, W]`` -> ``[B, W]``; ``w`` and ``b`` are ``[W]`` vectors.
    """

    def __init__(self, width: int, init_std: float = INIT_STD) -> None:
        super().__init__()
        self.weight = nn.Parameter(init_truncated_normal(torch.empty(width), init_std))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        projection = (xl @ self.weight).unsqueeze(-1)  # (B, 1)
        return x0 * projection + self.bias + xl  # (B, W)


class CrossNetwork(nn.Module):
    """``n_layers`` stacked cross layers, each crossing with the input: ``[B, W] -> [B, W]``."""

    def __init__(self, width: int, n_layers: int, init_std: float = INIT_STD) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossLayer(width, init_std) for _ in range(n_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)  # (B, W)
        return x


class CIN(nn.Module):
    """xDeepFM's compressed interaction network.

    Input ``x0 [B, m, D]`` with ``m`` = the number of FIELDS (not embedding tables: fields that
    share a table are still separate fields). Layer k builds the ``m * H_{k-1}`` Hadamard
    products ``x0[:, i] * x_{k-1}[:, j]`` (flattened as ``i * H_{k-1} + j``) and compresses them
    with ``H_k`` filters (``layers[k]``: weight ``[H_k, m*H_{k-1}]``, a 1x1 convolution written
    as a linear map) into ``x_k [B, H_k, D]``. With ``split_half`` every layer but the last
    sends its second half of maps to the output and its first half to the next layer. Each
    output map is sum-pooled over D: output ``[B, out_dim]``.
    """

    def __init__(self, num_fields: int, layer_sizes: Sequence[int], split_half: bool = True,
                 activation: str = "relu") -> None:
        super().__init__()
        if not layer_sizes:
            raise ValueError("CIN needs at least one layer")
        if activation not in ("relu", "identity"):
            raise ValueError(f"CIN activation must be 'relu' or 'identity', not {activation!r}")
        if split_half and any(size % 2 for size in layer_sizes[:-1]):
            raise ValueError(f"CIN with split_half needs even layer sizes, got {list(layer_sizes)}")
        self.num_fields = num_fields
        self.split_half = split_half
        self.activation = activation
        self.layers = nn.ModuleList()
        self.next_sizes: list[int] = []  # maps passed on to the next layer, per layer
        out_dim, prev = 0, num_fields
        for k, size in enumerate(layer_sizes):
            self.layers.append(nn.Linear(num_fields * prev, size))
            split = split_half and k < len(layer_sizes) - 1
            self.next_sizes.append(size // 2 if split else size)
            out_dim += size - self.next_sizes[-1] if split else size
            prev = self.next_sizes[-1]
        self.out_dim = out_dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        m = x0.shape[1]
        if m != self.num_fields:
            raise ValueError(f"CIN built for {self.num_fields} fields, got {m}")
        base = x0.transpose(1, 2).unsqueeze(3)  # (B, D, m, 1): maps kept D-major for the matmul
        hidden = x0.transpose(1, 2)  # (B, D, H_0 = m)
        pooled: list[torch.Tensor] = []
        for k, layer in enumerate(self.layers):
            z = (base * hidden.unsqueeze(2)).flatten(2)  # (B, D, m*H_{k-1})
            out = layer(z)  # (B, D, H_k)
            if self.activation == "relu":
                out = torch.relu(out)
            if self.split_half and k < len(self.layers) - 1:
                hidden, direct = out.split([self.next_sizes[k], out.shape[2] - self.next_sizes[k]],
                                           dim=2)
            else:
                hidden, direct = out, out
            pooled.append(direct.sum(dim=1))  # (B, kept_k)
        return torch.cat(pooled, dim=1)  # (B, out_dim)
