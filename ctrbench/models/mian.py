"""MIAN ("mian", Zhang et al. WSDM'21): Multi-Interactive Attention Network, with flags for the
paper's ablations (Table 3) and transformer variants (Table 4).

Parts (``GIM_PARTS``; :meth:`MIAN.explain` names its columns), with ``D`` the embedding width
and ``I = 2D`` the item width:
  item      e_i = [item_id; cate_id]                                   (B, I)
  context   e_c = concatenation of the K context fields                (B, K D)
  behavior  e_b = mean of the behaviour embeddings over valid steps    (B, I)
  user      e_u = concatenation of the J user fields                   (B, J D)
  ibim      IBIM: h = Transformer([item; cate]_t); V_t = [e_i; h_t];
            a_t = softmax_t(tanh(V_t . W_t + b_t)) (valid steps); R = sum_t a_t V_t  (B, 2I)
  iuim      IUIM: V^j = [e_i; e^j] per user field, per-field (w_j, b_j);
            a_j = softmax_j(tanh(V^j w_j + b_j)); R = sum_j a_j V^j                 (B, I + D)
  icim      ICIM: the same over the context fields                                  (B, I + D)
GIM (our reading of the paper, whose parts have different widths): each part p is projected to
a common width G (``P_p = W_p x_p + c_p``), scored ``s_p = tanh(P_p . w_p + b_p)``,
``a = softmax_p(s)``, and ``R_gim = sum_p a_p P_p`` (B, G) feeds the prediction MLP [32, 8]
(ReLU, dropout 0.2) and one logit. Without GIM the raw parts are concatenated into the MLP.

Ablation flags remove a module entirely (no parameters, never computed): ``use_ibim``,
``use_iuim``, ``use_icim``, ``use_gim``. The transformer only feeds IBIM, so without IBIM it is
absent too (the pooled ``e_b`` part stays). ``transformer`` is "pre_ln" (the paper), "post_ln"
or "none" (``h_t = e_t``).

IBIM's score (eq. 8), ``ibim_score``: "per_step" (the paper: a weight vector ``W_t`` and bias
``b_t`` per step ``t``) or "shared" (one ``w, b`` for all steps: the candidate then adds the same
constant to every step's score, so the ranking of steps never depends on the candidate and the
model is invariant to the order of the history). Histories are left-aligned (oldest first), so
``t`` counts from the MOST RECENT behaviour (``t = 0`` is step ``hist_len - 1``): the same ``W_t``
then always means "the t-th latest behaviour", whatever the history's length; counted from the
oldest, ``W_0`` would be the oldest of the last ``max_len`` behaviours kept, a position the
truncation makes arbitrary. The transformer has no position encoding (as published); per-step
``W_t`` is MIAN's only position information.

Not in the paper, each one flag: ``ibim_bilinear`` adds a bilinear candidate-behaviour term
``e_i^T M h_t`` to eq. 8's score only (the attention can rank steps by their match with the
candidate; no card: it did not help in the probe of docs/fidelity.md); ``ibim_product`` (the
``mian_product`` card) extends eq. 6 to
``V_t = [e_i; h_t; e_i * h_t]`` (B, T, 3I), so that eq. 8's score contains a diagonal bilinear
term ``w . (e_i * h_t)`` AND ``R_ibim = sum_t a_t V_t`` carries the candidate-behaviour products
to GIM and the head, as DIN's ``[q, k, q - k, q * k]`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ctrbench.errors import CardError
from ctrbench.models.base import AttentionWeights, CTRModel, Explanation
from ctrbench.models.config import (
    ACTIVATIONS,
    Flag,
    ModelConfig,
    Number,
    OneOf,
    PositiveInt,
    Widths,
    param,
)
from ctrbench.models.fast import fused_fields, fused_ibim
from ctrbench.models.fast.embedding_bank import EmbeddingBank
from ctrbench.models.fast.fused_attention import RowPacking
from ctrbench.models.fast.fused_gim import fused_gim, usable
from ctrbench.models.fast.row_blocks import in_row_blocks
from ctrbench.models.init import INIT_STD, init_truncated_normal
from ctrbench.models.layers import MLP, masked_softmax
from ctrbench.models.registry import register
from ctrbench.models.sequence import (
    TransformerBlock,
    effective_length,
    embed_packed_history,
    pad_steps,
)
from ctrbench.schema import HIST_LEN, Batch, Schema, history_mask

TRANSFORMERS = ("pre_ln", "post_ln", "none")
IBIM_SCORES = ("per_step", "shared")


def recency_index(hist_len: torch.Tensor, steps: int, max_len: int) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, steps]`` step index counted from the most recent behaviour
    (left-aligned histories: step ``s`` of a row of length ``L`` is ``L - 1 - s``), clamped to
    ``0 .. max_len - 1`` (padded steps get 0; they are masked anyway)."""
    positions = torch.arange(steps, device=hist_len.device)
    return (hist_len.long().unsqueeze(1) - 1 - positions).clamp(0, max_len - 1)  # (B, steps)


def packed_recency(hist_len: torch.Tensor, packing: RowPacking, max_len: int) -> torch.Tensor:
    """:func:`recency_index` at the valid steps packed by row (:class:`RowPacking`): ``[N]``."""
    rows_len = hist_len.long().index_select(0, packing.row_of)  # (N,)
    return (rows_len - 1 - packing.step_of).clamp(0, max_len - 1)  # (N,)


class BehaviorInteraction(nn.Module):
    """IBIM's attention (eqs. 6-9): ``e_i [B, I]``, ``h [B, T, I]``, ``mask [B, T]``,
    ``recency [B, T]`` (:func:`recency_index`) -> ``R [B, 2I]``, ``a [B, T]`` (exactly 0 on
    padding; all 0 for an empty history). ``score``: "per_step" (``W_t, b_t`` for
    ``t = 0 .. max_len - 1`` by recency) or "shared"; ``bilinear`` adds ``e_i^T M h_t`` to
    the score; ``product`` makes ``V_t = [e_i; h_t; e_i * h_t]`` (``R [B, 3I]``).
    :meth:`packed` is the same on the valid steps packed by row (MIAN's path)."""

    def __init__(self, item_width: int, max_len: int, score: str = "per_step",
                 bilinear: bool = False, product: bool = False,
                 init_std: float = INIT_STD) -> None:
        super().__init__()
        if score not in IBIM_SCORES:
            raise ValueError(f"ibim score must be one of {IBIM_SCORES}, got {score!r}")
        self.per_step = score == "per_step"
        self.product = product
        #: width of V_t and R_ibim: 2I, or 3I with the product
        self.out_width = (3 if product else 2) * item_width
        shape = (max_len, self.out_width) if self.per_step else (self.out_width,)
        self.weight = nn.Parameter(init_truncated_normal(torch.empty(shape), init_std))
        self.bias = nn.Parameter(torch.zeros(shape[:-1]))
        self.bilinear = nn.Parameter(init_truncated_normal(
            torch.empty(item_width, item_width), init_std)) if bilinear else None

    #: float32 on the CPU: the native kernel (:mod:`~ctrbench.models.fast.fused_ibim`) where it
    #: is built (False: the torch path)
    NATIVE = True

    def scores(self, item: torch.Tensor, states: torch.Tensor,
               recency: torch.Tensor) -> torch.Tensor:
        """Eq. 8 before the softmax at every step of padded ``states [B, T, I]``:
        ``gamma [B, T]``."""
        batch_size, steps = states.shape[:2]
        rows = torch.arange(batch_size, device=states.device).repeat_interleave(steps)
        return self.step_scores(item, states.flatten(0, 1), rows,
                                recency.reshape(-1)).view(batch_size, steps)  # (B, T)

    def step_scores(self, item: torch.Tensor, states: torch.Tensor, rows: torch.Tensor,
                    recency: torch.Tensor) -> torch.Tensor:
        """Eq. 8 before the softmax for ``states [N, I]`` of batch rows ``rows [N]`` at
        recency ``recency [N]``: ``gamma [N]``.

        ``V_t . W_t`` is evaluated split by the blocks of ``W_t = [w_i | w_h (| w_p)]``:
        ``e_i . w_i`` per row and ``h_t . w_h`` per step (``+ h_t . (w_p * e_i)`` with the
        product), so no ``[N, 2I]`` tensor of pairs is built (same function and parameters).
        ``W_t`` is chosen by ``index_select``, whose backward (``index_add_``) is serial on
        the CPU, so deterministic.
        """
        width = item.shape[1]
        w_item, w_rest = self.weight[..., :width], self.weight[..., width:]
        if self.per_step:  # the W_t, b_t chosen by each step's recency
            per_item = torch.addmm(self.bias, item, w_item.t())  # (B, L)
            logits = per_item.reshape(-1).index_select(
                0, rows * per_item.shape[1] + recency)  # (N,)
            vector = w_rest.index_select(0, recency)  # (N, I or 2I)
            if self.product:  # h_t . (w_h + w_p * e_i)
                vector = vector[:, :width] + vector[:, width:] * item.index_select(0, rows)
            logits = logits + (states * vector).sum(-1)  # (N,)
        else:
            logits = (item @ w_item + self.bias).index_select(0, rows)  # (N,)
            if self.product:
                vector = w_rest[:width] + w_rest[width:] * item  # (B, I)
                logits = logits + (states * vector.index_select(0, rows)).sum(-1)
            else:
                logits = logits + states @ w_rest  # (N,)
        if self.bilinear is not None:
            logits = logits + (states * (item @ self.bilinear).index_select(0, rows)).sum(-1)
        return torch.tanh(logits)  # (N,)

    def forward(self, item: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                recency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        packing = RowPacking.of(mask)
        return self.packed(item, packing.pack(states), packing, packing.pack(recency))

    def packed(self, item: torch.Tensor, states: torch.Tensor, packing: RowPacking,
               recency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on the valid steps packed by row: ``states [N, I]``, ``recency
        [N]`` (:func:`packed_recency`) -> ``R [B, 2I or 3I]``, ``a [B, T]``. Without the
        bilinear and product terms, the native kernel where it is built
        (:mod:`~ctrbench.models.fast.fused_ibim`; ``NATIVE = False``: the torch path below)."""
        if (self.NATIVE and self.bilinear is None and not self.product
                and fused_ibim.usable(item, states)):
            weight, bias = (self.weight, self.bias) if self.per_step else \
                (self.weight.unsqueeze(0), self.bias.reshape(1))  # one (W, b) for every step
            out, alpha = fused_ibim.ibim(item, states, packing.offsets,
                                         recency if self.per_step else None, weight, bias)
            return out, packing.unpack(alpha)  # (B, 2I), (B, T)
        scores = packing.unpack(self.step_scores(item, states, packing.row_of, recency))
        alpha = masked_softmax(scores, packing.mask, dim=1)  # (B, T)
        # R = sum_t a_t [e_i; h_t (; e_i * h_t)] = [e_i sum_t a_t; sum_t a_t h_t (; e_i * that)]
        pooled = packing.sum(packing.pack(alpha).unsqueeze(1) * states)  # (B, I)
        parts = [item * alpha.sum(1, keepdim=True), pooled]  # sum_t a_t: 1, or 0 if empty
        if self.product:
            parts.append(item * pooled)
        return torch.cat(parts, 1), alpha  # (B, 2I or 3I), (B, T)


class FieldInteraction(nn.Module):
    """IUIM / ICIM: ``e_i [B, I]``, ``fields [B, F, D]`` -> ``R [B, I + D]``, ``a [B, F]``,
    with a separate scoring vector and bias per field."""

    def __init__(self, num_fields: int, item_width: int, dim: int,
                 init_std: float = INIT_STD) -> None:
        super().__init__()
        width = item_width + dim
        self.weight = nn.Parameter(init_truncated_normal(torch.empty(num_fields, width),
                                                         init_std))
        self.bias = nn.Parameter(torch.zeros(num_fields))

    #: float32 on the CPU: the native kernel (:mod:`~ctrbench.models.fast.fused_fields`) where
    #: it is built (False: the torch path below)
    NATIVE = True

    def forward(self, item: torch.Tensor,
                fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.NATIVE and fused_fields.usable(item, fields, self.weight):
            return fused_fields.field_interaction(item, fields, self.weight, self.bias)
        # V^j . w_j split by the blocks of w_j = [w_i | w_f] (no [B, F, I + D] pairs tensor)
        width = item.shape[1]
        per_item = torch.addmm(self.bias, item, self.weight[:, :width].t())  # (B, F)
        scores = torch.tanh(per_item + (fields * self.weight[:, width:]).sum(-1))  # (B, F)
        alpha = torch.softmax(scores, dim=1)  # (B, F)
        # R = sum_j a_j [e_i; e^j] = [e_i sum_j a_j; sum_j a_j e^j]
        pooled = torch.bmm(alpha.unsqueeze(1), fields).squeeze(1)  # (B, D)
        return torch.cat([item * alpha.sum(1, keepdim=True), pooled], 1), alpha  # (B, I+D), (B, F)


class GlobalInteraction(nn.Module):
    """GIM: parts of widths ``part_widths`` -> ``R [B, G]`` and part weights ``a [B, P]``."""

    def __init__(self, part_widths: Sequence[int], width: int,
                 init_std: float = INIT_STD) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(w, width) for w in part_widths)
        self.weight = nn.Parameter(init_truncated_normal(torch.empty(len(part_widths), width),
                                                         init_std))
        self.bias = nn.Parameter(torch.zeros(len(part_widths)))

    #: float32 on the CPU: the native kernel (:mod:`~ctrbench.models.fast.fused_gim`) where it
    #: is built (False: the torch path below)
    NATIVE = True

    def forward(self, parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.NATIVE and usable(parts, self.weight, self.weight.shape[1]):
            return fused_gim(parts, [proj.weight for proj in self.projections],
                             [proj.bias for proj in self.projections], self.weight,
                             self.bias)  # (B, G), (B, P)
        projected = torch.stack([proj(p) for proj, p in zip(self.projections, parts)], 1)
        scores = torch.tanh((projected * self.weight).sum(-1) + self.bias)  # (B, P)
        alpha = torch.softmax(scores, dim=1)  # (B, P)
        return torch.bmm(alpha.unsqueeze(1), projected).squeeze(1), alpha  # (B, G), (B, P)


@dataclass(frozen=True)
class MIANConfig(ModelConfig):
    use_ibim: bool = param(True, Flag())  # ablation switches (Table 3)
    use_iuim: bool = param(True, Flag())
    use_icim: bool = param(True, Flag())
    use_gim: bool = param(True, Flag())
    transformer: str = param("pre_ln", OneOf(TRANSFORMERS))  # Table 4
    ibim_score: str = param("per_step", OneOf(IBIM_SCORES))  # eq. 8's W_t, b_t
    ibim_bilinear: bool = param(False, Flag())  # not in the paper
    ibim_product: bool = param(False, Flag())  # not in the paper (the mian_product card)
    heads: int = param(8, PositiveInt())
    ffn_mult: int = param(4, PositiveInt())
    transformer_dropout: float = param(0.2, Number(0.0, 1.0))
    gim_dim: int = param(64, PositiveInt())
    hidden_units: tuple[int, ...] = param((32, 8), Widths())
    activation: str = param("relu", OneOf(ACTIVATIONS))
    dropout: float = param(0.2, Number(0.0, 1.0))
    init_std: float = param(INIT_STD, Number(low_open=True))


def require_interaction_fields(schema: Schema, use_iuim: bool, use_icim: bool) -> None:
    """A CardError naming every switched-on field interaction (IUIM, ICIM) whose fields the
    dataset lacks, so that one message tells the whole fix."""
    missing = [(flag, group) for flag, wanted, group in (("use_iuim", use_iuim, "user"),
                                                         ("use_icim", use_icim, "context"))
               if wanted and not schema.group(group)]
    if not missing:
        return
    flags = " and ".join(f"{flag} = true" for flag, _ in missing)
    groups = " and ".join(group for _, group in missing)
    fix = " ".join(f"--set params.{flag}=false" for flag, _ in missing)
    both = " (or the model 'mian_wo_iuim_icim')" if len(missing) == 2 else ""
    raise CardError(f"MIAN with {flags} needs {groups} fields; the dataset has none",
                    hint=f"use {fix}{both}")


@register("mian")
class MIAN(CTRModel):
    """Multi-Interactive Attention Network (see the module docstring for the parts)."""

    #: every part GIM can combine, in order (an instance combines ``gim_parts``)
    GIM_PARTS = ("item", "context", "behavior", "user", "ibim", "iuim", "icim")
    EVAL_ROWS = 512  # rows per block when forward runs in eval mode
    config_class = MIANConfig

    def __init__(self, schema: Schema, config: MIANConfig) -> None:
        super().__init__(schema, config)
        c = config
        dim, init_std = c.embedding_dim, c.init_std
        use_ibim, use_iuim, use_icim = c.use_ibim, c.use_iuim, c.use_icim
        require_interaction_fields(schema, use_iuim, use_icim)
        self.bank = EmbeddingBank(schema, dim, sparse=c.sparse, init_std=init_std)
        item_width = len(schema.item) * dim
        widths = {"item": item_width, "context": len(schema.context) * dim,
                  "behavior": item_width, "user": len(schema.user) * dim,
                  "ibim": 2 * item_width, "iuim": item_width + dim, "icim": item_width + dim}
        enabled = {"ibim": use_ibim, "iuim": use_iuim, "icim": use_icim,
                   "context": bool(schema.context), "user": bool(schema.user)}
        #: the parts this instance combines, in GIM_PARTS order (explain's "gim" columns)
        self.gim_parts = tuple(p for p in MIAN.GIM_PARTS if enabled.get(p, True))

        self.transformer: TransformerBlock | None = None
        self.ibim: BehaviorInteraction | None = None
        if use_ibim:
            if c.transformer != "none":
                if item_width % c.heads:
                    raise CardError(f"MIAN's behaviour width {item_width} is not divisible by "
                                    f"heads = {c.heads}", hint="change embedding_dim or heads")
                self.transformer = TransformerBlock(
                    item_width, c.heads, c.ffn_mult, c.transformer_dropout,
                    pre_ln=c.transformer == "pre_ln")
            self.ibim = BehaviorInteraction(item_width, schema.max_len, c.ibim_score,
                                            c.ibim_bilinear, c.ibim_product, init_std)
            widths["ibim"] = self.ibim.out_width
        self.iuim = FieldInteraction(len(schema.user), item_width, dim, init_std) \
            if use_iuim else None
        self.icim = FieldInteraction(len(schema.context), item_width, dim, init_std) \
            if use_icim else None
        part_widths = [widths[p] for p in self.gim_parts]
        self.gim: GlobalInteraction | None = None
        if c.use_gim:
            self.gim = GlobalInteraction(part_widths, c.gim_dim, init_std)
            mlp_in = c.gim_dim
        else:
            mlp_in = sum(part_widths)
        self.mlp = MLP(mlp_in, c.hidden_units, c.dropout, c.activation, out_dim=1)

    def _parts(self, batch: Batch) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The enabled parts (``self.gim_parts`` order) and the local attention weights."""
        schema = self.schema
        steps = effective_length(batch, schema.max_len)
        item, user, context = self.bank.single_fields(
            batch, (schema.item, schema.user, schema.context))  # (B, ., D): one lookup
        item = item.flatten(1)  # (B, I)
        packing = RowPacking.of(history_mask(batch, steps))  # valid steps of (B, T')
        behaviours = embed_packed_history(self.bank, batch, schema.behavior, packing)  # (N, I)
        parts: dict[str, torch.Tensor] = {"item": item,
                                          "behavior": packing.mean(behaviours)}  # (B, I)
        weights: dict[str, torch.Tensor] = {}
        if schema.user:
            parts["user"] = user.flatten(1)  # (B, J D)
            if self.iuim is not None:
                parts["iuim"], weights["iuim"] = self.iuim(item, user)  # (B, I + D), (B, J)
        if schema.context:
            parts["context"] = context.flatten(1)  # (B, K D)
            if self.icim is not None:
                parts["icim"], weights["icim"] = self.icim(item, context)  # (B, I+D), (B, K)
        if self.ibim is not None:
            states = behaviours if self.transformer is None else \
                self.transformer.forward_steps(behaviours, packing)  # (N, I)
            recency = packed_recency(batch[HIST_LEN], packing, schema.max_len)  # (N,)
            parts["ibim"], alpha = self.ibim.packed(item, states, packing, recency)  # (B, 2I)
            weights["ibim"] = pad_steps(alpha, schema.max_len)  # (B, T)
        return [parts[p] for p in self.gim_parts], weights

    def _combine(self, parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.gim is None:
            return torch.cat(parts, dim=-1), None  # (B, sum of widths)
        return self.gim(parts)  # (B, G), (B, P)

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.training:
            return self._logits(batch)  # (B,)
        # Evaluation is row-wise (no batch statistics, no dropout): blocks of EVAL_ROWS rows keep
        # the attention's [rows, heads, T, T] tensors in cache (~1.8x faster at 8,192 rows here).
        return in_row_blocks(self._logits, batch, self.EVAL_ROWS)  # (B,)

    def _logits(self, batch: Batch) -> torch.Tensor:
        parts, _ = self._parts(batch)
        combined, _ = self._combine(parts)
        return self.mlp(combined).squeeze(-1)  # (B,)

    def explain(self, batch: Batch) -> Explanation:
        """``gim``: part weights ``[B, P]``, columns named by ``self.gim_parts`` (P = 7 for
        full MIAN); ``ibim``: weight per history step ``[B, T]`` (0 on padding); ``iuim``
        ``[B, J]`` and ``icim`` ``[B, K]``: weight per user / context field, columns named by
        the fields. Modules that are switched off are absent."""
        parts, weights = self._parts(batch)
        _, gim_alpha = self._combine(parts)
        columns = {"gim": self.gim_parts, "ibim": (),
                   "iuim": tuple(f.name for f in self.schema.user),
                   "icim": tuple(f.name for f in self.schema.context)}
        if gim_alpha is not None:
            weights["gim"] = gim_alpha
        return {name: AttentionWeights(values, columns[name]) for name, values in weights.items()}
