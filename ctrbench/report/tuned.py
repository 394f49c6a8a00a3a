"""Defaults vs tuned: each model under the paper's settings beside its tuned card.

A tuned card ``<model>@<dataset>`` (written by ``ctrbench tune``) is paired with the default
card ``<model>`` on the dataset it was tuned on. Per pair: mean ± std test AUC of each over its
seeds, ΔAUC (tuned − default) and its test (paired t over the common seeds when there are at
least two, else Welch's t over all seeds: said in ``test``), the tuned values, and the budget the
study spent (from the card's ``[tuned_from]`` table). Per dataset: the leaderboard ordering by
default and by tuned AUC, and Kendall's tau between the two (does tuning change the ranking?).

The leaderboard's rule holds here too (:func:`~ctrbench.report.groups.group_models`): a side is
averaged only when its finished runs share one model config and one dataset identity, and a pair
is compared only when both sides are such and share that identity. Otherwise the row is kept
with status ``not compared``, no ΔAUC, no test and no rank, and its note says why.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ctrbench.analysis import stats
from ctrbench.cards import card_paths
from ctrbench.report.data import ResultSet
from ctrbench.report.groups import ModelRuns, group_models

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TUNED_COLUMNS = (
    "dataset", "model", "tuned_card", "n_default", "n_tuned", "n_common", "auc_default",
    "std_default", "auc_tuned", "std_tuned", "delta_auc", "p_value", "test", "rank_default",
    "rank_tuned", "trials_complete", "trials_pruned", "trials_failed", "wall_clock_s",
    "tuned_values", "status", "note",
)
ORDERING_COLUMNS = ("dataset", "n_models", "kendall_tau", "kendall_p", "order_default",
                    "order_tuned", "equal_budget", "left_out")
NAN = float("nan")


def tuned_card_facts(name: str) -> dict[str, Any]:
    """The tuned values (the card's own [params]/[train]) and its [tuned_from] table."""
    path = card_paths("models").get(name)
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    values = {f"{section}.{k}": v for section in ("params", "train")
              for k, v in raw.get(section, {}).items()}
    return {"values": values, "tuned_from": raw.get("tuned_from", {})}


def _format_values(values: Mapping[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v).replace(" ", "")
    return "; ".join(f"{k.split('.', 1)[1]}={show(v)}" for k, v in sorted(values.items()))


def _side(g: ModelRuns) -> tuple[pd.Series, float, float]:
    """(seed -> test AUC, mean, std) of one side; nan mean/std unless it is one configuration."""
    a = pd.Series(g.seed_values(), dtype=float)  # (seeds,) indexed by seed
    if g.status != "ok":
        return a, NAN, NAN
    return a, float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else NAN


def _why_not(base: ModelRuns, tuned: ModelRuns) -> str:
    """Why a pair is not compared ("" when it is): a side refused by the leaderboard's
    one-configuration rule (its note), or two dataset identities."""
    refused = [f"{g.model}: {g.note or g.status}" for g in (base, tuned) if g.status != "ok"]
    if refused:
        return "; ".join(refused)
    if base.identity != tuned.identity:
        return (f"dataset identity of {tuned.model} ({tuned.identity[:8]}) differs from "
                f"{base.model}'s ({base.identity[:8]}): two test sets, not compared")
    return ""


def _pair_row(ds: str, base: ModelRuns, tuned: ModelRuns) -> dict[str, Any]:
    (a, mean_a, std_a), (b, mean_b, std_b) = _side(base), _side(tuned)
    common = sorted(set(a.index) & set(b.index))
    why = _why_not(base, tuned)
    if why:
        delta, p, test = NAN, NAN, ""
    elif len(common) >= 2:
        delta = float(b[common].mean() - a[common].mean())
        p, test = stats.paired_ttest(b[common].to_numpy(), a[common].to_numpy()), "paired t"
    else:
        delta = float(b.mean() - a.mean())
        p, test = stats.welch_ttest(b.to_numpy(), a.to_numpy()), "Welch t"
    facts = tuned_card_facts(tuned.model)
    origin = facts.get("tuned_from", {})
    side_notes = [f"{g.model}: {g.note}" for g in (base, tuned) if g.status == "ok" and g.note]
    return {
        "dataset": ds, "model": base.model, "tuned_card": tuned.model, "n_default": len(a),
        "n_tuned": len(b), "n_common": len(common), "auc_default": mean_a,
        "std_default": std_a, "auc_tuned": mean_b, "std_tuned": std_b,
        "delta_auc": delta, "p_value": p, "test": test,
        "trials_complete": origin.get("trials_complete", np.nan),
        "trials_pruned": origin.get("trials_pruned", np.nan),
        "trials_failed": origin.get("trials_failed", np.nan),
        "wall_clock_s": origin.get("wall_clock_s", np.nan),
        "tuned_values": _format_values(facts.get("values", {})),
        "status": "not compared" if why else "ok",
        "note": "; ".join(filter(None, [why, *side_notes])),
    }


def tuned_tables(rs: ResultSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per default/tuned pair, one ordering row per dataset); empty without pairs.

    Sides are grouped as on the leaderboard (:func:`group_models`); a pair not compared keeps
    its row (status, note) but has no rank and is left out of the orderings and Kendall's tau.
    """
    rows: list[dict[str, Any]] = []
    orderings: list[dict[str, Any]] = []
    for ds in rs.datasets():
        groups = group_models(rs, ds)
        pairs = [(name.rpartition("@")[0], name) for name in sorted(groups)
                 if name.endswith(f"@{ds}") and name.rpartition("@")[0] in groups]
        if not pairs:
            continue
        frame = pd.DataFrame([_pair_row(ds, groups[base], groups[tuned])
                              for base, tuned in pairs], columns=list(TUNED_COLUMNS))
        ok = frame["status"] == "ok"
        frame["rank_default"] = frame["auc_default"].where(ok).rank(ascending=False,
                                                                    method="min")
        frame["rank_tuned"] = frame["auc_tuned"].where(ok).rank(ascending=False, method="min")
        rows.extend(frame.to_dict("records"))
        done = frame[ok]
        tau, p = (stats.kendall_tau(done["auc_default"], done["auc_tuned"]) if len(done)
                  else (NAN, NAN))
        budgets = set(zip(done["trials_complete"], done["trials_pruned"]))
        spent = {c + pr for c, pr in budgets if np.isfinite(c) and np.isfinite(pr)}
        orderings.append({
            "dataset": ds, "n_models": len(done), "kendall_tau": tau, "kendall_p": p,
            "order_default": " > ".join(done.sort_values("auc_default", ascending=False)
                                        ["model"]),
            "order_tuned": " > ".join(done.sort_values("auc_tuned", ascending=False)["model"]),
            "equal_budget": len(spent) == 1,
            "left_out": ", ".join(frame.loc[~ok, "model"]),
        })
    return (pd.DataFrame(rows, columns=list(TUNED_COLUMNS)),
            pd.DataFrame(orderings, columns=list(ORDERING_COLUMNS)))


TUNED_LEGEND = (
    "Each model under its card's (paper) settings and as tuned by `ctrbench tune` (validation "
    "AUC only; the tuned card is evaluated on its own seeds). AUC: test AUC, mean ± std over "
    "seeds (seed-to-seed variance only). ΔAUC = tuned − default over the common seeds when at "
    "least two are shared (paired t-test), else over all seeds (Welch's t-test); p is not "
    "corrected for multiple comparisons. Budget: complete + pruned (failed) trials and the "
    "summed trial wall clock of the study. τ: Kendall's tau between the orderings by default "
    "and by tuned AUC (1 = tuning leaves the ranking unchanged). As on the leaderboard, a side "
    "is averaged only over runs of one model config on one dataset identity, and a pair is "
    "compared only on one identity; otherwise the row says \"not compared\" and why, and is "
    "left out of the ranks and τ."
)


def tuned_display(frame: pd.DataFrame) -> pd.DataFrame:
    def auc(m: float, s: float, n: int) -> str:
        if not np.isfinite(m):
            return f"– ({n})"
        return f"{m:.4f} ± {s:.4f} ({n})" if np.isfinite(s) else f"{m:.4f} ({n})"

    def p_cell(p: float) -> str:
        return "–" if not np.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")

    def budget(r: pd.Series) -> str:
        if not np.isfinite(r["trials_complete"]):
            return "?"
        return (f"{int(r['trials_complete'])}+{int(r['trials_pruned'])} "
                f"({int(r['trials_failed'])}), {r['wall_clock_s']:.0f} s")

    def rank(a: float, b: float) -> str:
        return f"{int(a)}→{int(b)}" if np.isfinite(a) and np.isfinite(b) else "–"

    return pd.DataFrame({
        "model": frame["model"],
        "AUC default (n)": [auc(m, s, n) for m, s, n in
                            zip(frame["auc_default"], frame["std_default"], frame["n_default"])],
        "AUC tuned (n)": [auc(m, s, n) for m, s, n in
                          zip(frame["auc_tuned"], frame["std_tuned"], frame["n_tuned"])],
        "ΔAUC": [f"{d:+.4f}" if np.isfinite(d) else "–" for d in frame["delta_auc"]],
        "p": [f"{p_cell(p)} ({t})" if t else st for p, t, st in
              zip(frame["p_value"], frame["test"], frame["status"])],
        "rank default→tuned": [rank(a, b) for a, b in
                               zip(frame["rank_default"], frame["rank_tuned"])],
        "budget": [budget(r) for _, r in frame.iterrows()],
        "tuned values": frame["tuned_values"],
        "note": frame["note"],
    })


def ordering_footer(ordering: pd.DataFrame, ds: str) -> str:
    rows = ordering[ordering["dataset"] == ds]
    if rows.empty:
        return ""
    r = rows.iloc[0]
    left = (f" Left out (not compared, see the note): {r['left_out']}."
            if r["left_out"] else "")
    if not r["n_models"]:
        return f"No pair compared: no ordering.{left}"
    tau = "–" if not np.isfinite(r["kendall_tau"]) else f"{r['kendall_tau']:.2f}"
    budget = ("every model had the same trial budget" if r["equal_budget"]
              else "**budgets differ between models** (see each row)")
    return (f"Ordering by default AUC: {r['order_default']}. By tuned AUC: {r['order_tuned']}. "
            f"Kendall's τ = {tau} over {r['n_models']} models; {budget}.{left}")
