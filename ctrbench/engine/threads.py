"""How many intra-op threads each process uses, chosen deliberately, and what the machine was
doing meanwhile (recorded beside every epoch's timings).

Two causes made a run 15-50x slower on a shared machine than idle (docs/performance.md):

1. OpenMP's default wait policy: a thread that reaches the end of a parallel region spins for
   a while (hundreds of microseconds) waiting for the others. A training step runs thousands of
   small parallel regions; when another process holds one of the cores, every region ends with
   the waiting thread burning the CPU time its partner needs. :func:`set_passive_wait_policy`
   sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) unless the user chose a policy;
   it must run before torch loads its OpenMP runtime, so ``ctrbench/__init__.py`` calls it.
2. More threads than the process's share of the cores: :func:`default_threads` gives each of
   ``workers`` processes at most ``usable_cores() // workers`` threads, where
   :func:`usable_cores` honours the CPU affinity mask and a cgroup CPU quota (containers,
   Slurm), not the host's core count; and at most :data:`AUTO_MAX_THREADS` (1).

Why one: with sleeping (PASSIVE) waiters a parallel region pays a thread wake-up, and a CTR
training step is thousands of small ops, so a second thread costs more than it gives. Measured
on an idle 2-core machine (docs/performance.md §1): one epoch on synthetic took 2.74 s for DIN
with 1 thread vs 7.04 s with 2, DIEN 7.69 vs 14.38, MIAN 5.93 vs 12.69, LR 0.66 vs 1.03; with
four busy processes beside it, 1 thread was faster too (DIN 8.26 vs 11.81 s) or equal (LR). Per
step at batch 128 and 1024 every paper model but xDeepFM was as fast or faster on 1 thread
(xDeepFM's CIN matmuls: 1.4-1.7x faster on 2; give it ``--threads 2``). The spare cores are
better spent on ``--jobs``.

The thread count never depends on the current load, so a seeded run stays repeatable: the same
card, seed and thread count give the same numbers (float reductions may differ across thread
counts; the record says which was used).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ctrbench import openmp
from ctrbench.openmp import (  # noqa: F401  (re-export)
    WAIT_POLICY_VAR,
    set_passive_wait_policy,
    thread_budget,
    thread_split,
)

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT) -> float | None:
    """The cgroup CPU quota in cores (``quota / period``), or None when unlimited or unknown.

    Reads cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``) and cgroup v1
    ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = unlimited).
    """
    try:
        fields = (root / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        if fields:
            return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cores(root: Path = _CGROUP_ROOT) -> int:
    """Cores this process may use: its CPU affinity mask, capped by a cgroup quota (rounded
    up: a 1.5-core quota still lets 2 threads run part of the time); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


AUTO_MAX_THREADS = 1  # ``auto``'s cap on intra-op threads per process (module docstring)
#: the most ``--threads`` accepts: far beyond any core count, far below the count at which
#: OpenMP fails to start its threads (``--threads 100000`` was a segmentation fault)
MAX_THREADS = 1024


def default_threads(workers: int = 1, cores: int | None = None) -> int:
    """Intra-op threads per process when ``workers`` processes share the usable cores: their
    share, at most :data:`AUTO_MAX_THREADS`."""
    cores = usable_cores() if cores is None else cores
    return max(1, min(AUTO_MAX_THREADS, cores // max(1, workers)))


def parse_threads(value: str | int | None) -> int | None:
    """``--threads``: a positive integer, or ``auto``/None (let :func:`default_threads` choose).
    Raises ValueError with a readable message otherwise."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        threads = int(text)
    except ValueError:
        raise ValueError(f"expected a positive integer or 'auto', got {value!r}") from None
    if threads < 1:
        raise ValueError(f"expected a positive integer or 'auto', got {value!r}")
    if threads > MAX_THREADS:
        raise ValueError(f"expected a positive integer or 'auto', got {value!r} "
                         f"(at most {MAX_THREADS} threads)")
    return threads


def splits_threads(threads: int, environ: dict[str, str] | None = None) -> bool:
    """Whether a budget of ``threads`` is split: torch's ops on one thread, the large products
    (oneDNN's, :mod:`ctrbench.models.fast.onednn_linear`) on all ``threads``. So under the
    PASSIVE wait policy with more than one thread: there a parallel region pays a thread wake-up,
    which a small op does not earn back (every paper model's step was as fast or faster on one
    thread) and a product of milliseconds does (xDeepFM's CIN, docs/performance.md §1). Under
    any other policy torch's ops run on all ``threads``, as before."""
    env = os.environ if environ is None else environ
    return threads > 1 and env.get(WAIT_POLICY_VAR, "").strip().upper() == "PASSIVE"


def apply_threads(threads: int | None, workers: int = 1) -> int:
    """Give this process ``threads`` intra-op threads (None: :func:`default_threads`), split
    where :func:`splits_threads` says so; returns the budget."""
    import torch

    chosen = default_threads(workers) if threads is None else threads
    if splits_threads(chosen):
        torch.set_num_threads(1)
        openmp.set_split((1, chosen))
    else:
        torch.set_num_threads(chosen)
        openmp.set_split(None)
    return chosen


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None
