"""ctrbench.analysis.stats against hand-worked examples and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ctrbench.analysis import stats

# Hand-worked DeLong example: 3 positives, 2 negatives, two classifiers (rows shuffled below).
#   psi(x, y) = 1 if x > y, 0.5 if x == y, else 0
#   A: positives [0.9, 0.6, 0.4], negatives [0.5, 0.4]
#      V10 (per positive, mean psi over negatives) = [1, 1, 0.25]      -> AUC_A = 0.75
#      V01 (per negative, mean psi over positives) = [2/3, 5/6]        -> mean 0.75
#   B: positives [0.8, 0.3, 0.7], negatives [0.6, 0.1]
#      V10 = [1, 0.5, 1]                                               -> AUC_B = 5/6
#      V01 = [2/3, 1]
#   S10 (sample covariance over positives): var_A = 0.1875, var_B = 1/12, cov = -1/16
#   S01 (over negatives):                   var_A = 1/72,   var_B = 1/18, cov = 1/36
#   Var(A - B) = (0.1875 + 1/12 + 2/16) / 3 + (1/72 + 1/18 - 2/36) / 2 = 19/144 + 1/144 = 5/36
#   z = (0.75 - 5/6) / sqrt(5/36) = -1 / (2 sqrt 5) = -0.2236068;  p = 2 * Phi(-0.2236068)
HAND_LABELS = np.array([1, 1, 1, 0, 0])
HAND_A = np.array([0.9, 0.6, 0.4, 0.5, 0.4])
HAND_B = np.array([0.8, 0.3, 0.7, 0.6, 0.1])


def test_delong_hand_worked_example():
    perm = np.array([3, 0, 4, 2, 1])  # row order must not matter
    auc, v10, v01 = stats.delong_components(np.vstack([HAND_A, HAND_B])[:, perm],
                                            HAND_LABELS[perm])
    np.testing.assert_allclose(auc, [0.75, 5 / 6])
    pos_order = np.argsort(perm[HAND_LABELS[perm] == 1])  # back to positives [0, 1, 2]
    neg_order = np.argsort(perm[HAND_LABELS[perm] == 0])
    np.testing.assert_allclose(v10[:, pos_order], [[1, 1, 0.25], [1, 0.5, 1]])
    np.testing.assert_allclose(v01[:, neg_order], [[2 / 3, 5 / 6], [2 / 3, 1]])
    res = stats.delong_test(HAND_A[perm], HAND_B[perm], HAND_LABELS[perm])
    assert res.diff == pytest.approx(-1 / 12)
    assert res.se == pytest.approx(math.sqrt(5 / 36))
    assert res.z == pytest.approx(-1 / (2 * math.sqrt(5)))
    assert res.p == pytest.approx(2 * sps.norm.cdf(-1 / (2 * math.sqrt(5))))


def test_delong_components_match_pairwise_kernel_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.random((2, 60)), 1)  # many ties
    auc, v10, v01 = stats.delong_components(scores, labels)
    for k in range(2):
        pos, neg = scores[k, labels], scores[k, ~labels]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        np.testing.assert_allclose(v10[k], psi.mean(axis=1))
        np.testing.assert_allclose(v01[k], psi.mean(axis=0))
        assert auc[k] == pytest.approx(psi.mean())


def test_delong_auc_equals_mann_whitney():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.normal(size=500) + labels, 2)
    u = sps.mannwhitneyu(scores[labels], scores[~labels]).statistic
    expected = u / (labels.sum() * (~labels).sum())
    res = stats.delong_test(scores, scores * 0.5 + 0.1, labels)  # same ranking
    assert res.auc_a == pytest.approx(expected, abs=1e-12)
    assert stats.auc_score(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert res.diff == pytest.approx(0.0, abs=1e-12) and res.p == 1.0


def test_delong_detects_a_real_difference_and_handles_one_class():
    rng = np.random.default_rng(1)
    labels = rng.random(4000) < 0.5
    good = rng.normal(size=4000) + 1.2 * labels
    bad = rng.normal(size=4000) + 0.6 * labels
    assert stats.delong_test(good, bad, labels).p < 1e-6
    res = stats.delong_test(good, bad, np.ones(4000))
    assert math.isnan(res.auc_a) and math.isnan(res.p)


FIXED_A = [0.8123, 0.8150, 0.8101, 0.8177, 0.8139, 0.8160]
FIXED_B = [0.8098, 0.8131, 0.8109, 0.8140, 0.8102, 0.8121]


def test_seed_tests_match_scipy():
    assert stats.paired_ttest(FIXED_A, FIXED_B) == pytest.approx(
        sps.ttest_rel(FIXED_A, FIXED_B).pvalue)
    assert stats.wilcoxon_signed_rank(FIXED_A, FIXED_B) == pytest.approx(
        sps.wilcoxon(np.subtract(FIXED_A, FIXED_B)).pvalue)
    assert stats.welch_ttest(FIXED_A, FIXED_B[:4]) == pytest.approx(
        sps.ttest_ind(FIXED_A, FIXED_B[:4], equal_var=False).pvalue)
    # exact Wilcoxon, 6 pairs, one negative difference of rank 1: p = 2 * 2 / 64
    assert stats.wilcoxon_signed_rank(FIXED_A, FIXED_B) == pytest.approx(4 / 64)


def test_seed_tests_degenerate_inputs():
    assert math.isnan(stats.paired_ttest([0.8], [0.7]))
    assert math.isnan(stats.wilcoxon_signed_rank([0.8], [0.7]))
    assert stats.paired_ttest([0.8, 0.81], [0.8, 0.81]) == 1.0
    assert stats.paired_ttest([0.75, 0.5], [0.5, 0.25]) == 0.0  # exactly constant shift
    assert stats.wilcoxon_signed_rank([0.8, 0.81], [0.8, 0.81]) == 1.0
    assert math.isnan(stats.welch_ttest([0.8], [0.7, 0.71]))


def test_holm_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.01, float("nan"), 0.04])  # nan is not counted: m = 2
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])
    assert math.isnan(out[1])
    assert stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0]


def test_summary_uses_the_t_distribution():
    x = [0.81, 0.83, 0.82, 0.80]
    s = stats.summarize(x)
    low, high = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (s.n, s.mean, s.std) == (4, pytest.approx(0.815), pytest.approx(np.std(x, ddof=1)))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low), pytest.approx(high))
    one = stats.summarize([0.8])
    assert one.mean == 0.8 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert stats.summarize([]).n == 0


def test_bootstrap_aucs_are_exact_weighted_aucs_of_the_resamples():
    rng = np.random.default_rng(5)
    labels = rng.random(40) < 0.4
    scores = np.round(rng.random(40), 1)
    reps = stats.bootstrap_aucs([scores], labels, n_boot=3, seed=11)
    # rebuild the same stratified resamples by hand and brute-force their AUCs
    draw = np.random.default_rng(11)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    pos_draws = pos[draw.integers(0, pos.size, size=(3, pos.size))]
    neg_draws = neg[draw.integers(0, neg.size, size=(3, neg.size))]
    for r in range(3):
        p, n = scores[pos_draws[r]][:, None], scores[neg_draws[r]][None, :]
        assert reps[0, r] == pytest.approx(((p > n) + 0.5 * (p == n)).mean())


def test_bootstrap_ci_covers_the_true_difference_and_is_repeatable():
    rng = np.random.default_rng(2021)
    labels = np.r_[np.ones(1500), np.zeros(1500)].astype(bool)
    a = [rng.normal(size=3000) + 1.0 * labels for _ in range(3)]  # true AUC Phi(1/sqrt 2)
    b = [rng.normal(size=3000) + 0.5 * labels for _ in range(3)]  # true AUC Phi(0.5/sqrt 2)
    truth = sps.norm.cdf(1 / math.sqrt(2)) - sps.norm.cdf(0.5 / math.sqrt(2))
    ci = stats.bootstrap_auc_difference(a, b, labels, n_boot=300, seed=7)
    assert ci.low < truth < ci.high
    assert ci.low < ci.diff < ci.high and 0.01 < ci.high - ci.low < 0.08
    assert stats.bootstrap_auc_difference(a, b, labels, n_boot=300, seed=7) == ci
    other = stats.bootstrap_auc_difference(a, b, labels, n_boot=300, seed=8)
    assert other.diff == ci.diff and other.low != ci.low


def test_bootstrap_without_both_classes_is_nan():
    ci = stats.bootstrap_auc_difference([np.arange(5.0)], [np.arange(5.0)], np.ones(5))
    assert math.isnan(ci.low) and ci.n_boot == 0


def test_kendall_tau():
    tau, p = stats.kendall_tau([0.80, 0.81, 0.83], [0.79, 0.82, 0.84])
    assert tau == pytest.approx(1.0) and p == pytest.approx(sps.kendalltau([1, 2, 3],
                                                                           [1, 2, 3]).pvalue)
    assert math.isnan(stats.kendall_tau([0.8], [0.9])[0])
