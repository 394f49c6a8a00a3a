"""The performance scripts' way to keep figures: one call into :mod:`bench_results`.

``write_result("load_ratio.py", args, rows, out_dir)`` saves through
:func:`bench_results.save` (``benchmarks/results/<machine>/<commit12>-<script>.json``, the one
schema of ``benchmarks/results/README.md``); ``out_dir`` replaces ``benchmarks/results``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench_results import save


def write_result(script: str, args: dict[str, Any], rows: list[dict[str, Any]],
                 out_dir: Path | None = None) -> Path:
    """Save one benchmark run's rows with machine, commit and date; returns the path."""
    return save(Path(script).stem, {k: v if isinstance(v, (int, float, bool, type(None)))
                                    else str(v) for k, v in dict(args).items()},
                rows, results_dir=Path(out_dir) if out_dir is not None else None)
