"""The report's tables as pandas frames with fixed columns (documented in results/README.md).

Per dataset, each model's finished runs are grouped (:func:`group_models`); a model whose
records mix dataset identities is refused (status ``mixed_identity``) and never averaged.
Comparisons against a reference model pair runs by seed and are Holm-corrected across the
dataset's comparisons (:func:`compare_to_reference`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.analysis import stats
from ctrbench.progress import message
from ctrbench.report.data import CardBook, ResultSet, paper_dataset

NAN = float("nan")
ABLATION_BASE = "mian"
DEFAULT_VARIANTS = ("mian_postln", "mian_no_transformer")
TIMING_BASE = "din"
BOOTSTRAP_BUDGET = 2_400_000_000  # row-evaluations; ~25 ns each measured on one CPU core

LEADERBOARD_COLUMNS = (
    "dataset", "model", "status", "n_seeds", "n_failed", "auc_mean", "auc_std", "auc_ci_low",
    "auc_ci_high", "gauc_mean", "gauc_std", "logloss_mean", "logloss_std", "reference",
    "rel_impr_pct", "delta_auc", "ttest_p", "ttest_p_holm", "wilcoxon_p", "wilcoxon_p_holm",
    "significant", "delong_significant_seeds", "delong_seeds", "boot_delta_low",
    "boot_delta_high", "boot_n", "seed_aucs", "identity", "protocol", "version", "note",
)
DELTA_COLUMNS = (
    "dataset", "model", "n_seeds", "auc_mean", "auc_std", "delta_auc", "logloss_mean",
    "logloss_std", "delta_logloss", "ttest_p_holm", "significant", "note",
)
TIMING_COLUMNS = (
    "dataset", "model", "n_seeds", "train_s_per_epoch", "eval_s_per_epoch",
    "train_samples_per_s", "eval_samples_per_s", "peak_memory_mb", "n_parameters",
    "best_epoch_mean", "epochs_run_mean", "time_vs_din", "note",
)
PAPER_COLUMNS = (
    "dataset", "paper_dataset", "model", "n_seeds", "auc_mean", "paper_auc", "delta_auc",
    "logloss_mean", "paper_logloss", "delta_logloss",
)
ORDERING_COLUMNS = (
    "dataset", "paper_dataset", "n_models", "kendall_tau", "kendall_p", "concordant_pairs",
    "discordant_pairs", "ordering_holds",
)
FAILED_COLUMNS = ("dataset", "model", "seed", "status", "error", "path")


def csv_text(frame: pd.DataFrame) -> str:
    """The CSV form of every table: fixed columns, 6 significant digits, empty for missing."""
    return frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")


# --------------------------------------------------------------------------- grouping
@dataclass
class ModelRuns:
    """One model's runs on one dataset."""

    model: str
    status: str  # "ok" | "mixed_identity" | "no_finished_runs"
    runs: pd.DataFrame  # finished runs (sorted by seed)
    n_failed: int
    identity: str = ""
    protocol: str = ""
    version: str = ""
    note: str = ""

    def seed_values(self, column: str = "test_auc") -> dict[int, float]:
        return dict(zip(self.runs["seed"].astype(int), self.runs[column].astype(float)))

    def summary(self, column: str) -> stats.Summary:
        if self.status != "ok":
            return stats.Summary(0, NAN, NAN, NAN, NAN)
        return stats.summarize(self.runs[column].to_numpy())


def group_models(rs: ResultSet, dataset: str) -> dict[str, ModelRuns]:
    """Model name -> its runs on ``dataset``; mixed identities are refused and explained."""
    runs = rs.runs[rs.runs["dataset"] == dataset]
    out: dict[str, ModelRuns] = {}
    for model, grp in runs.groupby("model", sort=True):
        fin = grp[grp["status"] == "finished"].sort_values("seed")
        n_failed = int((grp["status"] != "finished").sum())
        if fin.empty:
            out[model] = ModelRuns(model, "no_finished_runs", fin, n_failed,
                                   note="no finished runs")
            continue
        idents = fin.groupby("identity", sort=True)["seed"].apply(list)
        if len(idents) > 1:
            parts = [f"{key[:8]} (seed {', '.join(map(str, seeds))})"
                     for key, seeds in idents.items()]
            out[model] = ModelRuns(model, "mixed_identity", fin, n_failed,
                                   note="refused: records mix dataset identities "
                                   + "; ".join(parts))
            continue
        first = fin.iloc[0]
        out[model] = ModelRuns(model, "ok", fin, n_failed, str(first["identity"]),
                               str(first["protocol"]), str(first["version"]))
    return out


def choose_reference(groups: Mapping[str, ModelRuns], cards: CardBook,
                     requested: str | None) -> tuple[str | None, str]:
    """The reference model and why: ``requested``, else the best baseline by mean AUC."""
    if requested:
        if requested in groups and groups[requested].status == "ok":
            return requested, "--reference"
        return None, f"reference {requested!r} has no usable runs here"
    baselines = [(g.summary("test_auc").mean, m) for m, g in groups.items()
                 if g.status == "ok" and cards.in_group(m, "baselines")]
    baselines = [b for b in baselines if np.isfinite(b[0])]
    if not baselines:
        return None, "no baseline model with finished runs"
    best = max(baselines, key=lambda b: (b[0], b[1]))
    return best[1], "best baseline by mean AUC"


# --------------------------------------------------------------------------- comparisons
@dataclass
class Comparison:
    """A model against the reference on one dataset (paired by seed)."""

    rel_impr_pct: float = NAN
    delta_auc: float = NAN
    delta_logloss: float = NAN
    ttest_p: float = NAN
    wilcoxon_p: float = NAN
    ttest_p_holm: float = NAN
    wilcoxon_p_holm: float = NAN
    delong_significant: int | None = None
    delong_seeds: int | None = None
    boot_low: float = NAN
    boot_high: float = NAN
    boot_n: int = 0
    notes: list[str] = field(default_factory=list)


def _paired_scores(rs: ResultSet, model: ModelRuns, ref: ModelRuns, seeds: Sequence[int],
                   labels: np.ndarray) -> list[tuple[int, str, str]]:
    """(seed, model path, reference path) for seeds whose both .npz hold the same test set."""
    m_paths = dict(zip(model.runs["seed"].astype(int), model.runs["path"]))
    r_paths = dict(zip(ref.runs["seed"].astype(int), ref.runs["path"]))
    out = []
    for seed in seeds:
        a, b = rs.scores(m_paths[seed]), rs.scores(r_paths[seed])
        if a is None or b is None:
            continue
        if np.array_equal(a["labels"], labels) and np.array_equal(b["labels"], labels):
            out.append((seed, m_paths[seed], r_paths[seed]))
    return out


def compare_to_reference(
    rs: ResultSet | None, groups: Mapping[str, ModelRuns], reference: str | None,
    models: Sequence[str], *, alpha: float = 0.05, n_boot: int | None = 0, boot_seed: int = 0,
) -> dict[str, Comparison]:
    """Paired t-test and Wilcoxon (Holm across ``models``), and with ``rs`` DeLong per seed and
    the bootstrap CI of the seed-mean AUC difference on the shared test set."""
    out = {m: Comparison() for m in models}
    ref = groups.get(reference) if reference else None
    if ref is None or ref.status != "ok":
        return out
    ref_auc = ref.seed_values("test_auc")
    ref_mean = ref.summary("test_auc").mean
    labels = None  # the shared test set: the first reference record with scores
    if rs is not None:
        found = (rs.scores(str(p)) for p in ref.runs["path"])
        first = next((f for f in found if f is not None), None)
        labels = first["labels"] if first is not None else None
    boot_jobs: dict[str, list[tuple[str, str]]] = {}
    for m in models:
        g, c = groups[m], out[m]
        if g.status != "ok":
            continue
        if g.identity != ref.identity:
            c.notes.append("dataset identity differs from the reference's: not compared")
            continue
        c.delta_auc = g.summary("test_auc").mean - ref_mean
        c.rel_impr_pct = 100.0 * c.delta_auc / ref_mean
        c.delta_logloss = g.summary("test_logloss").mean - ref.summary("test_logloss").mean
        auc = g.seed_values("test_auc")
        seeds = sorted(set(auc) & set(ref_auc))
        if len(seeds) < len(auc) or len(seeds) < len(ref_auc):
            c.notes.append(f"paired on {len(seeds)} common seed(s)")
        c.ttest_p = stats.paired_ttest([auc[s] for s in seeds], [ref_auc[s] for s in seeds])
        c.wilcoxon_p = stats.wilcoxon_signed_rank([auc[s] for s in seeds],
                                                  [ref_auc[s] for s in seeds])
        if labels is None:
            continue
        pairs = _paired_scores(rs, g, ref, seeds, labels)
        if len(pairs) < len(seeds):
            c.notes.append(f"test scores for {len(pairs)} of {len(seeds)} paired seed(s)")
        if pairs:
            sig = 0
            for _, mp, rp in pairs:
                res = stats.delong_test(rs.scores(mp)["scores"], rs.scores(rp)["scores"], labels)
                sig += int(np.isfinite(res.p) and res.p < alpha)
            c.delong_significant, c.delong_seeds = sig, len(pairs)
            boot_jobs[m] = [(mp, rp) for _, mp, rp in pairs]
    for key, attr in (("ttest_p", "ttest_p_holm"), ("wilcoxon_p", "wilcoxon_p_holm")):
        adjusted = stats.holm([getattr(out[m], key) for m in models])
        for m, p in zip(models, adjusted):
            setattr(out[m], attr, float(p))
    if boot_jobs and n_boot != 0:
        _bootstrap(rs, boot_jobs, labels, out, n_boot, boot_seed)
    return out


def _bootstrap(rs: ResultSet, jobs: Mapping[str, list[tuple[str, str]]], labels: np.ndarray,
               out: dict[str, Comparison], n_boot: int | None, seed: int) -> None:
    """One shared set of resamples for every record of the dataset (so all pairs are paired)."""
    paths = sorted({p for pairs in jobs.values() for pair in pairs for p in pair})
    if n_boot is None:
        n_boot = auto_resamples(len(paths), labels.size)
    message(f"bootstrap: {n_boot} resamples x {len(paths)} score vectors x {labels.size:,} rows")
    reps = stats.bootstrap_aucs([rs.scores(p)["scores"] for p in paths], labels,
                                n_boot=n_boot, seed=seed)
    row = {p: i for i, p in enumerate(paths)}
    for m, pairs in jobs.items():
        diffs = np.mean([reps[row[mp]] - reps[row[rp]] for mp, rp in pairs], axis=0)
        out[m].boot_low, out[m].boot_high = stats.percentile_interval(diffs)
        out[m].boot_n = int(reps.shape[1])


def auto_resamples(n_vectors: int, n_rows: int) -> int:
    """Resamples for ``--bootstrap auto``: 1000 when the work (vectors x rows x resamples) fits
    ``BOOTSTRAP_BUDGET`` row-evaluations (about a minute on one CPU core), else fewer, >= 200."""
    return int(np.clip(BOOTSTRAP_BUDGET // max(1, n_vectors * n_rows), 200, 1000))


def significance_label(p_holm: float, alpha: float) -> str:
    if not np.isfinite(p_holm):
        return ""
    return "yes" if p_holm < alpha else "no"


# --------------------------------------------------------------------------- tables
def leaderboard(rs: ResultSet, cards: CardBook, *, reference: str | None = None,
                alpha: float = 0.05, n_boot: int | None = None, boot_seed: int = 0
                ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Table 2 done properly; returns the frame and, per dataset, how the reference was chosen.

    ``n_boot``: bootstrap resamples; None = automatic (:func:`auto_resamples`), 0 = none.
    """
    rows, why = [], {}
    for ds in rs.datasets():
        groups = group_models(rs, ds)
        ref, reason = choose_reference(groups, cards, reference)
        why[ds] = f"{ref} ({reason})" if ref else f"none ({reason})"
        if ref:
            g = groups[ref]
            why[ds] += f"; dataset identity {g.identity[:8]}, protocol {g.protocol} v{g.version}"
            oracle = _oracle_auc(rs, g)
            if oracle is not None:
                why[ds] += f"; oracle test AUC {oracle:.4f} (the generator's exact probabilities)"
        others = [m for m in groups if m != ref]
        comp = compare_to_reference(rs, groups, ref, others, alpha=alpha, n_boot=n_boot,
                                    boot_seed=boot_seed)
        boot_n = max((c.boot_n for c in comp.values()), default=0)
        if boot_n:
            why[ds] += f"; bootstrap: {boot_n} resamples (seed {boot_seed})"
        for m, g in groups.items():
            auc, gauc, ll = g.summary("test_auc"), g.summary("test_gauc"), g.summary("test_logloss")
            c = comp.get(m, Comparison())
            sig = "reference" if m == ref else significance_label(c.ttest_p_holm, alpha)
            seed_aucs = ";".join(f"{s}:{v:.8g}" for s, v in g.seed_values().items())
            rows.append({
                "dataset": ds, "model": m, "status": g.status, "n_seeds": len(g.runs),
                "n_failed": g.n_failed, "auc_mean": auc.mean, "auc_std": auc.std,
                "auc_ci_low": auc.ci_low, "auc_ci_high": auc.ci_high, "gauc_mean": gauc.mean,
                "gauc_std": gauc.std, "logloss_mean": ll.mean, "logloss_std": ll.std,
                "reference": ref or "", "rel_impr_pct": c.rel_impr_pct,
                "delta_auc": c.delta_auc, "ttest_p": c.ttest_p, "ttest_p_holm": c.ttest_p_holm,
                "wilcoxon_p": c.wilcoxon_p, "wilcoxon_p_holm": c.wilcoxon_p_holm,
                "significant": sig, "delong_significant_seeds": c.delong_significant,
                "delong_seeds": c.delong_seeds, "boot_delta_low": c.boot_low,
                "boot_delta_high": c.boot_high, "boot_n": c.boot_n,
                "seed_aucs": seed_aucs if g.status == "ok" else "", "identity": g.identity,
                "protocol": g.protocol, "version": g.version,
                "note": "; ".join(filter(None, [g.note, *c.notes])),
            })
    frame = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    frame = _sort_by_auc(frame)
    return frame.astype({"delong_significant_seeds": "Int64", "delong_seeds": "Int64"}), why


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
        comp = compare_to_reference(None, groups, ABLATION_BASE, members, alpha=alpha)
        for m in [ABLATION_BASE, *members]:
            g, c = groups[m], comp.get(m, Comparison())
            auc, ll = g.summary("test_auc"), g.summary("test_logloss")
            rows.append({
                "dataset": ds, "model": m, "n_seeds": len(g.runs), "auc_mean": auc.mean,
                "auc_std": auc.std, "delta_auc": c.delta_auc, "logloss_mean": ll.mean,
                "logloss_std": ll.std, "delta_logloss": c.delta_logloss,
                "ttest_p_holm": c.ttest_p_holm,
                "significant": "reference" if m == ABLATION_BASE
                else significance_label(c.ttest_p_holm, alpha),
                "note": "; ".join(filter(None, [g.note, *c.notes])),
            })
    return pd.DataFrame(rows, columns=list(DELTA_COLUMNS))


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
    """Our AUC/logloss beside the paper's, and whether the paper's AUC ordering holds."""
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


def failed_table(rs: ResultSet) -> pd.DataFrame:
    """Runs that are not finished (failed, running, unreadable): listed, never averaged."""
    nf = rs.not_finished
    paths = [_relative(p, rs) for p in nf["path"]]
    errors = [str(e).splitlines()[0][:160] if isinstance(e, str) else "" for e in nf["error"]]
    frame = nf.assign(path=paths, error=errors)
    return frame.loc[:, list(FAILED_COLUMNS)].reset_index(drop=True)


def _relative(path: str, rs: ResultSet) -> str:
    try:
        return Path(path).relative_to(rs.root).as_posix()
    except ValueError:
        return str(path)
