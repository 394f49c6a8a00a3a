"""The closing table of `ctrbench run`: per model, the seeds finished and test AUC/logloss as
mean ± std over seeds (the records' own values; failed runs and records of another
configuration listed apart, never averaged)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ctrbench.runs.runner import RunSpec
from ctrbench.runs.state import record_state


def leaderboard(specs: Sequence[RunSpec]) -> tuple[list[list[Any]], list[list[Any]]]:
    """Rows (model, seeds finished, test AUC mean ± std, logloss, s/epoch) and the runs not
    counted (failed, or a record that is not this run's: :func:`record_state`, the rule the
    skip logic uses too)."""
    rows: list[list[Any]] = []
    failed: list[list[Any]] = []
    by_model: dict[str, list[RunSpec]] = {}
    for spec in specs:
        by_model.setdefault(spec.model, []).append(spec)
    for model, model_specs in by_model.items():
        aucs, losses, epoch_seconds = [], [], []
        for spec in model_specs:
            state = record_state(spec)
            record = state.record
            auc = _number(record.test.get("auc")) if record is not None else 0.0
            if state.kind == "finished" and not np.isfinite(auc):  # as `report`: left out
                failed.append([model, spec.seed, f"test AUC not finite ({auc}) in the finished "
                                                 "record: left out of the means"])
            elif state.kind == "finished" and record is not None:
                aucs.append(auc)
                losses.append(_number(record.test.get("logloss")))
                epoch_seconds.extend(e.train_seconds for e in record.epochs)
            elif state.kind == "failed" and record is not None:
                failed.append([model, spec.seed, record.error or ""])
            elif state.kind in ("other", "inconsistent", "unreadable", "damaged"):
                failed.append([model, spec.seed, f"not counted: {state.detail}"])
        rows.append([model, f"{len(aucs)}/{len(model_specs)}", _mean_std(aucs),
                     _mean_std(losses), f"{np.mean(epoch_seconds):.1f}" if epoch_seconds else "–"])
    return rows, failed


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) == 1:  # no spread from one seed (as `report` shows it)
        return f"{arr[0]:.4f} ± –"
    return f"{arr.mean():.4f} ± {arr.std(ddof=1):.4f}"
