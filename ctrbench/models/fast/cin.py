"""xDeepFM's compressed interaction network computed with batched matmuls.

Plain reference: :class:`ctrbench.models.layers.CIN` (the xDeepFM paper's broadcast Hadamard
products and 1x1 filters). :class:`BatchedCIN` subclasses it (same parameters, same names) and
must give the same values and gradients up to float rounding (``tests/test_fast_paths.py``).

Why, at the card's size (13 fields, layers (256, 128), batch 128: ``N = 2048`` rows):

- the filters' products run in oneDNN's matmul (:mod:`~ctrbench.models.fast.onednn_linear`),
  ~2x MKL's rate on this project's AMD CPU;
- the first layer's ``m * m`` products ``x0_i * x0_j`` are symmetric, so it multiplies the
  ``m (m + 1) / 2`` distinct ones (91 of 169) with the filters folded (``W_ij + W_ji``): 46%
  fewer multiply-adds in that layer's three products (~2.8 -> ~1.7 ms a step);
- the later layers' outer products are a broadcast multiply, and their backward is one native
  pass over the gradient for both reductions (:class:`_Outer`,
  :mod:`~ctrbench.models.fast.native_outer`; torch's batched products where it is not built):
  ``bmm`` of ``[N, m, 1]`` by ``[N, 1, H]`` and its autograd backward took ~1.4 + ~2.2 ms a
  step for the second layer, the multiply and the kernel ~0.5 + ~0.6 ms.

In-process A/B at batch 128 (``docs/performance.md`` §3, eleventh round): xDeepFM's step 28.3 ->
25.2 ms on one thread.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ctrbench.models.fast import native_outer, onednn_linear
from ctrbench.models.layers import CIN


class _Outer(torch.autograd.Function):
    """``z[n, i * H + h] = base[n, i] * hidden[n, h]``: ``[N, m], [N, H] -> [N, m * H]``."""

    @staticmethod
    def forward(ctx, base: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(base, hidden)
        return (base.unsqueeze(2) * hidden.unsqueeze(1)).flatten(1)  # (N, m*H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        base, hidden = ctx.saved_tensors
        need_base, need_hidden = ctx.needs_input_grad
        grad = grad.contiguous()  # (N, m*H)
        if native_outer.usable(grad, base, hidden):  # one pass over grad for both
            grad_base, grad_hidden = native_outer.backward(grad, base, hidden)
            return grad_base if need_base else None, grad_hidden if need_hidden else None
        grad = grad.view(base.shape[0], base.shape[1], hidden.shape[1])  # (N, m, H)
        # torch: [N, 1, H] x [N, H, m], a vector-matrix product per row (bmm's matrix-vector
        # product [N, m, H] x [N, H, 1] was ~7x slower)
        grad_base = (torch.bmm(hidden.unsqueeze(1), grad.transpose(1, 2)).squeeze(1)
                     if need_base else None)  # (N, m)
        grad_hidden = (torch.bmm(base.unsqueeze(1), grad).squeeze(1)
                       if need_hidden else None)  # (N, H)
        return grad_base, grad_hidden


def folds_pairs() -> bool:
    """Whether the first layer runs on the distinct pairs with folded filters (True; the
    A/B's other arm, ``benchmarks/native_ab.py --kernels pairs``, makes it False: all ``m * m``
    products with the filters as they are)."""
    return True


def _outer_products(base: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``[N, m], [N, H] -> [N, m * H]``: :class:`_Outer` for one dtype outside autocast, else
    the broadcast product through autograd (under bf16 autocast ``hidden`` comes from a bf16
    product and ``base`` stays float32; the product promotes, the next linear casts)."""
    if base.dtype == hidden.dtype and not torch.is_autocast_enabled(base.device.type):
        return _Outer.apply(base, hidden)
    return (base.unsqueeze(2) * hidden.unsqueeze(1)).flatten(1)


class BatchedCIN(CIN):
    """:class:`ctrbench.models.layers.CIN` (same parameters, same values) computed on the
    ``N = B * D`` embedding columns as rows: per layer the outer products ``[N, m * H]`` (the
    first layer's distinct pairs only) and one product with the layer's filters
    (:func:`~ctrbench.models.fast.onednn_linear.linear`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        m = self.num_fields
        left, right = torch.triu_indices(m, m)  # (P,) each: the pairs i <= j, P = m (m + 1) / 2
        # not in the state dict: the parameters and their names stay the reference's
        self.register_buffer("_pair_left", left, persistent=False)
        self.register_buffer("_pair_right", right, persistent=False)
        self.register_buffer("_pair_column", left * m + right, persistent=False)  # W[:, i*m+j]
        self.register_buffer("_mirror_column", right * m + left, persistent=False)  # W[:, j*m+i]
        self.register_buffer("_off_diagonal", (left != right).unsqueeze(0), persistent=False)

    def _folded_first_filters(self) -> torch.Tensor:
        """The first layer's filters on the distinct pairs: ``W_ii`` and ``W_ij + W_ji``,
        ``[H_1, P]`` (the gradient flows back to both halves of ``W``)."""
        weight = self.layers[0].weight  # (H_1, m*m)
        mirror = weight.index_select(1, self._mirror_column)  # (H_1, P)
        return weight.index_select(1, self._pair_column) + torch.where(
            self._off_diagonal, mirror, torch.zeros_like(mirror))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        batch, m, dim = x0.shape
        if m != self.num_fields:
            raise ValueError(f"CIN built for {self.num_fields} fields, got {m}")
        base = x0.transpose(1, 2).reshape(batch * dim, m)  # (N, m): one row per column d
        hidden = base  # (N, H_0 = m)
        pooled: list[torch.Tensor] = []
        for k, layer in enumerate(self.layers):
            if k == 0 and folds_pairs():  # x0_i x0_j = x0_j x0_i: distinct pairs, folded filters
                pairs = base.index_select(1, self._pair_left) * base.index_select(
                    1, self._pair_right)  # (N, P)
                out = onednn_linear.linear(pairs, self._folded_first_filters(), layer.bias)
            else:
                z = _outer_products(base, hidden)  # (N, m*H_{k-1})
                out = onednn_linear.linear(z, layer.weight, layer.bias)  # (N, H_k)
            if self.activation == "relu":
                out = torch.relu(out)
            if self.split_half and k < len(self.layers) - 1:
                hidden, direct = out.split([self.next_sizes[k], out.shape[1] - self.next_sizes[k]],
                                           dim=1)
            else:
                hidden, direct = out, out
            pooled.append(direct.reshape(batch, dim, direct.shape[1]).sum(dim=1))  # (B, kept_k)
        return torch.cat(pooled, dim=1)  # (B, out_dim)
