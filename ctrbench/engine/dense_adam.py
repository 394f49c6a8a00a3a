"""torch's fused Adam with its per-step bookkeeping done once per parameter set, not per tensor.

``torch.optim.Adam(fused=True)`` spends most of a small model's optimiser step in Python and in
per-tensor ops around its one kernel: each step it walks every parameter to build its lists
(``_init_group``), groups them by device and dtype, and adds 1 to every parameter's step
counter separately (on the CPU ``_foreach_add_`` falls back to one ``add_`` per tensor, each
wrapping the scalar). MIAN has 40 dense tensors: its dense step took ~238 us at batch 128,
DIN's 16 took ~139 us (``benchmarks/dense_adam_ab.py``), for ~42k and ~72k elements.

:class:`DenseAdam` is that optimiser with one fast path: when every parameter of its single
group has a dense gradient, all share one CPU device and dtype and the group asks for nothing
but plain Adam (no amsgrad, maximize, capturable or differentiable mode), it keeps the lists
from the previous step, the step counters are 0-dim views of one tensor (one ``add_`` moves
them all) and it calls the same ``torch._fused_adam_`` with the same arguments: the same bits
and the same ``state_dict`` layout (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter) as
``torch.optim.Adam(fused=True)``. Anything else (a missing gradient, a second group, another
device) runs torch's own step, which also advances only the counters of parameters with a
gradient, as torch does.

Plain reference: ``torch.optim.Adam(fused=True)`` (``tests/test_dense_adam.py``: parameters and
state bit-equal over steps, with weight decay, after ``load_state_dict``, with gradients
missing).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class _Lists:
    """The fast path's cached arguments to ``torch._fused_adam_`` (one group)."""

    def __init__(self, params: list[torch.Tensor], state: dict) -> None:
        self.params = params
        self.ids = [id(p) for p in params]
        for p in params:
            if len(state[p]) == 0:  # torch's lazy initialisation, for a fused group
                state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # every counter a view of one tensor: one add_ per step advances them all
        self.steps = torch.stack([state[p]["step"].detach().to(torch.float32) for p in params])
        for i, p in enumerate(params):
            state[p]["step"] = self.steps[i]
        self.step_views = [state[p]["step"] for p in params]
        self.exp_avgs = [state[p]["exp_avg"] for p in params]
        self.exp_avg_sqs = [state[p]["exp_avg_sq"] for p in params]

    def current(self, params: list[torch.Tensor], state: dict) -> bool:
        """Whether these lists still describe ``params`` and their state (a parameter added,
        or a state replaced by ``load_state_dict``, invalidates them)."""
        if len(params) != len(self.ids) or any(id(p) != i for p, i in zip(params, self.ids)):
            return False
        return all(state[p].get("step") is s and state[p].get("exp_avg") is m
                   for p, s, m in zip(params, self.step_views, self.exp_avgs))


class DenseAdam(torch.optim.Adam):
    """``torch.optim.Adam(..., fused=True)`` with a cheaper step for the common case (see the
    module docstring). Raises what torch raises where the fused kernel is unavailable."""

    def __init__(self, params: Iterable[torch.Tensor], fast_path: bool = True,
                 **kwargs) -> None:
        super().__init__(params, fused=True, **kwargs)
        self.fast_path = fast_path  # False: always torch's own step (the A/B's other arm)
        self._lists: _Lists | None = None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._lists = None

    def _fast_group(self) -> dict | None:
        """The single group if the fast path can take this step, else None."""
        if not self.fast_path or len(self.param_groups) != 1:
            return None
        group = self.param_groups[0]
        if (group["amsgrad"] or group["maximize"] or group["capturable"]
                or group["differentiable"] or group.get("decoupled_weight_decay", False)):
            return None
        params = group["params"]
        if not params:
            return None
        device, dtype = params[0].device, params[0].dtype
        if device.type != "cpu":
            return None  # the path tested on this hardware; torch's step elsewhere
        for p in params:
            grad = p.grad
            if grad is None or grad.is_sparse or p.device != device or p.dtype != dtype \
                    or grad.dtype != dtype:
                return None
        return group

    @torch.no_grad()
    def step(self, closure=None):
        group = self._fast_group() if closure is None else None
        if group is None:
            self._lists = None  # torch's step advances the counters one by one
            return super().step(closure)
        params = group["params"]
        lists = self._lists
        if lists is None or not lists.current(params, self.state):
            lists = self._lists = _Lists(params, self.state)
        lists.steps.add_(1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(params, [p.grad for p in params], lists.exp_avgs, lists.exp_avg_sqs,
                           [], lists.step_views, amsgrad=False, lr=group["lr"], beta1=beta1,
                           beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False, grad_scale=None, found_inf=None)
        return None
