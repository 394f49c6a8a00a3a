"""A dense embedding gradient's row updates from a step's lookups, by a native kernel.

Plain reference: the torch route of :meth:`ctrbench.models.fast.embedding_bank.FusedEmbedding.
_add_in_place` (``index_add_`` of the lookups' gradients, then the touched-row L2 of the
distinct rows, then the padding row zeroed) and ``index_fill_`` of the rows written before
(:meth:`~ctrbench.models.fast.embedding_bank.FusedEmbedding.zero_dense_grad`). The kernel
(``native_rows.cpp``) does the same additions in the same order, so its gradient equals that
route's bit for bit (``tests/test_fast_native_rows.py``).

Why: ``index_add_`` of DIN's ~9k looked-up rows of 16 into a 4.1M-value table took ~300 us of
a 7 ms step (about 33 ns a row, cache misses included); the kernel's loop prefetches the rows.
Rows narrower than a vector (LR's and the linear terms' 1-wide table) take a plain scalar loop:
built as partial vectors they cost ~26 ns an id, 30x torch's ``scatter_add_`` (LR's ~9k ids a
step: 238 -> 28 us).
"""

from __future__ import annotations

import ctypes

import torch

from ctrbench import native

STEM = "native_rows"  # the kernel's name in ctrbench.native.SOURCES
_POINTER = ctypes.c_void_p
_SIGNATURES = {
    "ctrbench_add_lookup_grads": [_POINTER] * 4 + [ctypes.c_int64] * 3 + [
        ctypes.c_float, _POINTER, _POINTER, _POINTER, _POINTER, ctypes.c_int64],
    "ctrbench_zero_rows": [_POINTER, _POINTER, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64],
}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def native_usable(target: torch.Tensor) -> bool:
    """Whether the kernel can update ``target``: a contiguous float32 CPU tensor ``[V, D]``,
    and a built library."""
    return (target.device.type == "cpu" and target.dtype == torch.float32 and target.dim() == 2
            and target.is_contiguous() and library() is not None)


def add_lookup_grads(target: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                     values: torch.Tensor, row_l2: tuple[float, torch.Tensor | None] | None,
                     scratch: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """``target[ids] += values`` (``ids [N]`` int64 rows of ``target [V, D]``, ``values [N,
    D]``), then with ``row_l2 = (l2, scale [V] or None)`` each distinct row's
    ``(weight[r] * scale[r]) * 2 l2``, then row ``padding_idx`` zeroed. ``scratch``: an int64
    buffer ``[V]`` (contents ignored). Returns the rows written: the distinct ones ``[R]``
    with L2, else ``ids``."""
    ids = ids.contiguous()
    values = values.to(torch.float32).contiguous()
    rows, dim = target.shape
    l2, scale = row_l2 if row_l2 is not None else (0.0, None)
    two_l2 = 2 * l2  # ctypes' c_float rounds it to float32, as torch's mul_ does
    if scale is not None:
        scale = scale.to(torch.float32).contiguous()
    distinct = torch.empty_like(ids) if two_l2 != 0.0 else ids
    count = ctypes.c_int64(0)
    native.check(library().ctrbench_add_lookup_grads(
        target.data_ptr(), weight.detach().contiguous().data_ptr(), ids.data_ptr(),
        values.data_ptr(), ids.shape[0], dim, rows, two_l2,
        None if scale is None else scale.data_ptr(), scratch.data_ptr(), distinct.data_ptr(),
        ctypes.byref(count), padding_idx), "embedding gradient rows")
    return distinct[:count.value] if two_l2 != 0.0 else ids


def zero_rows(target: torch.Tensor, ids: torch.Tensor) -> None:
    """``target[ids] = 0`` for ``target [V, D]`` and int64 ``ids [N]``."""
    ids = ids.contiguous()
    native.check(library().ctrbench_zero_rows(target.data_ptr(), ids.data_ptr(), ids.shape[0],
                                              target.shape[1], target.shape[0]), "zero rows")
