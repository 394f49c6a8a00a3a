"""Large products with a layer's weight in oneDNN's matmul instead of MKL's sgemm.

On the CPU torch's ``addmm`` / ``mm`` call MKL's sgemm. On this project's AMD EPYC (AVX-512)
MKL 2024.2 reached 80-93 GFLOP/s on one thread, oneDNN's matmul
(``torch.ops.mkldnn._linear_pointwise``, the op torch's compiler emits for CPU linears) 170-210
on the same products: xDeepFM's CIN layers at batch 128 (``[2048, 169] x [169, 256]`` and
``[2048, 1664] x [1664, 128]``) 2.2x forward and for the input's gradient, 1.6-1.9x for the
weight's; a ``1024^3`` product 93 -> 197 GFLOP/s (``benchmarks/cin_floor.py`` prints both).

Where it is used: xDeepFM's CIN (:class:`~ctrbench.models.fast.cin.BatchedCIN`), whose products
have one shape per batch size. Not in MIAN's transformer block nor DIN's attention unit, whose
row counts change every batch: oneDNN builds a kernel per shape (~1 ms), and with the rows padded
to a few shapes the products were no faster inside the step (``docs/performance.md`` §2,
eleventh round). Below :data:`MIN_MACS` multiply-adds its fixed cost (~15 us a call) loses.

Rounding: a different blocking of the sums than MKL's for inputs wider than ~128 (the last bits
differ, as between any two BLAS libraries). CPU float32 outside autocast and a torch built with
oneDNN, else torch's ``addmm`` / ``mm``. Deterministic for a given thread count.
``ENABLED = False`` or ``CTRBENCH_NATIVE=0`` switches it off.

Plain reference: ``torch.nn.functional.linear`` (``tests/test_fast_onednn_linear.py``: values
and gradients on both sides of :data:`MIN_MACS`, rows padded to a bucket, the fallbacks).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ctrbench import native, openmp

#: False: every linear runs ``F.linear`` (the A/B's other arm)
ENABLED = True
#: rows x inputs x outputs from which oneDNN is used: below it, its ~15 us call overhead lost
#: to ``addmm`` in the measured table (e.g. [128, 128] x [128, 80], 1.3M: 0.99x forward)
MIN_MACS = 4 * 2**20
#: :func:`status` when the large products go to oneDNN
ROUTED = "oneDNN"


def _matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's ``x weight^T + bias``, on the products' threads of a split thread budget
    (:func:`ctrbench.openmp.product_split`), else on torch's."""
    split = openmp.product_split()
    if split is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    torch.set_num_threads(split[1])
    try:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    finally:
        torch.set_num_threads(split[0])


@functools.cache
def available() -> bool:
    """Whether this torch has oneDNN's linear op and it agrees with ``addmm`` on a probe."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=gen) for s in ((5, 3), (4, 3), (4,)))
        return torch.allclose(op(x, w, b, "none", [], ""), torch.addmm(b, x, w.t()), atol=1e-5)
    except RuntimeError:
        return False


def status(device: str | torch.device = "cpu") -> str:
    """For run records: "oneDNN" where the large float32 products on ``device`` go to oneDNN,
    else why not ("off (CTRBENCH_NATIVE=...)", "off (ENABLED = False)", "unavailable: ...",
    "not used on cuda")."""
    device = torch.device(device)
    if device.type != "cpu":
        return f"not used on {device.type}"
    if native.disabled():
        return f"off ({native.OPT_OUT_VAR}={os.environ.get(native.OPT_OUT_VAR, '')})"
    if not ENABLED:
        return "off (ENABLED = False)"
    if not available():
        return "unavailable: this torch has no working mkldnn._linear_pointwise"
    return ROUTED


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` may take ``x`` with ``weight`` to oneDNN: float32 CPU tensors
    outside CPU autocast, switched on (``ENABLED``, and not ``CTRBENCH_NATIVE=0``, which turns
    the native kernels off) and available."""
    return (x.device.type == "cpu" and weight.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and status() == ROUTED)


def _large(rows: int, inputs: int, outputs: int) -> bool:
    return rows * inputs * outputs >= MIN_MACS


def bucket(rows: int) -> int:
    """``rows`` rounded up to one of 16 sizes per octave (at least a multiple of 16): oneDNN
    builds a kernel per shape (~1 ms each, kept in its primitive cache), so the row counts that
    differ from the full batch's (the last training batch, the last evaluation block) are
    padded to few shapes (at most ~6% more rows)."""
    step = max(16, 1 << max(0, rows.bit_length() - 5))
    return -(-rows // step) * step


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [N, in] weight^T + bias`` by oneDNN on ``x`` padded with zero rows to
    :func:`bucket` ``(N)``: ``[N, out]`` (the first rows of the padded product, a view)."""
    rows, padded = x.shape[0], bucket(x.shape[0])
    if padded != rows or not x.is_contiguous():
        source = x
        x = source.new_empty(padded, source.shape[1])
        x[:rows].copy_(source)
        x[rows:].zero_()
    return _matmul(x, weight.contiguous(), bias)[:rows]


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [N, in] W^T + b`` -> ``[N, out]`` (``weight [out, in]``); oneDNN for large products.
    No autograd. Check :func:`usable` first."""
    rows, (outputs, inputs) = x.shape[0], weight.shape
    if _large(rows, inputs, outputs):
        return _onednn(x, weight, bias)
    return torch.addmm(bias, x, weight.t()) if bias is not None else x.mm(weight.t())


def grad_input(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``dy [N, out] W`` -> ``[N, in]``: the input's gradient of :func:`forward`. No autograd."""
    rows, (outputs, inputs) = grad.shape[0], weight.shape
    if _large(rows, inputs, outputs):
        return _onednn(grad, weight.t(), None)
    return grad.mm(weight)


def grad_weight(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``dy^T [out, N] x [N, in]`` -> ``[out, in]``: the weight's gradient of :func:`forward`
    (oneDNN reads the transposed operands in place). No autograd."""
    rows, inputs, outputs = x.shape[0], x.shape[1], grad.shape[1]
    if _large(rows, inputs, outputs):
        return _matmul(grad.t(), x.t(), None)
    return grad.t().mm(x)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return forward(x, weight, bias)  # (N, out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        # the weight's first: the input's gradient, made last, is still in cache for the node
        # that consumes it next (the CIN's outer-product backward reads its 13.6 MB)
        grad_w = grad_weight(grad, x) if need_w else None  # (out, in)
        grad_x = grad_input(grad, weight) if need_x else None  # (N, in)
        grad_b = grad.sum(0) if need_b and ctx.has_bias else None  # (out,)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x [..., in]`` -> ``[..., out]``, through oneDNN
    where :func:`usable` (differentiable once in ``x``, ``weight`` and ``bias``)."""
    if not usable(x, weight) or x.dim() < 1 or (bias is not None and bias.dtype != x.dtype):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])  # (N, in)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        out = _Linear.apply(flat, weight, bias)
    else:
        out = forward(flat, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])
