"""DIEN ("dien", Zhou et al. AAAI'19): interest extraction (GRU + auxiliary loss) and interest
evolution (attention + AUGRU) over the left-aligned history.

- extractor: ``h_t = GRU(e_1..e_t)`` over behaviour embeddings ``e_t = [item; cate]``;
- auxiliary loss (training only, weight ``aux_weight``): ``h_t`` must score the next clicked
  behaviour ``e_{t+1}`` above the stored negative ``e^-_{t+1}`` (inner products, binary log loss,
  mean over pairs with ``t + 1 < hist_len``), DIEN paper Eq. 4;
- attention ``a_t = softmax_t(h_t W e_i)`` over valid steps (DIEN paper Eq. 6);
- evolution: AUGRU with ``u'_t = a_t u_t``; its state after the last valid step is the final
  interest (``a_t = 0`` on padding carries the state; an empty history gives zeros);
- prediction: ``MLP([e_u; e_i; h'; mean_t e_t; e_c])``, Dice [200, 80]; the pooled history
  ``mean_t e_t`` follows the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ctrbench.errors import CtrbenchError
from ctrbench.models.base import AttentionWeights, CTRModel, Explanation
from ctrbench.models.config import ACTIVATIONS, ModelConfig, Number, OneOf, Widths, param
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.fast.gated_scan import gru_scan
from ctrbench.models.fast.row_blocks import in_row_blocks
from ctrbench.models.init import INIT_STD
from ctrbench.models.layers import MLP, masked_mean, masked_softmax
from ctrbench.models.registry import register
from ctrbench.models.sequence import (
    AUGRU,
    apply_by_length,
    effective_length,
    embed_history,
    pad_steps,
)
from ctrbench.schema import HIST_LEN, Batch, Schema, history_mask


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

    config_class = DIENConfig
    # From this many rows the recurrences run per history-length group (``auto_groups``: 2 at
    # 256 rows, 4 at 512, 6 from 768). DIEN step, interleaved, one thread, against one pass:
    # +4% at 128 (2 groups), -5% at 256, -14% at 512, -21% at 1024 (docs/performance.md).
    GROUPED_ROWS = 256
    LENGTH_GROUPS: int | None = None  # None: auto_groups of the batch (benchmarks/dien_groups.py)

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
        steps = effective_length(batch, self.schema.max_len)
        mask = history_mask(batch, steps)  # (B, T')
        behaviours = embed_history(self.bank, batch, self.schema.behavior, steps)  # (B, T', I)
        item, user, context = self.bank.single_fields(
            batch, (self.schema.item, self.schema.user, self.schema.context))  # (B, ., D)
        candidate = item.flatten(1)  # (B, I)
        query = self.attention(candidate)  # (B, I): W e_i
        if behaviours.shape[0] < self.GROUPED_ROWS:
            states, attention, evolved = self._recurrences(behaviours, query, mask)
        else:
            states, attention, evolved = self._recurrences_by_length(behaviours, query, mask)
        last = (batch[HIST_LEN].long() - 1).clamp(0, steps - 1)  # (B,): the last valid step
        final = evolved[torch.arange(last.shape[0], device=last.device), last]  # (B, I)
        return {"mask": mask, "behaviours": behaviours, "candidate": candidate,
                "user": user.flatten(1), "context": context.flatten(1),
                "states": states, "attention": attention, "final": final}

    def _recurrences(self, behaviours: torch.Tensor, query: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Extractor states ``[B, T', I]``, attention ``[B, T']`` (exactly 0 on padding) and
        AUGRU states ``[B, T', I]`` (carried unchanged over padding) of histories ``[B, T', I]``
        for ``query = W e_i [B, I]``."""
        states = self._gru(behaviours)  # (B, T', I); valid steps never see padding
        scores = (states * query.unsqueeze(1)).sum(-1)  # (B, T')
        attention = masked_softmax(scores, mask, dim=1)  # (B, T')
        return states, attention, self.evolution.states(states, attention)

    def _recurrences_by_length(self, behaviours: torch.Tensor, query: torch.Tensor,
                               mask: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_recurrences` per history-length group (``apply_by_length``;
        ``LENGTH_GROUPS`` groups, by default its ``auto_groups``), each trimmed to its bound:
        the recurrences' cost grows with steps x rows at large batches but is per-step
        overhead at small ones, where one pass is faster. Outputs at trimmed steps are 0, and
        nothing reads them: attention and the auxiliary loss mask them, and the final
        interest is read at the last valid step."""
        width = behaviours.shape[-1]
        packed = torch.cat([behaviours, query.unsqueeze(1).expand_as(behaviours)], dim=-1)

        def run(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # (R, t, 2I + 1)
            states, attention, evolved = self._recurrences(x[..., :width], x[:, 0, width:], m)
            return torch.cat([states, attention.unsqueeze(-1), evolved], dim=-1)

        out = apply_by_length(run, packed, mask, self.LENGTH_GROUPS)  # (B, T', 2I + 1)
        states, attention, evolved = out.split([width, 1, width], dim=-1)
        return states, attention.squeeze(-1), evolved

    def _gru(self, x: torch.Tensor) -> torch.Tensor:
        """The extractor's states ``[B, T, I]``: ``nn.GRU`` (cuDNN off the CPU), and on the CPU
        the same equations and parameters through :func:`gru_scan` (hand-written backward)."""
        gru = self.extractor
        if x.device.type != "cpu":
            return gru(x)[0]
        gx = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)  # (B, T, 3I), every step at once
        return gru_scan(gx, gru.weight_hh_l0, gru.bias_hh_l0)

    def _logits(self, batch: Batch, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = masked_mean(parts["behaviours"], parts["mask"])  # (B, I)
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
        aux = self.auxiliary_loss(batch, parts["states"], parts["behaviours"], parts["mask"])
        return logits, {"aux": self.aux_weight * aux}

    def auxiliary_loss(self, batch: Batch, states: torch.Tensor, behaviours: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """Unweighted auxiliary loss: mean over valid ``(t, t + 1)`` pairs of
        ``-log sigmoid(<h_t, e_{t+1}>) - log(1 - sigmoid(<h_t, e^-_{t+1}>))``."""
        steps = mask.shape[1]
        negatives = embed_history(self.bank, batch, self.schema.neg_behavior, steps)  # (B,T',I)
        pair_mask = mask[:, 1:].to(states.dtype)  # (B, T'-1): t + 1 < hist_len
        current = states[:, :-1]  # (B, T'-1, I)
        pos_logit = (current * behaviours[:, 1:]).sum(-1)  # (B, T'-1)
        neg_logit = (current * negatives[:, 1:]).sum(-1)  # (B, T'-1)
        pair_loss = (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit),
                                                        reduction="none")
                     + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit),
                                                          reduction="none"))
        return (pair_loss * pair_mask).sum() / pair_mask.sum().clamp_min(1.0)

    def explain(self, batch: Batch) -> Explanation:
        """``attention``: the candidate's attention on each interest state ``[B, T]``."""
        return {"attention": AttentionWeights(pad_steps(self._interests(batch)["attention"],
                                                        self.schema.max_len))}
