"""README tables from a committed evidence directory (``results/evidence/<name>/``).

An evidence directory holds the CSV files ``ctrbench report`` wrote for one set of runs (see its
README.md for the commands). ``benchmarks/render_readme.py`` renders the README block
``generated:evidence:<name>:<table>`` with :func:`render`; tables:

- ``leaderboard``: every model without ``@`` (defaults), minus ablations and variants other
  than ``mian_product``: seeds, test AUC mean ± std, the seeds × users bootstrap interval, Δ vs
  the reference with the Holm-adjusted paired t-test, DeLong seeds better/worse, beats pop;
- ``tuned``: defaults vs tuned (tuned.csv) and the orderings with Kendall's τ;
- ``ablations``: ablations.csv then variants.csv;
- ``strata``: one grid per family (category, gap, profile, season) for a fixed set of models.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

DASH = "–"
SHOWN_VARIANTS = {"mian_product"}
STRATA_FAMILIES = ("category", "gap", "profile", "season")
STRATA_MODELS = ("oracle", "mian", "mian@synthetic", "mian_wo_iuim", "mian_wo_icim",
                 "mian_wo_gim", "mian_product", "din", "xdeepfm", "pop")


def _md(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _num(x: object, fmt: str = ".4f") -> str:
    return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _pm(mean: float, std: float) -> str:
    return _num(mean) if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def _p(p: float) -> str:
    return DASH if pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def leaderboard(folder: Path) -> str:
    board = pd.read_csv(folder / "leaderboard.csv")
    ablation = set(pd.read_csv(folder / "ablations.csv")["model"]) if (
        folder / "ablations.csv").exists() else set()
    variant = set(pd.read_csv(folder / "variants.csv")["model"]) if (
        folder / "variants.csv").exists() else set()
    hidden = (ablation | variant) - SHOWN_VARIANTS - {"mian"}
    board = board[~board["model"].str.contains("@") & ~board["model"].isin(hidden)]
    board = board.sort_values("auc_mean", ascending=False)
    rows = []
    for r in board.itertuples(index=False):
        interval = (DASH if pd.isna(r.auc_boot_low)
                    else f"[{r.auc_boot_low:.4f}, {r.auc_boot_high:.4f}]")
        delta = ("reference" if r.model == r.reference
                 else DASH if pd.isna(r.delta_auc) else f"{r.delta_auc:+.4f}")
        delong = (DASH if pd.isna(r.delong_seeds) or not r.delong_seeds
                  else f"{int(r.delong_better)} / {int(r.delong_worse)}")
        rows.append([r.model, str(int(r.n_seeds)), _pm(r.auc_mean, r.auc_std), interval, delta,
                     _p(r.ttest_p_holm), delong, str(r.beats_pop) if isinstance(r.beats_pop, str)
                     else DASH])
    return _md(["model", "seeds", "test AUC", "[seeds × users]", "Δ vs reference",
                "p (Holm)", "DeLong better / worse", "beats pop"], rows)


def tuned(folder: Path) -> str:
    table = pd.read_csv(folder / "tuned.csv").sort_values("auc_tuned", ascending=False)
    rows = [[r.model, f"{_pm(r.auc_default, r.std_default)} ({r.n_default})",
             f"{_pm(r.auc_tuned, r.std_tuned)} ({r.n_tuned})", f"{r.delta_auc:+.4f}",
             f"{_p(r.p_value)} ({r.test})", f"{r.rank_default} → {r.rank_tuned}",
             f"{r.trials_complete} + {r.trials_pruned} ({r.trials_failed})",
             f"{r.wall_clock_s:,.0f} s", str(r.tuned_values)]
            for r in table.itertuples(index=False)]
    text = _md(["model", "default AUC (n)", "tuned AUC (n)", "Δ", "p", "rank", "trials complete "
                "+ pruned (failed)", "trial wall clock", "tuned values"], rows)
    ordering = folder / "tuned_ordering.csv"
    if ordering.exists():
        for o in pd.read_csv(ordering).itertuples(index=False):
            text += (f"\n\nOrdering by default AUC: {o.order_default}. By tuned AUC: "
                     f"{o.order_tuned}. Kendall's τ = {o.kendall_tau:.2f} (p = "
                     f"{_p(o.kendall_p)}) over {o.n_models} models; equal budgets: "
                     f"{'yes' if o.equal_budget else 'NO'}.")
    return text


def ablations(folder: Path) -> str:
    parts = [pd.read_csv(folder / f"{name}.csv") for name in ("ablations", "variants")
             if (folder / f"{name}.csv").exists()]
    table = pd.concat(parts).drop_duplicates("model")
    rows = [[r.model, str(int(r.n_seeds)), _pm(r.auc_mean, r.auc_std),
             "reference" if r.significant == "reference" else
             f"{r.delta_auc:+.4f}" + (" *" if r.significant == "yes" else ""),
             _p(r.ttest_p_holm), "" if pd.isna(r.note) else str(r.note)]
            for r in table.itertuples(index=False)]
    return _md(["model", "seeds", "test AUC", "Δ vs mian", "p (Holm)", "note"], rows)


def strata(folder: Path) -> str:
    table = pd.read_csv(folder / "strata.csv")
    out = []
    for family in STRATA_FAMILIES:
        part = table[(table["stratum"] == family) & table["model"].isin(STRATA_MODELS)]
        if part.empty:
            continue
        buckets = list(dict.fromkeys(part["bucket"]))
        sizes = part.drop_duplicates("bucket").set_index("bucket")["n_samples"]
        models = [m for m in STRATA_MODELS if m in set(part["model"])]
        cells = {(r.model, r.bucket): (_num(r.auc_mean) + (" *" if r.significant == "yes" else ""))
                 for r in part.itertuples(index=False)}
        rows = [[m, *(cells.get((m, b), DASH) for b in buckets)] for m in models]
        out.append(f"**{family}**\n\n" + _md(
            ["model", *(f"{b} (n={int(sizes[b]):,})" for b in buckets)], rows))
    return "\n\n".join(out)


TABLES = {"leaderboard": leaderboard, "tuned": tuned, "ablations": ablations, "strata": strata}


def render(root: Path, name: str, table: str) -> str:
    """The ``table`` of evidence directory ``root/name``, with a provenance line."""
    folder = root / name
    if table not in TABLES:
        raise KeyError(f"unknown evidence table {table!r}: one of {', '.join(TABLES)}")
    if not folder.is_dir():
        raise FileNotFoundError(f"no evidence directory {folder}")
    return (f"{TABLES[table](folder)}\n\n_Rendered by `benchmarks/render_readme.py` from "
            f"`results/evidence/{name}/` (written by `ctrbench report`; commands in its "
            f"README.md)._")
