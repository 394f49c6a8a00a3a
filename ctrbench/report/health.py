"""Training health beside the leaderboard: the finished runs whose record flags them.

A run is flagged when its record's ``health`` says ``degenerate`` (test AUC <= 0.55, constant
scores, or a validation AUC never above its first epoch's) or ``not_converged`` (its best epoch
was the last one allowed). Flagged runs **count** in the leaderboard's means: dropping them
would select runs on their test outcome (a degenerate run is one) and hide instability that is
part of what a model is; the table lists them so a reader can judge. Dead ReLU fractions are the
largest over the model's ReLU layers (share of units that output 0 on every row of a fixed
validation slice), at initialisation and with the best epoch's weights.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctrbench.report.data import ResultSet

FLAGGED_COLUMNS = ("dataset", "model", "seed", "test_auc", "best_epoch", "epochs_run", "flags",
                   "dead_relu_init", "dead_relu_best", "path")

INTRO = ("Finished runs whose record flags their training health. They count in the "
         "leaderboard's means (dropping them would select runs on their test outcome); dead ReLU: "
         "the largest share of units that output 0 on every row of a fixed validation slice, "
         "over the model's ReLU layers, at initialisation and with the best epoch's weights.")

LEGEND = ("Flagged runs (training health in the record: degenerate = test AUC <= 0.55, constant "
          "scores or validation AUC never above its first epoch; not converged = best epoch is "
          "the last allowed) count in the means above, never dropped (that would select on test "
          "outcomes); they are listed in flagged.md.")


def flagged_table(rs: ResultSet) -> pd.DataFrame:
    """One row per finished run whose record carries a health flag."""
    runs = rs.finished
    flagged = runs[runs["flags"].fillna("").astype(str) != ""]
    return flagged.loc[:, list(FLAGGED_COLUMNS)].reset_index(drop=True)


def header_note(flagged: pd.DataFrame, dataset: str) -> str:
    """``flagged runs (counted, see flagged.md): lr 5 not converged; mian 1 degenerate``, or ''."""
    part = flagged[flagged["dataset"] == dataset]
    if part.empty:
        return ""
    notes = []
    for model, runs in part.groupby("model", sort=True):
        kinds = {"degenerate": runs["flags"].str.contains("degenerate").sum(),
                 "not converged": runs["flags"].str.contains("not converged").sum()}
        notes.append(f"{model} " + ", ".join(f"{n} {k}" for k, n in kinds.items() if n))
    return "flagged runs (counted, see flagged.md): " + "; ".join(notes)


def flagged_display(frame: pd.DataFrame) -> pd.DataFrame:
    def share(x: float) -> str:
        return "–" if not np.isfinite(x) else f"{x:.0%}"

    return pd.DataFrame({
        "dataset": frame["dataset"], "model": frame["model"], "seed": frame["seed"],
        "test AUC": [f"{x:.4f}" for x in frame["test_auc"]],
        "best / run epochs": [f"{int(b)} / {int(e)}" for b, e in
                              zip(frame["best_epoch"], frame["epochs_run"])],
        "flags": frame["flags"],
        "dead ReLU init → best": [f"{share(a)} → {share(b)}" for a, b in
                                  zip(frame["dead_relu_init"], frame["dead_relu_best"])],
    })
