"""OpenMP's wait policy, set before torch loads (ground floor: ``import ctrbench`` calls it).

A thread that reaches the end of an OpenMP parallel region spins, by default, waiting for its
partners; on a shared machine that burnt the CPU time the partner needed and made training steps
10-20x slower (docs/performance.md). ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep.
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
