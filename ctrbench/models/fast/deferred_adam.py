"""Adam for dense fused embedding tables, each row's updates applied when the row is next read.

Plain reference: ``torch.optim.Adam`` (no weight decay, no AMSGrad) over the table's weight,
with the dense gradient a :class:`~ctrbench.models.fast.embedding_bank.FusedEmbedding` builds
in place. Dense Adam moves every row at every step: a row the batch did not touch has a zero
gradient, but its moments decay and its weight moves by ``m / sqrt(v)``. That costs one pass
over the whole table (weight, gradient and both moments, 28 bytes per value) per step: 2.4 of
DCN's 6.7 ms at batch 128 on Electronics-shaped data (4.4M values), bound by memory bandwidth.

Here the same steps are applied, but late: each row records how many steps its values include
(``last``); a lookup first brings the rows it reads up to date (the zero-gradient steps they
missed, computed in registers: one read and one write of the row), the step updates the rows
the batch touched, and :meth:`DeferredAdam.settle` brings every row up to date (before a state
dict is taken, and when training ends). Every read of the table through its lookups therefore
sees the weights dense Adam would have, up to float rounding (torch's single-tensor Adam
operation for operation but one multiply for a divide; open loop within 3e-8 of torch's fused
Adam over 300 steps, where torch's own single-tensor Adam is within 1.5e-8:
``tests/test_fast_deferred_adam.py``). The missed steps cost ~3.8x less per value than the
dense pass (0.68 against 2.58 ms per step over 4.4M values: arithmetic on a row held in
registers instead of memory traffic; ``docs/performance.md`` §3).

Used by :func:`ctrbench.engine.optim.build_optimizers` for ``adam`` on float32 CPU tables at
least ``MIN_DIM`` wide (LR's 1-wide weights stay with the fused dense Adam: one row per value
leaves nothing to vectorise) of at least ``MIN_VALUES`` values (a smaller table's dense pass is
cheaper than the lookups' catch-up calls) without Adam's weight decay (``l2_target = "all"``
decays every row, touched or not), where ``deferred_adam.cpp`` is built
(:mod:`ctrbench.native`); ``NATIVE = False`` or ``CTRBENCH_NATIVE=0`` keeps the dense Adam.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence

import torch

from ctrbench import native

STEM = "deferred_adam"  # the kernel's name in ctrbench.native.SOURCES
MIN_DIM = 8  # narrower tables (LR's weights) keep the dense fused Adam
#: smaller tables keep the dense fused Adam too: their pass is cheap (in cache), and the lookups'
#: catch-up calls cost more (synthetic's 161k-value tables: DIN's epoch 3.4-3.6 s dense, 3.6-4.3
#: s deferred; Electronics-shaped 4.2M values: 1.3x faster steps)
MIN_VALUES = 1_000_000
NATIVE = True  # False: every table keeps the dense fused Adam
_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
# p, m, v, last, dim, the two step tables, b1, b2, eps, 1 - b1, 1 - b2
_COMMON = [_P, _P, _P, _P, _I, _P, _P, _F, _F, _F, _F, _F]
_SIGNATURES = {
    "ctrbench_deferred_catch_up": [*_COMMON, _P, _I, _I, _I],
    "ctrbench_deferred_step": [*_COMMON, _P, _P, _I, _I, _I],
}


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (:func:`ctrbench.native.status` says why)."""
    return native.load_typed(STEM, _SIGNATURES)


def usable(weight: torch.Tensor, weight_decay: float) -> bool:
    """Whether ``weight`` (a table's) can take the deferred Adam."""
    return (NATIVE and weight_decay == 0.0 and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.dim() == 2
            and weight.shape[1] >= MIN_DIM and weight.numel() >= MIN_VALUES
            and weight.is_contiguous()
            and library() is not None)


class DeferredAdam(torch.optim.Optimizer):
    """Adam over fused tables (``tables``: the modules; their weights are the parameters),
    with the missed steps of untouched rows applied when a row is read (see the module).

    The tables call :meth:`catch_up` on the rows they look up (their ``deferred`` attribute is
    set here); :meth:`step` reads the rows the step's gradient wrote from the table
    (``dirty_rows``: every row when unknown). :meth:`settle` brings every row up to date;
    :meth:`release` does that and detaches the tables (the weights are then plain again)."""

    def __init__(self, tables: Sequence[torch.nn.Module], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.tables = list(tables)
        super().__init__([t.weight for t in self.tables], {"lr": lr, "betas": betas, "eps": eps})
        self.steps = 0  # steps taken (torch's per-parameter ``step``, the same for all tables)
        # per step s (index s): lr_s / (1 - b1^s) and 1 / sqrt(1 - b2^s), grown as needed
        self._step_size = torch.zeros(1024, dtype=torch.float32)
        self._inv_sqrt_bc2 = torch.zeros(1024, dtype=torch.float32)
        for table in self.tables:
            weight = table.weight
            self.state[weight] = {
                "exp_avg": torch.zeros_like(weight), "exp_avg_sq": torch.zeros_like(weight),
                "last": torch.zeros(weight.shape[0], dtype=torch.int64)}
            table.deferred = self

    def _arguments(self, weight: torch.Tensor) -> list:
        group = self.param_groups[0]
        state = self.state[weight]
        b1, b2 = group["betas"]
        return [weight.data_ptr(), state["exp_avg"].data_ptr(), state["exp_avg_sq"].data_ptr(),
                state["last"].data_ptr(), weight.shape[1], self._step_size.data_ptr(),
                self._inv_sqrt_bc2.data_ptr(), b1, b2, group["eps"], 1.0 - b1, 1.0 - b2]

    def catch_up(self, weight: torch.Tensor, ids: torch.Tensor) -> None:
        """Bring the rows ``ids`` (any shape, repeats and padding allowed) of ``weight`` up to
        the steps taken so far."""
        if self.steps == 0 or ids.numel() == 0:
            return
        flat = ids.reshape(-1)
        if flat.dtype != torch.int64 or not flat.is_contiguous():
            flat = flat.to(torch.int64).contiguous()
        native.check(library().ctrbench_deferred_catch_up(
            *self._arguments(weight), flat.data_ptr(), flat.numel(), weight.shape[0],
            self.steps), "deferred Adam catch-up")

    def settle(self) -> None:
        """Bring every row of every table up to the steps taken so far."""
        for weight in self.param_groups[0]["params"]:
            if self.steps > 0:
                native.check(library().ctrbench_deferred_catch_up(
                    *self._arguments(weight), None, -1, weight.shape[0], self.steps),
                    "deferred Adam settle")

    def release(self) -> None:
        """:meth:`settle`, then detach the tables (their lookups no longer catch up)."""
        self.settle()
        for table in self.tables:
            if getattr(table, "deferred", None) is self:
                table.deferred = None

    def _record_step(self, step: int) -> None:
        if step >= self._step_size.shape[0]:
            size = 2 * step
            self._step_size = torch.cat([self._step_size, self._step_size.new_zeros(size)])
            self._inv_sqrt_bc2 = torch.cat([self._inv_sqrt_bc2,
                                            self._inv_sqrt_bc2.new_zeros(size)])
        group = self.param_groups[0]
        b1, b2 = group["betas"]
        self._step_size[step] = group["lr"] / (1.0 - b1 ** step)
        self._inv_sqrt_bc2[step] = 1.0 / math.sqrt(1.0 - b2 ** step)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One Adam step of the rows the gradient wrote (the rest catch up when read)."""
        if closure is not None:
            raise ValueError("DeferredAdam takes no closure")
        active = [t for t in self.tables if t.weight.grad is not None]
        if not active:  # torch's Adam skips a parameter without a gradient (no step)
            return None
        self.steps += 1
        self._record_step(self.steps)
        for table in active:
            weight, grad = table.weight, table.weight.grad
            if grad.is_sparse or not grad.is_contiguous():
                grad = grad.to_dense().contiguous()
            dirty = table.dirty_rows()  # (N,) rows the gradient may hold, or None: all rows
            if dirty is not None and dirty.numel() == 0:
                continue  # a zero gradient: every row's step is a late one
            ids = None if dirty is None else dirty.to(torch.int64).contiguous()
            native.check(library().ctrbench_deferred_step(
                *self._arguments(weight), grad.data_ptr(),
                None if ids is None else ids.data_ptr(), -1 if ids is None else ids.numel(),
                weight.shape[0], self.steps), "deferred Adam step")
        return None
