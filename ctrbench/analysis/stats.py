"""Aggregation over seeds and significance tests for leaderboards and the regression gate.

Everything here is pure numpy/scipy on arrays; nothing prints. A statistic that cannot be
computed (fewer than two seeds, a constant sample, no positives) is ``nan``, never an exception:
the tables render ``nan`` as "–".

- :func:`summarize`: mean, sample std and a t-distribution confidence interval over seeds;
  :func:`summarize_auc` the same with the interval computed on the logit scale (inside (0, 1)).
- :func:`relaimpr` (DIN's RelaImpr) and :func:`relative_change_pct` (plain 100 x delta / base).
- :func:`paired_ttest`, :func:`wilcoxon_signed_rank`, :func:`welch_ttest`: tests across seeds
  (the t-tests two- or one-sided).
- :func:`holm`: Holm's step-down adjustment across a family of comparisons.
- :func:`delong_test`: DeLong's test of two correlated AUCs on one test set, in the fast
  rank-based form of Sun & Xu (2014), O(n log n) and fully vectorised.
- :func:`bootstrap_auc_difference`: a paired, stratified, seeded bootstrap CI of the (seed-mean)
  AUC difference, vectorised over replicates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

NAN = float("nan")
#: differences of metrics below this are float noise (AUCs are stored to 8 significant digits)
CONSTANT_ATOL = 1e-12


# --------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class Summary:
    """Mean over seeds with its sample standard deviation and a t confidence interval."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std (ddof=1) and the t-distribution CI of the mean; nan where n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Summary(0, NAN, NAN, NAN, NAN)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, NAN, NAN, NAN)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def summarize_auc(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """:func:`summarize` for values in (0, 1) (AUCs): the t interval is computed for the mean
    logit and transformed back, so it always lies inside (0, 1) (asymmetric near the bounds).

    ``mean`` and ``std`` stay the plain ones. Values of exactly 0 or 1 make the logit infinite:
    then the interval is the plain t interval clipped to [0, 1].
    """
    s = summarize(values, confidence)
    if s.n < 2 or not np.isfinite(s.std):
        return s
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if np.any((x <= 0.0) | (x >= 1.0)):
        return Summary(s.n, s.mean, s.std, max(0.0, s.ci_low), min(1.0, s.ci_high))
    z = summarize(_logit(x), confidence)
    if not np.isfinite(z.std):
        return s
    low, high = 1.0 / (1.0 + np.exp(-np.array([z.ci_low, z.ci_high])))
    return Summary(s.n, s.mean, s.std, float(low), float(high))


def relaimpr(auc_model: float, auc_base: float) -> float:
    """RelaImpr (Yan et al. 2014, used by DIN): ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) x 100.

    The improvement over a random guesser's 0.5; nan when the base is not above 0.5.
    """
    if not (np.isfinite(auc_model) and np.isfinite(auc_base)) or auc_base <= 0.5:
        return NAN
    return float(((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0)


def relative_change_pct(value: float, base: float) -> float:
    """100 x (value - base) / base: the MIAN paper's "relative improvement" (Table 2)."""
    if not (np.isfinite(value) and np.isfinite(base)) or base == 0:
        return NAN
    return float(100.0 * (value - base) / base)


def pooled_std(a: Sequence[float], b: Sequence[float]) -> float:
    """sqrt of the pooled variance of two samples; nan when it has no degrees of freedom."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    dof = x.size + y.size - 2
    if dof < 1:
        return NAN
    ss = (x.var(ddof=1) * (x.size - 1) if x.size > 1 else 0.0) + (
        y.var(ddof=1) * (y.size - 1) if y.size > 1 else 0.0
    )
    return float(math.sqrt(ss / dof))


# --------------------------------------------------------------------------- seed-level tests
ALTERNATIVES = ("two-sided", "less", "greater")


def _constant(x: np.ndarray) -> bool:
    """All values equal up to float noise (``CONSTANT_ATOL``, relative above magnitude 1): the
    sample variance is taken as exactly 0 (scipy would warn of precision loss near there)."""
    return bool(np.ptp(x) <= CONSTANT_ATOL * max(1.0, float(np.max(np.abs(x)))))


def _constant_p(diff: float, alternative: str) -> float:
    """p of a t-test whose statistic is infinite (or 0/0): the sign of ``diff`` decides."""
    if abs(diff) <= CONSTANT_ATOL:
        return 1.0
    if alternative == "two-sided":
        return 0.0
    return 0.0 if (diff < 0) == (alternative == "less") else 1.0


def paired_ttest(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided"
                 ) -> float:
    """p of the paired t-test of ``a - b`` (pairs = seeds); ``alternative`` as in scipy
    ("less": the alternative is mean(a - b) < 0).

    nan for n < 2. Constant differences (up to ``CONSTANT_ATOL``, float noise) make t infinite:
    p = 1 when they are all zero; otherwise 0 (or 1 for a one-sided test in the other direction).
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return NAN
    if _constant(d):
        return _constant_p(float(d.mean()), alternative)
    return float(sps.ttest_rel(a, b, alternative=alternative).pvalue)


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of Wilcoxon's signed-rank test on ``a - b`` (exact for small n, no ties).

    nan for n < 2; 1.0 when every difference is zero. Note: with 5 seeds the smallest
    attainable two-sided p is 2/32 = 0.0625, so this test cannot reach 0.05 below 6 seeds.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return NAN
    if np.all(d == 0.0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.wilcoxon(d).pvalue)


def welch_ttest(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided"
                ) -> float:
    """p of Welch's unequal-variance t-test of mean(a) - mean(b) (unpaired samples);
    ``alternative`` as in :func:`paired_ttest`. nan with fewer than 2 values on a side or a
    non-finite value.

    A side whose values are all equal (:func:`_constant`) has sample variance 0, and the test
    is its limit as that variance goes to 0 (continuous in the data, no scipy warning):

    - one side constant (``a``, say): t = (mean a - mean b) / (s_b / sqrt(n_b)) on n_b - 1
      degrees of freedom (Welch-Satterthwaite's df at s_a = 0), i.e. the one-sample t-test
      of ``b`` against the constant ``mean(a)``;
    - both constant: t is infinite or 0/0, so p = 1 for equal means, else 0 (or 1 for a
      one-sided alternative in the other direction), as :func:`paired_ttest` does.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return NAN
    flat_x, flat_y = _constant(x), _constant(y)
    diff = float(x.mean() - y.mean())
    if flat_x and flat_y:
        return _constant_p(diff, alternative)
    if not (flat_x or flat_y):
        return float(sps.ttest_ind(x, y, equal_var=False, alternative=alternative).pvalue)
    spread = y if flat_x else x  # the side with a variance
    t = diff / math.sqrt(float(spread.var(ddof=1)) / spread.size)
    dist = sps.t(spread.size - 1)
    if alternative == "two-sided":
        return float(min(1.0, 2.0 * dist.sf(abs(t))))
    return float(dist.cdf(t) if alternative == "less" else dist.sf(t))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; nan entries stay nan and are not counted in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * (m - np.arange(m))  # (m - i) * p_(i), i = 0..m-1
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


# --------------------------------------------------------------------------- AUC and DeLong
def _midranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) along the last axis."""
    return sps.rankdata(x, method="average", axis=-1)


@dataclass(frozen=True)
class DeLongResult:
    """AUCs of two classifiers on one test set and DeLong's test of their difference."""

    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    se: float
    z: float
    p: float


def delong_components(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong's structural components for k classifiers on one test set.

    ``scores`` is (k, n) or (n,); ``labels`` (n,) in {0, 1}. Returns ``auc`` (k,), ``v10`` (k, m)
    over the m positives and ``v01`` (k, l) over the l negatives, where
    v10_i = P(score_pos_i > score_neg) + 0.5 P(=) and v01_j = P(score_pos > score_neg_j) + 0.5 P(=),
    computed from midranks (Sun & Xu 2014) instead of the O(m l) pairwise kernel.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    y = np.asarray(labels).astype(bool)
    pos, neg = s[:, y], s[:, ~y]
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    if n_pos == 0 or n_neg == 0:
        k = s.shape[0]
        return np.full(k, np.nan), np.empty((k, n_pos)), np.empty((k, n_neg))
    t_pos = _midranks(pos)  # (k, m) ranks among positives
    t_neg = _midranks(neg)  # (k, l) ranks among negatives
    t_all = _midranks(np.concatenate([pos, neg], axis=1))  # (k, m + l)
    v10 = (t_all[:, :n_pos] - t_pos) / n_neg  # negatives below each positive (ties half)
    v01 = 1.0 - (t_all[:, n_pos:] - t_neg) / n_pos  # positives above each negative
    auc = v10.mean(axis=1)
    return auc, v10, v01


def auc_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC via midranks (equals the Mann-Whitney U / (m l)); nan without both classes."""
    return float(delong_components(scores, labels)[0][0])


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> DeLongResult:
    """DeLong's two-sided test of AUC(a) - AUC(b) on the same test rows (paired by row)."""
    auc, v10, v01 = delong_components(np.vstack([scores_a, scores_b]), labels)
    if not np.all(np.isfinite(auc)) or v10.shape[1] < 2 or v01.shape[1] < 2:
        return DeLongResult(auc[0], auc[1], auc[0] - auc[1], NAN, NAN, NAN)
    s10 = np.cov(v10)  # (2, 2)
    s01 = np.cov(v01)
    cov = s10 / v10.shape[1] + s01 / v01.shape[1]
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    diff = float(auc[0] - auc[1])
    if var <= 1e-300:  # identical rankings: no evidence of any difference
        return DeLongResult(float(auc[0]), float(auc[1]), diff, 0.0, 0.0 if diff == 0 else NAN,
                            1.0 if diff == 0 else NAN)
    se = math.sqrt(var)
    z = diff / se
    return DeLongResult(float(auc[0]), float(auc[1]), diff, se, z, float(2 * sps.norm.sf(abs(z))))


# --------------------------------------------------------------------------- bootstrap
class _ResampledAUC:
    """AUC of one score vector on resampled rows, from its dense score ranks (ties grouped).

    With the score's distinct values ranked 0..G-1, a replicate's per-rank positive and negative
    counts are one ``bincount`` each; the AUC follows from a cumulative sum over ranks, with
    ties counted half. Exact (no binning), and vectorised over a chunk of replicates.
    """

    def __init__(self, scores: np.ndarray, pos_idx: np.ndarray, neg_idx: np.ndarray) -> None:
        distinct, dense = np.unique(scores, return_inverse=True)
        self.n_ranks = int(distinct.size)
        self.pos_rank = dense[pos_idx].astype(np.int64)  # (m,)
        self.neg_rank = dense[neg_idx].astype(np.int64)  # (l,)

    def __call__(self, pos_draws: np.ndarray, neg_draws: np.ndarray) -> np.ndarray:
        """Draws (R, m) and (R, l) index the positives / negatives -> AUC per replicate (R,)."""
        r, g = pos_draws.shape[0], self.n_ranks
        offsets = (np.arange(r, dtype=np.int64) * g)[:, None]
        g_pos = np.bincount((self.pos_rank[pos_draws] + offsets).ravel(), minlength=r * g)
        g_neg = np.bincount((self.neg_rank[neg_draws] + offsets).ravel(), minlength=r * g)
        g_pos, g_neg = g_pos.reshape(r, g), g_neg.reshape(r, g)  # (R, G) counts per rank
        below = np.cumsum(g_neg, axis=1) - g_neg  # negatives strictly below each rank
        num = (g_pos * (below + 0.5 * g_neg)).sum(axis=1, dtype=np.float64)
        return num / (pos_draws.shape[1] * neg_draws.shape[1])


def bootstrap_aucs(
    scores: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    chunk_elements: int = 4_000_000,
) -> np.ndarray:
    """AUC of each score vector on ``n_boot`` resamples of the shared test rows: (k, n_boot).

    Each replicate resamples the rows with replacement, stratified by label (each replicate keeps
    both classes' counts), and the same replicate applies to every score vector: the resamples
    depend only on ``labels``, ``n_boot`` and ``seed``, so two calls with the same three are
    paired. Work is chunked into (replicates x rows) arrays: no per-row Python. The cost is
    O(k x n_boot x rows). Returns a (k, 0) array when a class is missing.
    """
    y = np.asarray(labels).astype(bool)
    if n_boot < 1 or y.all() or not y.any():
        return np.empty((len(scores), 0))
    pos_idx, neg_idx = np.flatnonzero(y), np.flatnonzero(~y)
    evaluators = [_ResampledAUC(np.asarray(s, dtype=float), pos_idx, neg_idx) for s in scores]
    rng = np.random.default_rng(seed)
    chunk = max(1, chunk_elements // y.size)
    out = np.empty((len(scores), n_boot))
    for start in range(0, n_boot, chunk):
        r = min(chunk, n_boot - start)
        pos_draws = rng.integers(0, pos_idx.size, size=(r, pos_idx.size))  # (R, m)
        neg_draws = rng.integers(0, neg_idx.size, size=(r, neg_idx.size))  # (R, l)
        for k, evaluate in enumerate(evaluators):
            out[k, start:start + r] = evaluate(pos_draws, neg_draws)
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval; (nan, nan) without replicates."""
    reps = np.asarray(replicates, dtype=float)
    if reps.size == 0:
        return NAN, NAN
    alpha = 1.0 - confidence
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class BootstrapCI:
    """Point estimate of the AUC difference and its percentile bootstrap interval."""

    diff: float
    low: float
    high: float
    n_boot: int


def bootstrap_auc_difference(
    scores_a: Sequence[np.ndarray],
    scores_b: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapCI:
    """Paired bootstrap CI of mean_s [AUC(a_s) - AUC(b_s)] over seeds s paired by position.

    One resample of the test rows applies to every seed and both models, so the interval
    reflects the test-set sampling of the seed-mean difference (:func:`bootstrap_aucs`).
    """
    y = np.asarray(labels).astype(bool)
    k = len(scores_a)
    if k == 0 or k != len(scores_b) or y.all() or not y.any():
        return BootstrapCI(NAN, NAN, NAN, 0)
    point = float(np.mean([auc_score(a, y) - auc_score(b, y) for a, b in zip(scores_a, scores_b)]))
    reps = bootstrap_aucs([*scores_a, *scores_b], y, n_boot=n_boot, seed=seed)
    diffs = reps[:k].mean(axis=0) - reps[k:].mean(axis=0)  # (n_boot,)
    low, high = percentile_interval(diffs, confidence)
    return BootstrapCI(point, low, high, int(diffs.size))


# --------------------------------------------------------------------------- ordering
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b and its two-sided p (scipy); (nan, nan) for fewer than 2 pairs."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return NAN, NAN
    res = sps.kendalltau(a, b)
    return float(res.statistic), float(res.pvalue)
