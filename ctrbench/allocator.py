"""glibc malloc settings that keep freed memory for the next training step (ground floor:
``import ctrbench`` calls :func:`keep_freed_memory`).

By default glibc serves allocations above a dynamic threshold (128 KiB, raised to the size of
the largest mmap'd block freed so far, at most 32 MiB) with fresh ``mmap`` pages and hands the
top of its heap back to the operating system once more than twice that is free. A training step
at batch 1024 on Electronics-shaped data allocates and frees many such tensors, so every step
page-faulted part of its memory in again: DIN 1,000-2,600 minor faults per step, MIAN 600-1,100
(docs/performance.md §2, sixth round). With both thresholds fixed high the memory a step frees
stays in the heap and the next step reuses it (0-40 faults per step); one model per process,
batch 1024: DIN 34.9-36.4 -> 33.8-34.7 ms per step, LR 1.67-1.68 -> 1.51-1.63 ms, MIAN, DIEN
and DeepFM within noise; at batch 128 no model faulted. The process keeps its peak heap (up to
``TRIM_THRESHOLD`` free at its top) instead of returning it between steps.

Nothing is changed when the user set glibc's own variables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``GLIBC_TUNABLES``: glibc read them at start),
when ``CTRBENCH_MALLOC=default``, or where the C library has no ``mallopt`` (not glibc).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from typing import Any

OPT_OUT_VAR = "CTRBENCH_MALLOC"  # "default": leave glibc's settings alone
GLIBC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
              "GLIBC_TUNABLES")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 2**30

#: what :func:`keep_freed_memory` did in this process ("set", or why not), for run records
status = "not called"


def _libc() -> Any | None:
    """The symbols already loaded in this process (the C library's among them): no
    ``find_library`` subprocess on every ``import ctrbench``."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory(environ: Mapping[str, str] | None = None, libc: Any | None = None) -> str:
    """Raise glibc's mmap and trim thresholds (see the module docstring) unless the user chose
    otherwise. Returns what it did: "set", or why it left the settings alone."""
    global status
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT_VAR, "") == "default":
        status = f"default ({OPT_OUT_VAR}=default)"
    elif any(env.get(name) for name in GLIBC_VARS):
        status = "default (user's MALLOC_* / GLIBC_TUNABLES)"
    else:
        lib = _libc() if libc is None else libc
        mallopt = getattr(lib, "mallopt", None) if lib is not None else None
        if mallopt is None:
            status = "default (no glibc mallopt)"
        elif mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
            status = "set"
        else:
            status = "default (mallopt refused)"
    return status
