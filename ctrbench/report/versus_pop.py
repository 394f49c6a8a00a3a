"""Every leaderboard model against ``pop``, the item-popularity floor (issue 10, item 8).

``pop`` is fitted from training counts and takes no random step, so its test AUC is the same
for every seed: it is a constant, and a model beats it when its seed AUCs are significantly
above that constant. Test: one-sided one-sample t-test of the model's seed AUCs against pop's
AUC (H1: greater), Holm-adjusted across the dataset's models. With a single seed no test is
possible and the verdict falls back to the mean comparison (``pop_test = "mean"``).

Columns added to the leaderboard (documented in results/README.md): :data:`POP_COLUMNS`.
``beats_pop``: ``yes`` / ``no`` for a model compared with pop, ``pop`` on pop's own row, empty
when the dataset has no usable pop runs or the model's dataset identity differs from pop's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ctrbench.analysis import stats
from ctrbench.report.data import ResultSet

POP_MODEL = "pop"
POP_COLUMNS = ("pop_auc", "pop_delta_auc", "pop_p", "pop_p_holm", "pop_test", "beats_pop")

LEGEND = (
    "beats pop: the model's mean test AUC against pop (item popularity from training counts; "
    "its AUC does not depend on the seed): yes = one-sided t-test of the seed AUCs against "
    "pop's AUC, Holm-adjusted across the dataset's models, p < {alpha}; with one seed, the mean "
    "alone decides (marked \"mean\"). A model marked no does not beat item popularity."
)


def one_sided_p(values: np.ndarray, floor: float) -> float:
    """p of H1: mean(values) > floor (one-sample t-test; nan below 2 values)."""
    p = stats.paired_ttest(values, np.full(len(values), floor))
    if not np.isfinite(p):
        return math.nan
    return p / 2 if np.mean(values) > floor else 1 - p / 2


def add_pop_columns(board: pd.DataFrame, rs: ResultSet, alpha: float = 0.05) -> pd.DataFrame:
    """``board`` (the leaderboard frame) with :data:`POP_COLUMNS` filled per dataset."""
    out = board.copy()
    for col in POP_COLUMNS:
        out[col] = "" if col in ("pop_test", "beats_pop") else math.nan
    fin = rs.finished
    for ds in out["dataset"].unique():
        rows = out.index[out["dataset"] == ds]
        pop = out.loc[rows][(out.loc[rows, "model"] == POP_MODEL)
                            & (out.loc[rows, "status"] == "ok")]
        if pop.empty:
            continue
        pop_row = pop.index[0]
        pop_auc, pop_ident = float(out.at[pop_row, "auc_mean"]), out.at[pop_row, "identity"]
        out.at[pop_row, "beats_pop"] = POP_MODEL
        out.at[pop_row, "pop_auc"] = pop_auc
        tested: dict[int, float] = {}
        for i in rows:
            if i == pop_row or out.at[i, "status"] != "ok" or out.at[i, "identity"] != pop_ident:
                continue
            mine = fin[(fin["dataset"] == ds) & (fin["model"] == out.at[i, "model"])
                       & (fin["identity"] == pop_ident)]["test_auc"].to_numpy(dtype=float)
            mine = mine[np.isfinite(mine)]  # left out of every mean (groups.non_finite_note)
            out.at[i, "pop_auc"] = pop_auc
            out.at[i, "pop_delta_auc"] = float(np.mean(mine)) - pop_auc
            p = one_sided_p(mine, pop_auc)
            if np.isfinite(p):
                out.at[i, "pop_p"], out.at[i, "pop_test"] = p, "t-test"
                tested[i] = p
            else:
                out.at[i, "pop_test"] = "mean"
                out.at[i, "beats_pop"] = "yes" if out.at[i, "pop_delta_auc"] > 0 else "no"
        for i, p_holm in zip(tested, stats.holm(list(tested.values()))):
            out.at[i, "pop_p_holm"] = float(p_holm)
            beats = out.at[i, "pop_delta_auc"] > 0 and p_holm < alpha
            out.at[i, "beats_pop"] = "yes" if beats else "no"
    return out


def pop_cell(r: pd.Series) -> str:
    """The leaderboard's "beats pop" cell: yes/no with ΔAUC against pop and how it was decided."""
    if r["beats_pop"] == POP_MODEL:
        return "(pop)"
    if r["beats_pop"] not in ("yes", "no"):
        return "–"
    delta = f"{r['pop_delta_auc']:+.4f}"
    if r["pop_test"] == "mean":
        return f"{r['beats_pop']} ({delta}, mean)"
    p = r["pop_p_holm"]
    return f"{r['beats_pop']} ({delta}, p {'<0.001' if p < 0.001 else f'= {p:.3g}'})"


def with_pop_column(shown: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Insert the "beats pop" column after "vs ref" when ``frame`` (one dataset) has pop."""
    if not (frame["beats_pop"] == POP_MODEL).any():
        return shown
    cells = [pop_cell(r) for _, r in frame.iterrows()]
    cols = list(shown.columns)
    at = cols.index("vs ref") + 1 if "vs ref" in cols else len(cols)
    shown = shown.copy()
    shown.insert(at, "beats pop", cells)
    return shown


def header_note(board: pd.DataFrame, dataset: str) -> str:
    """A sentence for the dataset's header: pop's AUC and who fails to beat it, or how to add it."""
    part = board[board["dataset"] == dataset]
    if not (part["beats_pop"] == POP_MODEL).any():
        return (f"no pop runs: `ctrbench run -m pop -d {dataset} --seeds 1` adds the "
                "item-popularity floor")
    pop_auc = float(part.loc[part["beats_pop"] == POP_MODEL, "auc_mean"].iloc[0])
    losers = part.loc[part["beats_pop"] == "no", "model"].tolist()
    compared = part["beats_pop"].isin(["yes", "no"])
    apart = part.loc[~compared & (part["beats_pop"] != POP_MODEL) & (part["status"] == "ok"),
                     "model"].tolist()
    if not compared.any():
        tail = "no model compared with it"
    else:
        tail = ("every model compared beats it" if not losers
                else f"not beaten by: {', '.join(losers)}")
    if apart:
        tail += f" ({', '.join(apart)}: another dataset identity than pop's, not compared)"
    return f"pop (item popularity) test AUC {pop_auc:.4f}; {tail}"
