"""What a run record says about where it ran: versions, device, threads, git commit."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ctrbench
from ctrbench import allocator, native
from ctrbench.openmp import thread_budget, thread_split

_PACKAGE_DIR = Path(ctrbench.__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model name (Linux /proc/cpuinfo), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    """Human-readable name of ``device`` (GPU model or CPU model)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_capability() -> str | None:
    """ATen's CPU kernel set (``AVX512``, ``AVX2``, ``DEFAULT``; ``ATEN_CPU_CAPABILITY`` overrides
    it): like the thread count, it changes float results, so a bit-for-bit rerun needs both."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the query
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout ctrbench runs from."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def native_kernels(device: torch.device) -> dict[str, str]:
    """Whether each native CPU kernel runs in this process ("native", or why not: the torch
    path then runs, the same function with other rounding)."""
    if device.type != "cpu":
        return dict.fromkeys(native.SOURCES, f"not used on {device.type}")
    return native.statuses()


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The environment block of a run record."""
    device = torch.device(device)
    git = git_state()
    return {
        "ctrbench": ctrbench.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": thread_budget(),
        "thread_split": thread_split(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "malloc": allocator.status,
        "native": native_kernels(device),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "argv": list(sys.argv),
    }
