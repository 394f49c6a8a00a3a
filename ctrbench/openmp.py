"""OpenMP's wait policy, set before torch loads (ground floor: ``import ctrbench`` calls it),
and the split of a thread budget between torch's ops and the large products.

A thread that reaches the end of an OpenMP parallel region spins, by default, waiting for its
partners; on a shared machine that burnt the CPU time the partner needed and made training steps
10-20x slower (docs/performance.md). ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep.

With sleeping waiters every parallel region pays a thread wake-up. A split budget
(:func:`set_split`, chosen by :func:`ctrbench.engine.threads.apply_threads`) runs torch's ops on
one thread and the large products (:mod:`ctrbench.models.fast.onednn_linear`) on all of them.
"""

from __future__ import annotations

import os

WAIT_POLICY_VAR = "OMP_WAIT_POLICY"


def set_passive_wait_policy(environ: dict[str, str] | None = None) -> bool:
    """Make idle OpenMP threads sleep instead of spin, unless a policy is already set.

    Returns True when it set the variable. Has an effect only before torch (its OpenMP
    runtime) is loaded in this process; child processes inherit it either way.
    """
    env = os.environ if environ is None else environ
    if env.get(WAIT_POLICY_VAR):
        return False
    env[WAIT_POLICY_VAR] = "PASSIVE"
    return True


#: ``(torch's ops' threads, the large products' threads)`` while a budget is split, else None;
#: the split holds only while torch's intra-op count is still its first number (a later
#: ``torch.set_num_threads`` by anyone ends it)
_split: tuple[int, int] | None = None


def set_split(split: tuple[int, int] | None) -> None:
    """Run the large products on ``split[1]`` threads while torch's ops run on ``split[0]``
    (None: every op on torch's count)."""
    global _split
    _split = split


def product_split() -> tuple[int, int] | None:
    """The split in effect now: None when there is none or torch's count has moved since."""
    import torch

    split = _split
    if split is None or split[0] == split[1] or torch.get_num_threads() != split[0]:
        return None
    return split


def thread_budget() -> int:
    """The intra-op threads this process uses at most: the large products' count while a split
    holds, else torch's."""
    import torch

    split = product_split()
    return split[1] if split is not None else torch.get_num_threads()


def thread_split() -> dict[str, int] | None:
    """For records: ``{"torch_ops": 1, "large_products": N}`` while a split holds, else None."""
    split = product_split()
    return None if split is None else {"torch_ops": split[0], "large_products": split[1]}
