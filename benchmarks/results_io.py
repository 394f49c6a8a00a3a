"""Benchmark figures kept as data: one JSON per benchmark run (benchmarks/results/README.md).

``{"schema": 1, "machine": {...}, "commit": "...", "dirty": bool, "date": "...Z",
"script": "load_ratio.py", "args": {...}, "rows": [{...}, ...]}``, written to
``benchmarks/results/<script>--<machine id>--<commit[:10]>--<UTC time>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA = 1


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    """What the figures were measured on (CPU model, cores, GPU when torch sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {"hostname": socket.gethostname(), "cpu": cpu,
                            "cpu_count": os.cpu_count(), "usable_cores": usable,
                            "platform": platform.platform(), "gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


def machine_id(info: dict[str, Any]) -> str:
    """A short file-name-safe key: host and CPU/GPU model."""
    text = f"{info['hostname']}-{info['gpu'] or info['cpu']}"
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60]


def write_result(script: str, args: dict[str, Any], rows: list[dict[str, Any]],
                 out_dir: Path | None = None) -> Path:
    """Write one benchmark run's rows with machine, commit and date; returns the path."""
    info = machine()
    commit = _git("rev-parse", "HEAD") or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    now = dt.datetime.now(dt.timezone.utc)
    doc = {"schema": SCHEMA, "machine": info, "commit": commit,
           "dirty": None if status is None else bool(status),
           "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "script": script, "args": args,
           "rows": rows}
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(script).stem
    path = out / f"{stem}--{machine_id(info)}--{commit[:10]}--{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path
