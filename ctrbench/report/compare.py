"""Declared comparisons against a reference model, on the common seeds, Holm-corrected.

The comparisons are declared before any test number is looked at (:func:`declare`):
``--reference MODEL`` compares every other model with it; without it, a dataset holding ``mian``
and baselines compares mian with each baseline (the paper's claim, Table 2); otherwise the
reference is the trained model with the best mean **validation** AUC. ``pop`` (the
item-popularity floor, nothing trained) is never the reference (:func:`is_floor`). The Holm
family is exactly the declared comparisons. Every number of a comparison (ΔAUC, RelaImpr,
tests, DeLong, bootstrap) uses the seeds both models ran (n shown), and is oriented "row model
vs reference".

Uncertainty (:func:`bootstrap_dataset`): a two-level bootstrap, seeds x test users
(:mod:`ctrbench.analysis.cluster`), of each model's seed-mean AUC and of each declared ΔAUC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ctrbench.analysis import cluster, stats
from ctrbench.progress import message
from ctrbench.report.data import CardBook, ResultSet
from ctrbench.report.groups import ModelRuns
from ctrbench.report.versus_pop import POP_MODEL

NAN = float("nan")
TABLE2_MODEL = "mian"
BOOTSTRAP_BUDGET = 2_400_000_000  # row-evaluations; ~25 ns each measured on one CPU core


@dataclass(frozen=True)
class Declared:
    """The reference, the models compared with it (the Holm family) and why."""

    reference: str | None
    family: tuple[str, ...]
    reason: str


def is_floor(model: str, archs: Iterable[str] = ()) -> bool:
    """Whether ``model`` is the item-popularity floor (named ``pop`` or of arch ``pop``): a
    floor every model is measured against, never the reference."""
    return model == POP_MODEL or POP_MODEL in set(archs)


def declare(groups: Mapping[str, ModelRuns], cards: CardBook, requested: str | None) -> Declared:
    """Which comparisons this dataset's table makes, decided without looking at test metrics."""
    usable = [m for m, g in groups.items() if g.status == "ok"]
    if requested:
        if is_floor(requested, groups[requested].runs["arch"] if requested in groups else ()):
            return Declared(None, (), f"{requested!r} is the popularity floor, never the "
                            "reference")
        if requested not in usable:
            return Declared(None, (), f"reference {requested!r} has no usable runs here")
        return Declared(requested, tuple(m for m in usable if m != requested),
                        "--reference: every other model against it")
    baselines = tuple(m for m in usable if cards.in_group(m, "baselines") and m != TABLE2_MODEL)
    if TABLE2_MODEL in usable and baselines:
        return Declared(TABLE2_MODEL, baselines,
                        "default with mian and baselines present: mian against each baseline "
                        "(the paper's Table 2 claim)")
    valid = [(groups[m].runs["valid_auc"].mean(), m) for m in usable
             if not is_floor(m, groups[m].runs["arch"])]
    valid = [v for v in valid if np.isfinite(v[0])]
    if not valid:
        return Declared(None, (), "no trained model with finished runs and a validation AUC")
    best = max(valid, key=lambda v: (v[0], v[1]))[1]
    return Declared(best, tuple(m for m in usable if m != best),
                    "best mean validation AUC (test data never chooses the reference)")


@dataclass
class Comparison:
    """A model against the reference on one dataset, on their common seeds."""

    declared: bool = False
    n_common: int = 0
    relaimpr: float = NAN
    delta_auc: float = NAN
    delta_logloss: float = NAN
    ttest_p: float = NAN
    wilcoxon_p: float = NAN
    ttest_p_holm: float = NAN
    wilcoxon_p_holm: float = NAN
    delong_better: int | None = None
    delong_worse: int | None = None
    delong_seeds: int | None = None
    boot_low: float = NAN
    boot_high: float = NAN
    boot_n: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (model path, ref path) by seed
    notes: list[str] = field(default_factory=list)


def shared_test_set(rs: ResultSet, groups: Mapping[str, ModelRuns], first: str | None
                    ) -> tuple[np.ndarray | None, str | None]:
    """Labels of the dataset's shared test set and the record they come from: the first usable
    record with scores, the reference's first."""
    order = ([first] if first else []) + sorted(m for m in groups if m != first)
    for m in order:
        g = groups.get(m)
        if g is None or g.status != "ok":
            continue
        for path in g.runs["path"]:
            s = rs.scores(str(path))
            if s is not None:
                return s["labels"], str(path)
    return None, None


def _scored(rs: ResultSet, path: str, labels: np.ndarray | None) -> bool:
    s = rs.scores(path) if labels is not None else None
    return s is not None and np.array_equal(s["labels"], labels)


def compare(rs: ResultSet | None, groups: Mapping[str, ModelRuns], declared: Declared, *,
            alpha: float = 0.05, labels: np.ndarray | None = None) -> dict[str, Comparison]:
    """Seed tests (Holm across the declared family) and, with ``rs`` and ``labels``, DeLong per
    common seed; the pairs of score files are kept for the bootstrap."""
    out = {m: Comparison() for m in groups}
    ref = groups.get(declared.reference) if declared.reference else None
    if ref is None or ref.status != "ok":
        return out
    ref_auc, ref_ll = ref.seed_values("test_auc"), ref.seed_values("test_logloss")
    ref_paths = dict(zip(ref.runs["seed"].astype(int), ref.runs["path"].astype(str)))
    for m in declared.family:
        g, c = groups[m], out[m]
        if g.identity != ref.identity:
            c.notes.append("dataset identity differs from the reference's: not compared")
            continue
        c.declared = True
        auc, ll = g.seed_values("test_auc"), g.seed_values("test_logloss")
        seeds = sorted(set(auc) & set(ref_auc))
        c.n_common = len(seeds)
        if not seeds:
            c.notes.append("no seed in common with the reference: not compared")
            continue
        if len(seeds) < max(len(auc), len(ref_auc)):
            c.notes.append(f"compared on {len(seeds)} common seed(s)")
        a, b = np.array([auc[s] for s in seeds]), np.array([ref_auc[s] for s in seeds])
        c.delta_auc = float(np.mean(a - b))
        c.relaimpr = stats.relaimpr(float(a.mean()), float(b.mean()))
        c.delta_logloss = float(np.mean([ll[s] - ref_ll[s] for s in seeds]))
        c.ttest_p = stats.paired_ttest(a, b)
        c.wilcoxon_p = stats.wilcoxon_signed_rank(a, b)
        if rs is None or labels is None:
            continue
        m_paths = dict(zip(g.runs["seed"].astype(int), g.runs["path"].astype(str)))
        c.pairs = [(m_paths[s], ref_paths[s]) for s in seeds
                   if _scored(rs, m_paths[s], labels) and _scored(rs, ref_paths[s], labels)]
        if len(c.pairs) < len(seeds):
            c.notes.append(f"test scores for {len(c.pairs)} of {len(seeds)} paired seed(s)")
        if c.pairs:
            better = worse = 0
            for mp, rp in c.pairs:
                res = stats.delong_test(rs.scores(mp)["scores"], rs.scores(rp)["scores"], labels)
                hit = np.isfinite(res.p) and res.p < alpha
                better += int(hit and res.diff > 0)
                worse += int(hit and res.diff < 0)
            c.delong_better, c.delong_worse, c.delong_seeds = better, worse, len(c.pairs)
    family = [m for m in declared.family if out[m].declared]
    for key, attr in (("ttest_p", "ttest_p_holm"), ("wilcoxon_p", "wilcoxon_p_holm")):
        for m, p in zip(family, stats.holm([getattr(out[m], key) for m in family])):
            setattr(out[m], attr, float(p))
    return out


@dataclass
class ModelInterval:
    """Two-level (seeds x users) bootstrap interval of one model's seed-mean AUC."""

    low: float = NAN
    high: float = NAN
    n_seeds: int = 0


@dataclass
class BootstrapInfo:
    """What the dataset's bootstrap did (for the header)."""

    n_boot: int = 0
    vectors: int = 0
    clusters: str = ""  # "users" | "rows (no user ids stored)"
    n_clusters: int = 0


def auto_resamples(n_vectors: int, n_rows: int) -> int:
    """Resamples for ``--bootstrap auto``: 1000 when the work (vectors x rows x resamples) fits
    ``BOOTSTRAP_BUDGET`` row-evaluations (about a minute on one CPU core), else fewer, >= 200."""
    return int(np.clip(BOOTSTRAP_BUDGET // max(1, n_vectors * n_rows), 200, 1000))


def bootstrap_dataset(rs: ResultSet, groups: Mapping[str, ModelRuns],
                      comparisons: Mapping[str, Comparison], labels: np.ndarray,
                      labels_path: str, *, n_boot: int | None, seed: int,
                      confidence: float = 0.95) -> tuple[dict[str, ModelInterval], BootstrapInfo]:
    """Two-level bootstrap for every usable model (its AUC) and declared comparison (ΔAUC).

    One set of user resamples serves every score vector of the dataset, so models and seeds are
    paired through the test set; the seed draws are seeded per model in name order.
    """
    per_model: dict[str, list[str]] = {}
    for m in sorted(groups):
        if groups[m].status == "ok":
            paths = [str(p) for p in groups[m].runs["path"] if _scored(rs, str(p), labels)]
            if paths:
                per_model[m] = paths
    paths = sorted({p for ps in per_model.values() for p in ps})
    if not paths or n_boot == 0:
        return {}, BootstrapInfo()
    if n_boot is None:
        n_boot = auto_resamples(len(paths), labels.size)
    user_ids = rs.test_groups(labels_path)
    if user_ids is None or user_ids.shape != labels.shape:
        user_ids, clusters = np.arange(labels.size), "rows (no user ids stored)"
    else:
        clusters = "users"
    rng = np.random.default_rng(seed)
    message(f"bootstrap: {n_boot} resamples of {clusters} x {len(paths)} score vectors x "
            f"{labels.size:,} rows")
    reps = cluster.bootstrap_aucs([rs.scores(p)["scores"] for p in paths], labels, user_ids,
                                  n_boot, rng)  # (vectors, R); weights built chunk by chunk
    row = {p: i for i, p in enumerate(paths)}
    alpha = 1.0 - confidence
    intervals = {}
    for i, (m, ps) in enumerate(per_model.items()):
        draws = cluster.seed_level(reps[[row[p] for p in ps]], np.random.default_rng((seed, 1, i)))
        low, high = stats.percentile_interval(draws[np.isfinite(draws)], confidence)
        intervals[m] = ModelInterval(low, high, len(ps))
    for i, m in enumerate(sorted(comparisons)):
        c = comparisons[m]
        if not c.pairs:
            continue
        diffs = np.stack([reps[row[mp]] - reps[row[rp]] for mp, rp in c.pairs])  # (S, R)
        draws = cluster.seed_level(diffs, np.random.default_rng((seed, 2, i)))
        c.boot_low, c.boot_high = stats.percentile_interval(draws[np.isfinite(draws)],
                                                            1.0 - alpha)
        c.boot_n = n_boot
    n_clusters = int(np.unique(user_ids).size)
    return intervals, BootstrapInfo(n_boot, len(paths), clusters, n_clusters)
