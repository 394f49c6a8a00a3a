"""DIEN ("dien", Zhou et al. AAAI'19): interest extraction (GRU + auxiliary loss) and interest
evolution (attention + AUGRU) over the left-aligned history.

- extractor: ``h_t = GRU(e_1..e_t)`` over behaviour embeddings ``e_t = [item; cate]``;
- auxiliary loss (training only, weight ``aux_weight``): ``h_t`` must score the next clicked
  behaviour ``e_{t+1}`` above the stored negative ``e^-_{t+1}`` (inner products, binary log loss,
  mean over pairs with ``t + 1 < hist_len``), DIEN paper Eq. 4;
- attention ``a_t = softmax_t(h_t W e_i)`` over valid steps (DIEN paper Eq. 6);
- evolution: AUGRU with ``u'_t = a_t u_t``; its state after the last valid step is the final
  interest (an empty history gives zeros); both recurrences stop at each history's last
  valid step (packed by step: padding is never computed);
- prediction: ``MLP([e_u; e_i; h'; mean_t e_t; e_c])``, Dice [200, 80]; the pooled history
  ``mean_t e_t`` follows the authors' code.

Float32 on the CPU outside autocast, the attention and the auxiliary loss each run as one native
kernel per direction (:mod:`~ctrbench.models.fast.fused_dien`; ``DIEN.NATIVE = False``: the torch
code here, also their plain reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ctrbench.errors import CtrbenchError
from ctrbench.models.base import AttentionWeights, CTRModel, Explanation
from ctrbench.models.config import ACTIVATIONS, ModelConfig, Number, OneOf, Widths, param
from ctrbench.models.fast import fused_dien
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.fast.packed_scan import StepPacking, packed_gru_scan
from ctrbench.models.fast.row_blocks import in_row_blocks
from ctrbench.models.init import INIT_STD
from ctrbench.models.layers import MLP, masked_softmax
from ctrbench.models.registry import register
from ctrbench.models.sequence import (
    AUGRU,
    effective_length,
    embed_packed_history,
    pad_steps,
)
from ctrbench.schema import HIST_LEN, Batch, FieldSpec, Schema, history_mask


@dataclass(frozen=True)
class DIENConfig(ModelConfig):
    aux_weight: float = param(1.0, Number(0.0))  # weight of the auxiliary loss (0: none)
    hidden_units: tuple[int, ...] = param((200, 80), Widths())
    activation: str = param("dice", OneOf(ACTIVATIONS))
    dropout: float = param(0.0, Number(0.0, 1.0))
    init_std: float = param(INIT_STD, Number(low_open=True))


@register("dien")
class DIEN(CTRModel):
    """Deep Interest Evolution Network; ``aux_weight = 0`` is DIEN without the auxiliary loss."""

    has_auxiliary_loss = True
    EVAL_ROWS = 1024  # rows per block when forward runs in eval mode
    #: float32 on the CPU: the attention and the auxiliary loss as native kernels
    #: (:mod:`~ctrbench.models.fast.fused_dien`) where they can run; False: the torch code
    NATIVE = True

    config_class = DIENConfig

    def __init__(self, schema: Schema, config: DIENConfig) -> None:
        super().__init__(schema, config)
        aux_weight = config.aux_weight
        if aux_weight > 0 and not schema.has_neg_history:
            raise CtrbenchError(
                "DIEN's auxiliary loss needs negative histories (neg_hist_* fields), "
                "and this dataset has none",
                hint="prepare the data with negative histories, or use the model "
                     "'dien_no_aux' (or --set params.aux_weight=0)")
        self.aux_weight = float(aux_weight)
        self.has_auxiliary_loss = self.aux_weight > 0
        dim = config.embedding_dim
        self.bank = EmbeddingBank(schema, dim, sparse=config.sparse, init_std=config.init_std)
        width = len(schema.item) * dim  # behaviour step width = candidate width = GRU width
        self.extractor = nn.GRU(width, width, batch_first=True)
        self.attention = nn.Linear(width, width, bias=False)  # W in h_t W e_i
        self.evolution = AUGRU(width, width)
        in_width = (len(schema.user) + len(schema.context)) * dim + 3 * width
        self.mlp = MLP(in_width, config.hidden_units, config.dropout, config.activation,
                       out_dim=1)

    def _interests(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Everything :meth:`_logits` and the auxiliary loss read. The history runs packed by
        step (:class:`StepPacking`, ``N`` valid steps): ``behaviours`` and ``states`` are
        ``[N, I]``, ``attention`` is ``[B, T']`` (0 on padding)."""
        schema = self.schema
        steps = effective_length(batch, schema.max_len)
        mask = history_mask(batch, steps)  # (B, T')
        packing = StepPacking.of(batch[HIST_LEN], steps)
        behaviours = self._packed_history(batch, schema.behavior, packing)  # (N, I)
        item, user, context = self.bank.single_fields(
            batch, (schema.item, schema.user, schema.context))  # (B, ., D)
        candidate = item.flatten(1)  # (B, I)
        query = self.attention(candidate)  # (B, I): W e_i
        states, attention, final = self._recurrences(behaviours, query, mask, packing)
        return {"packing": packing, "behaviours": behaviours, "candidate": candidate,
                "user": user.flatten(1), "context": context.flatten(1),
                "states": states, "attention": attention, "final": final}

    def _packed_history(self, batch: Batch, specs: Sequence[FieldSpec],
                        packing: StepPacking) -> torch.Tensor:
        """History fields ``specs`` embedded at the valid steps only: ``[N, len(specs) D]``."""
        return embed_packed_history(self.bank, batch, specs, packing)  # (N, K D)

    def _recurrences(self, behaviours: torch.Tensor, query: torch.Tensor, mask: torch.Tensor,
                     packing: StepPacking
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Extractor states ``[N, I]``, attention ``[B, T']`` (exactly 0 on padding) and the
        final interest ``[B, I]`` (the AUGRU state at the last valid step; 0 for an empty
        history) of packed histories ``[N, I]`` for ``query = W e_i [B, I]``. Both
        recurrences run packed by step: each step only on the histories still going; the
        attention is one native kernel where :func:`fused_dien.usable` (``NATIVE``)."""
        states = self._gru(behaviours, packing)  # (N, I)
        if self.NATIVE and fused_dien.usable(states, query):
            packed = fused_dien.attention(states, query, packing.row_of)  # (N,)
            attention = packing.unpack(packed)  # (B, T')
        else:
            scores = (states * query.index_select(0, packing.row_of)).sum(-1)  # (N,)
            attention = masked_softmax(packing.unpack(scores), mask, dim=1)  # (B, T')
            packed = packing.pack(attention)  # (N,)
        evolved = self.evolution.packed_states(states, packed, packing)
        return states, attention, packing.last(evolved)

    def _gru(self, x: torch.Tensor, packing: StepPacking) -> torch.Tensor:
        """The extractor's states at the valid steps, packed ``[N, I]``, of packed ``x``:
        ``nn.GRU`` (cuDNN) over the padded history off the CPU, and on the CPU the same
        equations and parameters through :func:`packed_gru_scan` (hand-written backward)."""
        gru = self.extractor
        if x.device.type != "cpu":
            return packing.pack(gru(packing.unpack(x))[0])
        gx = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)  # (N, 3I)
        return packed_gru_scan(gx, gru.weight_hh_l0, gru.bias_hh_l0, packing)

    def _logits(self, batch: Batch, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = parts["packing"].mean(parts["behaviours"])  # (B, I): mean over valid steps
        inputs = [parts["user"], parts["candidate"], parts["final"], pooled, parts["context"]]
        return self.mlp(torch.cat(inputs, dim=-1)).squeeze(-1)  # (B,)

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.training:
            return self._logits(batch, self._interests(batch))  # (B,)
        # Evaluation is row-wise (Dice on running statistics, no dropout): blocks of EVAL_ROWS
        # rows keep the recurrences' step tensors in cache (~1.5x faster at 8,192 rows here).
        return in_row_blocks(lambda block: self._logits(block, self._interests(block)), batch,
                             self.EVAL_ROWS)  # (B,)

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = self._interests(batch)
        logits = self._logits(batch, parts)
        if not self.has_auxiliary_loss:
            return logits, {}
        return logits, {"aux": self.aux_weight * self.auxiliary_loss(batch, parts)}

    def auxiliary_loss(self, batch: Batch, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unweighted auxiliary loss of :meth:`_interests`' ``parts``: mean over valid
        ``(t, t + 1)`` pairs of ``-log sigmoid(<h_t, e_{t+1}>) - log(1 - sigmoid(<h_t,
        e^-_{t+1}>))``. Packed, the pairs are every valid step ``t + 1 >= 1`` and the step
        before it (``StepPacking.previous``). One native kernel where
        :func:`fused_dien.usable` (``NATIVE``)."""
        packing = parts["packing"]
        later = packing.sizes[0] if packing.sizes else 0  # packed rows from step 1 on
        negatives = self._packed_history(batch, self.schema.neg_behavior, packing)  # (N, I)
        states, behaviours = parts["states"], parts["behaviours"]
        if self.NATIVE and fused_dien.usable(states, behaviours, negatives):
            return fused_dien.auxiliary_loss(states, behaviours, negatives, packing.previous,
                                             later)
        current = states.index_select(0, packing.previous[later:])  # (P, I): h_t
        pos_logit = (current * behaviours[later:]).sum(-1)  # (P,)
        neg_logit = (current * negatives[later:]).sum(-1)  # (P,)
        pair_loss = (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit),
                                                        reduction="sum")
                     + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit),
                                                          reduction="sum"))
        return pair_loss / max(1, pos_logit.shape[0])

    def explain(self, batch: Batch) -> Explanation:
        """``attention``: the candidate's attention on each interest state ``[B, T]``."""
        return {"attention": AttentionWeights(pad_steps(self._interests(batch)["attention"],
                                                        self.schema.max_len))}
