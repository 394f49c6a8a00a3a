"""MIAN's Pre-LN transformer block over packed valid steps as one autograd node: the forward
and a hand-written backward call the native kernels (attention, dropout, LayerNorm) and MKL's
products directly.

``h [N, D]`` (the valid steps packed by row, :class:`~ctrbench.models.fast.fused_attention.
RowPacking`) -> ``y [N, D]``::

    x1 = LN1(h);  qkv = x1 Wqkv^T + bqkv;  c = attention(qkv)      (per row, native kernel)
    h2 = h + dropout(c Wo^T + bo)
    x2 = LN2(h2); f = relu(x2 W1^T + b1)                             (in place)
    y  = h2 + dropout(f W2^T + b2)

Why: through autograd the block is ~15 nodes whose ReLU and LayerNorms each take passes that
allocate. As one node the ReLU runs in place on its product's output and the LayerNorms are the
native kernel where it is built (torch's ``native_layer_norm`` otherwise): forward + backward
3.35 -> 3.19 ms at batch 128 and 26.2 -> 23.0 ms at 1024 (one thread, alternating in one
process; ~0.5 ms of the 1024 gain is the LayerNorm kernel's). Autograd's own bookkeeping was
not the cost: MIAN's step dispatches ~36 fewer ops. The dropout masks are drawn in the order
:meth:`TransformerBlock._after_attention` draws them, so both paths drop the same elements under
one seed.

Plain reference: :class:`~ctrbench.models.sequence.TransformerBlock` through autograd
(``tests/test_fast_transformer_block.py``: values and every gradient).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ctrbench.models.fast import dropout as native_dropout
from ctrbench.models.fast import native_layer_norm, native_relu
from ctrbench.models.fast.fused_attention import attention_backward, attention_forward
from ctrbench.models.fast.fused_attention import usable as attention_usable


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> tuple[torch.Tensor, ...]:
    """``(LN(x), mean, rstd)`` of ``x [N, D]``."""
    if native_layer_norm.usable(x, norm.weight):
        return native_layer_norm.forward(x, norm.weight, norm.bias, norm.eps)
    return torch.native_layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                         rstd: torch.Tensor, norm: nn.LayerNorm) -> tuple[torch.Tensor, ...]:
    """``(dx, dweight, dbias)`` of :func:`_layer_norm`."""
    if native_layer_norm.usable(x, norm.weight):
        return native_layer_norm.backward(grad, x, mean, rstd, norm.weight)
    return torch.ops.aten.native_layer_norm_backward(
        grad, x, list(norm.normalized_shape), mean, rstd, norm.weight, norm.bias,
        [True, True, True])


class _PreLNBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, offsets: torch.Tensor, block: nn.Module,
                *params: torch.Tensor) -> torch.Tensor:
        attention, ffn = block.attention, block.ffn.net
        p = block.dropout.p if block.training else 0.0
        h = h.contiguous()
        x1, mean1, rstd1 = _layer_norm(h, block.norm1)  # (N, D), (N, 1), (N, 1)
        qkv = torch.addmm(attention.qkv.bias, x1, attention.qkv.weight.t())  # (N, 3D)
        context, stats = attention_forward(qkv, offsets, attention.heads)  # (N, D)
        mixed = torch.addmm(attention.out.bias, context, attention.out.weight.t())  # (N, D)
        seeds = (native_dropout.draw_seed(), native_dropout.draw_seed()) if p > 0.0 else None
        h2 = native_dropout.apply_mask(mixed, h, seeds[0], p) if seeds else mixed.add_(h)
        x2, mean2, rstd2 = _layer_norm(h2, block.norm2)
        hidden = torch.addmm(ffn[0].bias, x2, ffn[0].weight.t()).relu_()  # (N, 4D)
        f = torch.addmm(ffn[2].bias, hidden, ffn[2].weight.t())  # (N, D)
        y = native_dropout.apply_mask(f, h2, seeds[1], p) if seeds else f.add_(h2)
        ctx.block, ctx.p, ctx.seeds = block, p, seeds
        ctx.save_for_backward(h, offsets, x1, mean1, rstd1, qkv, context, stats, h2, x2, mean2,
                              rstd2, hidden)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (h, offsets, x1, mean1, rstd1, qkv, context, stats, h2, x2, mean2, rstd2,
         hidden) = ctx.saved_tensors
        block, p, seeds = ctx.block, ctx.p, ctx.seeds
        attention, ffn = block.attention, block.ffn.net
        grad = grad.contiguous()  # (N, D): dy, also the residual's part of dh2
        grad_f = native_dropout.apply_mask(grad, None, seeds[1], p) if seeds else grad
        grad_w2, grad_b2 = grad_f.t().mm(hidden), grad_f.sum(0)
        grad_hidden = grad_f.mm(ffn[2].weight)  # (N, 4D): of the ReLU's output, then its input
        if native_relu.usable(grad_hidden, hidden):
            grad_b1 = native_relu.backward_(grad_hidden, hidden)
        else:
            grad_hidden = torch.ops.aten.threshold_backward(grad_hidden, hidden, 0)
            grad_b1 = grad_hidden.sum(0)
        grad_w1 = grad_hidden.t().mm(x2)
        grad_x2 = grad_hidden.mm(ffn[0].weight)  # (N, D)
        grad_h2, grad_g2, grad_n2 = _layer_norm_backward(grad_x2, h2, mean2, rstd2, block.norm2)
        grad_h2 = grad_h2.add_(grad)
        grad_mixed = native_dropout.apply_mask(grad_h2, None, seeds[0], p) if seeds else grad_h2
        grad_wo, grad_bo = grad_mixed.t().mm(context), grad_mixed.sum(0)
        grad_qkv = attention_backward(qkv, offsets, context, stats,
                                      grad_mixed.mm(attention.out.weight), attention.heads)
        grad_wqkv, grad_bqkv = grad_qkv.t().mm(x1), grad_qkv.sum(0)
        grad_x1 = grad_qkv.mm(attention.qkv.weight)  # (N, D)
        grad_h, grad_g1, grad_n1 = _layer_norm_backward(grad_x1, h, mean1, rstd1, block.norm1)
        grad_h = grad_h.add_(grad_h2)
        return (grad_h, None, None, grad_g1, grad_n1, grad_wqkv, grad_bqkv, grad_wo, grad_bo,
                grad_g2, grad_n2, grad_w1, grad_b1, grad_w2, grad_b2)


def block_parameters(block: nn.Module) -> tuple[torch.Tensor, ...]:
    """The block's parameters in :class:`_PreLNBlock`'s order of gradients."""
    attention, ffn = block.attention, block.ffn.net
    return (block.norm1.weight, block.norm1.bias, attention.qkv.weight, attention.qkv.bias,
            attention.out.weight, attention.out.bias, block.norm2.weight, block.norm2.bias,
            ffn[0].weight, ffn[0].bias, ffn[2].weight, ffn[2].bias)


def usable(h: torch.Tensor, block: nn.Module) -> bool:
    """Whether :func:`pre_ln_block` can run ``block`` on ``h``: float32 on the CPU outside
    autocast, the native attention and dropout kernels built, a Pre-LN block with a ReLU FFN,
    elementwise-affine LayerNorms and a dropout rate below 1."""
    ffn = block.ffn.net
    return (block.pre_ln and attention_usable(h, block.attention.head_dim)
            and native_dropout.native_usable(h) and isinstance(ffn[1], nn.ReLU)
            and block.norm1.weight is not None and block.norm2.weight is not None
            and block.dropout.p < 1.0)


def pre_ln_block(h: torch.Tensor, offsets: torch.Tensor, block: nn.Module) -> torch.Tensor:
    """``block`` (a Pre-LN :class:`~ctrbench.models.sequence.TransformerBlock`) over the valid
    steps ``h [N, D]`` packed by row with ``offsets [B + 1]``: ``[N, D]``, differentiable in
    ``h`` and the block's parameters (once). Check :func:`usable` first."""
    return _PreLNBlock.apply(h, offsets, block, *block_parameters(block))
