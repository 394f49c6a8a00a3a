"""DIEN's GRU and AUGRU recurrences, packed by step, as one native kernel per direction
(``native_scan.cpp``, built on first use by :mod:`ctrbench.native`).

The kernel walks the packed rows step by step and does each row's recurrent product, gates and
state update in registers; its backward walks them in reverse and writes the gradients of
``gx``, of the recurrent pre-activations and of the attention; ``dW_hh = d_pre^T h_prev`` and
``db_hh = sum d_pre`` are then one torch product and one sum over the whole buffer. Why: the
torch loop (:mod:`~ctrbench.models.fast.packed_scan`) issues five or six ops per step forward
and three in reverse, each at torch's dispatch floor on ``[n_t, 32]`` tensors: at batch 128 the
two recurrences took ~3.3 ms of DIEN's ~10 ms training step.

Same inputs, outputs, equations (:mod:`~ctrbench.models.fast.gated_scan`) and layout
(:class:`~ctrbench.models.fast.packed_scan.StepPacking`) as the torch loop. CPU, float32,
single-threaded and deterministic (the kernel's part gives the same bits at any thread count);
other dtypes and devices take the torch loop. Under CPU autocast (bf16) the packed scans already
run in float32 (``packed_scan._work_dtype``), so the kernel runs there too.

Plain reference: :func:`~ctrbench.models.fast.packed_scan.packed_gru_scan` /
:func:`~ctrbench.models.fast.packed_scan.packed_augru_scan` on their torch loop, and through them
``gated_scan``'s references (``tests/test_fast_native_scan.py``: values and gradients against
float64, edge packings, the whole DIEN).
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from ctrbench import native

STEM = "native_scan"  # the kernel's name in ctrbench.native.SOURCES
_POINTER, _INT, _INT64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "ctrbench_scan_forward": [_POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _INT64, _INT,
                              _POINTER, _POINTER],
    "ctrbench_scan_backward": [_POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _INT64, _INT,
                               _POINTER, _POINTER, _POINTER, _POINTER],
}


def _library() -> ctypes.CDLL | None:
    return native.load_typed(STEM, _SIGNATURES)


def usable(gx: torch.Tensor) -> bool:
    """Whether :func:`native_gated_scan` can take ``gx``: a float32 CPU tensor (also under
    autocast: the packed scans cast 16-bit inputs to float32 first) and a built library."""
    if gx.device.type != "cpu" or gx.dtype != torch.float32:
        return False
    return _library() is not None


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _NativeGatedScan(torch.autograd.Function):
    """Packed states ``[N, H]`` of the GRU (``gate`` None) or AUGRU recurrence."""

    @staticmethod
    def forward(ctx, gx, w_hh, b_hh, gate, sizes, previous):  # type: ignore[override]
        gx, w_hh, b_hh = gx.contiguous(), w_hh.contiguous(), b_hh.contiguous()
        gate = None if gate is None else gate.contiguous()  # (N, 1)
        rows, hidden = gx.shape[0], w_hh.shape[1]
        states = gx.new_empty(rows + 1, hidden)  # row N: h_{-1} = 0, for the backward
        states[rows] = 0.0
        saved = gx.new_empty(rows, 4 * hidden)  # r | z | n | hn
        step_sizes = (ctypes.c_int64 * len(sizes))(*sizes)
        native.check(_library().ctrbench_scan_forward(
            gx.data_ptr(), w_hh.data_ptr(), b_hh.data_ptr(), _pointer(gate), step_sizes,
            len(sizes), hidden, states.data_ptr(), saved.data_ptr()), "scan forward")
        ctx.sizes, ctx.previous, ctx.has_gate = step_sizes, previous, gate is not None
        ctx.save_for_backward(states, saved, w_hh, *(() if gate is None else (gate,)))
        return states[:-1]  # (N, H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        states, saved, w_hh, *rest = ctx.saved_tensors
        gate = rest[0] if ctx.has_gate else None
        rows, hidden = saved.shape[0], w_hh.shape[1]
        grad = grad_out.to(torch.float32).clone(memory_format=torch.contiguous_format)  # ours
        d_gx = saved.new_empty(rows, 3 * hidden)
        d_pre = saved.new_empty(rows, 3 * hidden)
        d_gate = None if gate is None else saved.new_empty(rows, 1)
        native.check(_library().ctrbench_scan_backward(
            w_hh.data_ptr(), _pointer(gate), states.data_ptr(), saved.data_ptr(), ctx.sizes,
            len(ctx.sizes), hidden, grad.data_ptr(), d_gx.data_ptr(), d_pre.data_ptr(),
            _pointer(d_gate)), "scan backward")
        previous = states.index_select(0, ctx.previous)  # (N, H): h_{t-1}
        with torch.autocast("cpu", enabled=False):  # a backward under autocast stays float32
            d_w = d_pre.t() @ previous  # (3H, H)
        return d_gx, d_w, d_pre.sum(dim=0), d_gate, None, None


def native_gated_scan(gx: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
                      gate: torch.Tensor | None, sizes: list[int],
                      previous: torch.Tensor) -> torch.Tensor:
    """Packed states ``[N, H]`` of the GRU (``gate`` None) or AUGRU (``gate [N, 1]``) from
    packed ``gx [N, 3H]``, ``w_hh [3H, H]``, ``b_hh [3H]`` (all float32, CPU; check
    :func:`usable` first); ``sizes`` and ``previous`` are those of the packing
    (``StepPacking.sizes``, ``.previous``). Differentiable in the first four (once)."""
    return _NativeGatedScan.apply(gx, w_hh, b_hh, gate, sizes, previous)
