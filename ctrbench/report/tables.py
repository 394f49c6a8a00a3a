"""The report's tables as pandas frames with fixed columns (documented in results/README.md).

Per dataset, each model's finished runs are grouped by configuration
(:mod:`ctrbench.report.groups`): records that mix dataset identities or model configs are refused
and never averaged. Comparisons are declared before any test number is seen and are made on
the common seeds, Holm-corrected across the declared family (:mod:`ctrbench.report.compare`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.analysis import stats
from ctrbench.progress import message
from ctrbench.report.compare import (
    BootstrapInfo,
    Comparison,
    Declared,
    ModelInterval,
    auto_resamples,
    bootstrap_dataset,
    compare,
    declare,
    shared_test_set,
)
from ctrbench.report.data import CardBook, ResultSet, finite_auc, paper_dataset
from ctrbench.report.groups import ModelRuns, group_models, protocol_text

__all__ = [
    "ModelRuns",
    "auto_resamples",
    "csv_text",
    "delta_table",
    "failed_table",
    "group_models",
    "leaderboard",
    "paper_tables",
    "timing_table",
]

NAN = float("nan")
ABLATION_BASE = "mian"
DEFAULT_VARIANTS = ("mian_postln", "mian_no_transformer")
TIMING_BASE = "din"

LEADERBOARD_COLUMNS = (
    "dataset", "model", "status", "n_seeds", "n_failed", "auc_mean", "auc_std", "auc_ci_low",
    "auc_ci_high", "auc_boot_low", "auc_boot_high", "valid_auc_mean", "gauc_mean", "gauc_std",
    "logloss_mean", "logloss_std", "reference", "n_common", "delta_auc", "relaimpr",
    "delta_logloss", "ttest_p", "ttest_p_holm", "wilcoxon_p", "wilcoxon_p_holm", "significant",
    "delong_better", "delong_worse", "delong_seeds", "boot_delta_low", "boot_delta_high",
    "boot_n", "seed_aucs", "identity", "protocol", "version", "config", "model_config",
    "dataset_identity", "note",
)
DELTA_COLUMNS = (
    "dataset", "model", "n_seeds", "auc_mean", "auc_std", "n_common", "delta_auc", "relaimpr",
    "logloss_mean", "logloss_std", "delta_logloss", "ttest_p_holm", "significant", "note",
)
TIMING_COLUMNS = (
    "dataset", "model", "n_seeds", "train_s_per_epoch", "eval_s_per_epoch",
    "train_samples_per_s", "eval_samples_per_s", "peak_memory_mb", "n_parameters",
    "best_epoch_mean", "epochs_run_mean", "time_vs_din", "note",
)
PAPER_COLUMNS = (
    "dataset", "paper_dataset", "model", "n_seeds", "auc_mean", "paper_auc", "delta_auc",
    "logloss_mean", "paper_logloss", "delta_logloss", "paper_base", "rel_impr_pct",
    "paper_rel_impr_pct",
)
ORDERING_COLUMNS = (
    "dataset", "paper_dataset", "n_models", "kendall_tau", "kendall_p", "concordant_pairs",
    "discordant_pairs", "ordering_holds",
)
FAILED_COLUMNS = ("dataset", "model", "seed", "status", "error", "path")


def csv_text(frame: pd.DataFrame) -> str:
    """The CSV form of every table: fixed columns, 6 significant digits, empty for missing."""
    return frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")


# --------------------------------------------------------------------------- leaderboard
def _json(flat: Mapping[str, object]) -> str:
    return json.dumps(flat, sort_keys=True, separators=(",", ":"), default=str)


def significance_label(p_holm: float, alpha: float) -> str:
    if not np.isfinite(p_holm):
        return ""
    return "yes" if p_holm < alpha else "no"


def leaderboard(rs: ResultSet, cards: CardBook, *, reference: str | None = None,
                alpha: float = 0.05, n_boot: int | None = None, boot_seed: int = 0
                ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Table 2 done properly; returns the frame and, per dataset, its header (the declared
    reference and what chose it, the protocol, the bootstrap).

    ``n_boot``: bootstrap resamples; None = automatic (:func:`auto_resamples`), 0 = none.
    """
    rows, why = [], {}
    for ds in rs.datasets():
        groups = group_models(rs, ds)
        declared = declare(groups, cards, reference)
        ref = declared.reference
        head = [f"Reference: {ref} ({declared.reason})" if ref
                else f"Reference: none ({declared.reason})"]
        labels, labels_path = shared_test_set(rs, groups, ref)
        comp = compare(rs, groups, declared, alpha=alpha, labels=labels)
        if ref:
            g = groups[ref]
            head.append(_family_text(declared, comp))
            head.append(f"dataset identity {g.identity[:8]}, protocol {g.protocol} v{g.version}")
            oracle = _oracle_auc(rs, g)
            if oracle is not None:
                head.append(f"oracle test AUC {oracle:.4f} (the generator's exact probabilities)")
        head.append(protocol_text(rs, groups))
        intervals, info = ({}, BootstrapInfo())
        if labels is not None:
            intervals, info = bootstrap_dataset(rs, groups, comp, labels, str(labels_path),
                                                n_boot=n_boot, seed=boot_seed)
        if info.n_boot:
            head.append(f"bootstrap: {info.n_boot} resamples of seeds x {info.n_clusters:,} "
                        f"test {info.clusters} (seed {boot_seed})")
        why[ds] = "; ".join(head)
        for m, g in groups.items():
            rows.append(_leaderboard_row(rs, ds, m, g, ref, comp.get(m, Comparison()),
                                         intervals.get(m), alpha))
    frame = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    frame = _sort_by_auc(frame)
    ints = ("n_common", "delong_better", "delong_worse", "delong_seeds")
    return frame.astype(dict.fromkeys(ints, "Int64")), why


def _family_text(declared: Declared, comp: Mapping[str, Comparison]) -> str:
    """The declared comparisons and the Holm family: those with a test (p finite); a declared
    comparison without one (fewer than 2 common seeds) is named apart, since Holm's m counts
    only the tests it adjusts."""
    ref = declared.reference
    family = [m for m in declared.family if comp[m].declared]
    tested = [m for m in family if np.isfinite(comp[m].ttest_p)]
    text = (f"declared comparisons (the Holm family, m = {len(tested)}): "
            + (", ".join(f"{m} vs {ref}" for m in tested) or "none"))
    untested = [f"{m} vs {ref} (n {comp[m].n_common})" for m in family if m not in tested]
    if untested:
        text += ("; declared but no test possible (fewer than 2 common seeds with finite "
                 "AUCs), outside the Holm family: " + ", ".join(untested))
    return text


def _leaderboard_row(rs: ResultSet, ds: str, m: str, g: ModelRuns, ref: str | None,
                     c: Comparison, interval: ModelInterval | None, alpha: float) -> dict:
    auc, gauc, ll = g.summary("test_auc"), g.summary("test_gauc"), g.summary("test_logloss")
    if m == ref:
        sig = "reference"
    elif c.declared:
        sig = significance_label(c.ttest_p_holm, alpha)
    else:
        sig = ""
    notes = [g.note, *c.notes]
    if ref and m != ref and g.status == "ok" and not c.declared and not c.notes:
        notes.append("not a declared comparison")
    if g.status == "ok" and len(g.runs) < 3:
        notes.append(f"n = {len(g.runs)} < 3 seeds: intervals unreliable")
        message(f"warning: {ds}/{m} has {len(g.runs)} seed(s); its intervals are unreliable")
    first = str(g.runs["path"].iloc[0]) if g.status == "ok" else ""
    interval = interval or ModelInterval()
    return {
        "dataset": ds, "model": m, "status": g.status, "n_seeds": len(g.runs),
        "n_failed": g.n_failed, "auc_mean": auc.mean, "auc_std": auc.std,
        "auc_ci_low": auc.ci_low, "auc_ci_high": auc.ci_high,
        "auc_boot_low": interval.low, "auc_boot_high": interval.high,
        "valid_auc_mean": g.runs["valid_auc"].mean() if g.status == "ok" else NAN,
        "gauc_mean": gauc.mean, "gauc_std": gauc.std, "logloss_mean": ll.mean,
        "logloss_std": ll.std, "reference": ref or "",
        "n_common": c.n_common if c.declared else None, "delta_auc": c.delta_auc,
        "relaimpr": c.relaimpr, "delta_logloss": c.delta_logloss, "ttest_p": c.ttest_p,
        "ttest_p_holm": c.ttest_p_holm, "wilcoxon_p": c.wilcoxon_p,
        "wilcoxon_p_holm": c.wilcoxon_p_holm, "significant": sig,
        "delong_better": c.delong_better, "delong_worse": c.delong_worse,
        "delong_seeds": c.delong_seeds, "boot_delta_low": c.boot_low,
        "boot_delta_high": c.boot_high, "boot_n": c.boot_n,
        "seed_aucs": (";".join(f"{s}:{v:.8g}" for s, v in g.seed_values().items())
                      if g.status == "ok" else ""),
        "identity": g.identity, "protocol": g.protocol, "version": g.version,
        "config": g.config,
        "model_config": _json(rs.configs.get(first, {})) if first else "",
        "dataset_identity": _json(rs.identities.get(first, {})) if first else "",
        "note": "; ".join(filter(None, notes)),
    }


def _oracle_auc(rs: ResultSet, group: ModelRuns) -> float | None:
    """AUC of the stored ``oracle`` column (synthetic data) on the group's first test set."""
    scores = rs.scores(str(group.runs.iloc[0]["path"]))
    if scores is None or "oracle" not in scores:
        return None
    return stats.auc_score(scores["oracle"], scores["labels"])


def _sort_by_auc(frame: pd.DataFrame) -> pd.DataFrame:
    key = -frame["auc_mean"].where(frame["status"] == "ok").fillna(-np.inf)
    order = frame.assign(_k=key).sort_values(["dataset", "_k", "model"], kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def is_ablation(model: str, cards: CardBook) -> bool:
    return model.startswith(f"{ABLATION_BASE}_wo_") or cards.in_group(model, "ablations")


def is_variant(model: str, arch: str, cards: CardBook) -> bool:
    if model in DEFAULT_VARIANTS:
        return True
    return cards.in_group(model, "variants") and arch == ABLATION_BASE


def delta_table(rs: ResultSet, cards: CardBook, kind: str, *, alpha: float = 0.05
                ) -> pd.DataFrame:
    """Table 3 (``kind="ablations"``) or Table 4 (``kind="variants"``): deltas vs mian."""
    rows = []
    arch = rs.runs.groupby(["dataset", "model"])["arch"].first()
    for ds in rs.datasets():
        groups = group_models(rs, ds)
        if ABLATION_BASE not in groups:
            continue
        members = [m for m in groups if m != ABLATION_BASE and (
            is_ablation(m, cards) if kind == "ablations" else is_variant(m, arch[ds, m], cards))]
        if not members:
            continue
        usable = tuple(m for m in members if groups[m].status == "ok")
        declared = Declared(ABLATION_BASE, usable, f"{kind} against {ABLATION_BASE}")
        comp = compare(None, groups, declared, alpha=alpha)
        for m in [ABLATION_BASE, *members]:
            g, c = groups[m], comp.get(m, Comparison())
            auc, ll = g.summary("test_auc"), g.summary("test_logloss")
            rows.append({
                "dataset": ds, "model": m, "n_seeds": len(g.runs), "auc_mean": auc.mean,
                "auc_std": auc.std, "n_common": c.n_common if c.declared else None,
                "delta_auc": c.delta_auc, "relaimpr": c.relaimpr, "logloss_mean": ll.mean,
                "logloss_std": ll.std, "delta_logloss": c.delta_logloss,
                "ttest_p_holm": c.ttest_p_holm,
                "significant": "reference" if m == ABLATION_BASE
                else significance_label(c.ttest_p_holm, alpha),
                "note": "; ".join(filter(None, [g.note, *c.notes])),
            })
    return pd.DataFrame(rows, columns=list(DELTA_COLUMNS)).astype({"n_common": "Int64"})


# run column -> timing column (means over seeds of the per-run epoch means)
_TIMING_MEANS = {
    "train_s_per_epoch": "train_s_per_epoch", "eval_s_per_epoch": "eval_s_per_epoch",
    "train_samples_per_s": "train_samples_per_s", "eval_samples_per_s": "eval_samples_per_s",
    "best_epoch": "best_epoch_mean", "epochs_run": "epochs_run_mean",
}


def timing_table(rs: ResultSet) -> pd.DataFrame:
    """§4.5: seconds per epoch, throughput, memory, parameters, early stopping, time vs DIN."""
    rows = []
    for ds in rs.datasets():
        groups = group_models(rs, ds)
        base = groups.get(TIMING_BASE)
        base_s = base.runs["train_s_per_epoch"].mean() if base and base.status == "ok" else NAN
        for m, g in groups.items():
            row = {"dataset": ds, "model": m, "n_seeds": len(g.runs), "note": g.note}
            if g.status == "ok":  # refused and empty groups keep only their note
                means = g.runs[list(_TIMING_MEANS)].mean()
                row.update({col: float(means[src]) for src, col in _TIMING_MEANS.items()})
                row["peak_memory_mb"] = float(g.runs["peak_memory_mb"].max())
                row["n_parameters"] = int(g.runs["n_parameters"].max())
                row["time_vs_din"] = row["train_s_per_epoch"] / base_s
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(TIMING_COLUMNS))
    return frame.astype({"n_parameters": "Int64"})


def paper_tables(rs: ResultSet, cards: CardBook, mapping: Mapping[str, str] | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Our AUC/logloss beside the paper's, and whether the paper's AUC ordering holds.

    ``rel_impr_pct`` / ``paper_rel_impr_pct``: 100 x (AUC - AUC_base) / AUC_base, the definition
    the MIAN paper's Table 2 used (+0.61% = (0.8209 - 0.8159) / 0.8159 on Books), both against
    ``paper_base``: of the baselines present here, the one with the paper's best AUC (chosen by
    the paper's numbers, never ours).
    """
    rows, order_rows = [], []
    for ds in rs.datasets():
        pds = paper_dataset(ds, mapping)
        if pds is None:
            continue
        groups = group_models(rs, ds)
        ours, theirs = [], []
        for m, g in groups.items():
            info = cards.get(m)
            paper = (info.paper.get(pds) if info else None) or {}
            if g.status != "ok" or "auc" not in paper:
                continue
            auc, ll = g.summary("test_auc").mean, g.summary("test_logloss").mean
            p_auc, p_ll = float(paper["auc"]), float(paper.get("logloss", NAN))
            rows.append({"dataset": ds, "paper_dataset": pds, "model": m,
                         "n_seeds": len(g.runs), "auc_mean": auc, "paper_auc": p_auc,
                         "delta_auc": auc - p_auc, "logloss_mean": ll, "paper_logloss": p_ll,
                         "delta_logloss": ll - p_ll})
            ours.append(auc)
            theirs.append(p_auc)
        if not ours:
            continue
        _paper_relative(rows[-len(ours):], cards)
        tau, p = stats.kendall_tau(ours, theirs)
        a, b = np.asarray(ours), np.asarray(theirs)
        iu = np.triu_indices(a.size, k=1)
        prod = np.sign(a[:, None] - a[None, :])[iu] * np.sign(b[:, None] - b[None, :])[iu]
        conc, disc = int((prod > 0).sum()), int((prod < 0).sum())
        holds = "" if a.size < 2 else ("yes" if disc == 0 else "no")
        order_rows.append({"dataset": ds, "paper_dataset": pds, "n_models": int(a.size),
                           "kendall_tau": tau, "kendall_p": p, "concordant_pairs": conc,
                           "discordant_pairs": disc, "ordering_holds": holds})
    return (pd.DataFrame(rows, columns=list(PAPER_COLUMNS)),
            pd.DataFrame(order_rows, columns=list(ORDERING_COLUMNS)))


def _paper_relative(rows: list[dict], cards: CardBook) -> None:
    """Fill ``paper_base`` and both relative improvements (the paper's definition) in place."""
    bases = [r for r in rows if cards.in_group(r["model"], "baselines")]
    if not bases:
        return
    base = max(bases, key=lambda r: (r["paper_auc"], r["model"]))
    for r in rows:
        r["paper_base"] = base["model"]
        r["rel_impr_pct"] = stats.relative_change_pct(r["auc_mean"], base["auc_mean"])
        r["paper_rel_impr_pct"] = stats.relative_change_pct(r["paper_auc"], base["paper_auc"])


def failed_table(rs: ResultSet) -> pd.DataFrame:
    """Runs that are not finished (failed, running, unreadable), and finished ones whose test
    AUC is not finite: listed, never averaged."""
    broken = rs.finished[~finite_auc(rs.finished)]
    nf = pd.concat([rs.not_finished, broken]).sort_values(["dataset", "model", "seed"],
                                                           kind="stable")
    paths = [_relative(p, rs) for p in nf["path"]]
    errors = [_first_line(e, status) for e, status in zip(nf["error"], nf["status"])]
    errors = [f"test AUC is {auc}, not finite: left out of every mean and test"
              if status == "finished" else e
              for e, status, auc in zip(errors, nf["status"], nf["test_auc"])]
    frame = nf.assign(path=paths, error=errors)
    return frame.loc[:, list(FAILED_COLUMNS)].reset_index(drop=True)


def _first_line(error: object, status: str) -> str:
    """The first line of a record's error (at most 160 characters), or what its status says
    when it holds none (``running``: in progress or killed; an unknown status named)."""
    lines = str(error).splitlines() if isinstance(error, str) else []
    if lines and lines[0].strip():
        return lines[0][:160]
    if status == "running":
        return "no result: still running, or killed while running"
    if status in ("failed", "unreadable"):
        return ""
    return f"unknown status {str(status)[:40]!r}: not a finished run"


def _relative(path: str, rs: ResultSet) -> str:
    try:
        return Path(path).relative_to(rs.root).as_posix()
    except ValueError:
        return str(path)
