"""xDeepFM ("xdeepfm"): linear term + compressed interaction network (CIN) + MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctrbench.models.base import CTRModel
from ctrbench.models.config import Flag, OneOf, Widths, param
from ctrbench.models.fast.cin import BatchedCIN
from ctrbench.models.fast.row_blocks import in_row_blocks
from ctrbench.models.inputs import DeepConfig, FieldEmbedding, deep_tower
from ctrbench.models.registry import register
from ctrbench.schema import Batch, Schema

#: rows per CIN pass when no gradient is taken (evaluation): the layer-k outer products are
#: ``[rows, D, m * H_{k-1}]`` floats (~0.7 GB at 8,192 rows, D = 16, m = 11, H = 128); blocks of
#: 64 rows stay in cache (CIN ~1.8x faster than one pass over 8,192 rows here)
CIN_EVAL_ROWS = 64
#: rows per CIN pass in training on the CPU: above it, the layers' outer products and their
#: gradients (109 MB each at batch 1024 with 13 fields, D = 16) are larger than glibc serves
#: from its heap (32 MiB, ``ctrbench/allocator.py``), so every step mapped them afresh (53,000
#: page faults a step) and read them from memory. In blocks of 128 rows (the card's batch: one
#: product shape for oneDNN) batch 1024 trained 1.57x faster on one thread, 1.72x on two, with no
#: faults; smaller blocks were slower at batch 128 (``docs/performance.md`` §3, twelfth round).
#: Other devices run the CIN in one pass (a GPU pays per launch, not per cache miss).
CIN_TRAIN_ROWS = 128


def trains_cin_in_blocks() -> bool:
    """Whether training on the CPU runs the CIN on blocks of ``CIN_TRAIN_ROWS`` rows (True;
    the A/B's other arm, ``benchmarks/native_ab.py --kernels cin_blocks``, makes it False)."""
    return True


@dataclass(frozen=True)
class XDeepFMConfig(DeepConfig):
    cin_layer_sizes: tuple[int, ...] = param((256, 128), Widths(allow_empty=False))
    cin_split_half: bool = param(True, Flag())  # half of each layer's maps to the output
    cin_activation: str = param("relu", OneOf(("relu", "identity")))

    def check(self) -> None:
        sizes = self.cin_layer_sizes
        if self.cin_split_half and any(size % 2 for size in sizes[:-1]):
            raise ValueError(f"cin_layer_sizes {list(sizes)}: with cin_split_half every layer "
                             "but the last needs an even size")


@register("xdeepfm")
class XDeepFM(CTRModel):
    """``logit = linear(x) + w^T CIN(E) + MLP(flatten(E))``, ``E [B, F, D]``.

    The CIN is sized by the number of FIELDS F (item fields, one pooled field per behaviour
    field, user and context fields), whatever tables they share.
    """

    config_class = XDeepFMConfig

    def __init__(self, schema: Schema, config: XDeepFMConfig) -> None:
        super().__init__(schema, config)
        dim = config.embedding_dim
        self.embedding = FieldEmbedding(schema, dim, sparse=config.sparse,
                                        init_std=config.init_std, first_order=True)
        self.cin = BatchedCIN(self.embedding.num_fields, config.cin_layer_sizes,
                              config.cin_split_half, config.cin_activation)
        self.cin_output = nn.Linear(self.cin.out_dim, 1)
        self.deep = deep_tower(self.embedding.num_fields * dim, config.hidden_units,
                               config.dropout, config.activation)

    def cin_logit(self, fields: torch.Tensor) -> torch.Tensor:
        """``w^T CIN(E)``: ``[B, F, D] -> [B]``, on blocks of rows: ``CIN_EVAL_ROWS`` without
        autograd (evaluation), ``CIN_TRAIN_ROWS`` with it on the CPU, else one pass. The CIN
        is row-wise (no dropout, no batch statistics), so the values are the same; the weights'
        gradients are summed over the blocks (the last bits differ from one pass)."""
        if not torch.is_grad_enabled():
            return in_row_blocks(self._cin_logit, fields, CIN_EVAL_ROWS)  # (B,)
        if fields.device.type == "cpu" and trains_cin_in_blocks():
            return in_row_blocks(self._cin_logit, fields, CIN_TRAIN_ROWS)  # (B,)
        return self._cin_logit(fields)  # (B,)

    def _cin_logit(self, fields: torch.Tensor) -> torch.Tensor:
        return self.cin_output(self.cin(fields)).squeeze(-1)  # (B,)

    def forward(self, batch: Batch) -> torch.Tensor:
        first, fields = self.embedding.with_first_order(batch)  # (B,), (B, F, D)
        cin = self.cin_logit(fields)  # (B,)
        deep = self.deep(fields.flatten(1)).squeeze(-1)  # (B,)
        return first + cin + deep
