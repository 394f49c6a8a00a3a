"""Devices and memory: ``--device`` resolution, peak-memory figures, synchronisation and the
CUDA autocast the trainer and the evaluation share."""

from __future__ import annotations

import contextlib
import resource

import torch

from ctrbench.errors import CtrbenchError


def parse_device(device: str) -> torch.device | None:
    """A ``--device`` name -> its torch device (None for ``auto``); a CtrbenchError for a name
    that is not auto, cpu, cuda or cuda:N. Whether the device exists is not checked (that is
    :func:`resolve_device`, on the host that trains)."""
    text = str(device).strip().lower()
    if text == "auto":
        return None
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise CtrbenchError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
    return parsed


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu``; ``cuda`` / ``cuda:N`` (must exist)."""
    if isinstance(device, torch.device):
        return device
    resolved = parse_device(device)
    if resolved is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise CtrbenchError(f"device {device!r} requested but CUDA is not available",
                                hint="use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise CtrbenchError(f"device {device!r} does not exist "
                                f"({torch.cuda.device_count()} CUDA device(s))")
    return resolved


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark (CUDA allocator; on Linux also the process's VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM to the current RSS
            fh.write("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA allocator bytes, else the process's RSS peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PRECISIONS = ("auto", "float32", "bf16")  # train.precision


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision`` on ``device``: ``auto`` = on CUDA only, ``bf16`` = on
    either device (the CPU gains only where it has bf16 matrix units, e.g. AVX512-BF16 or AMX,
    and only for matmul-heavy models: docs/performance.md), ``float32`` = never."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
