"""New statistics of issue 11 against independent computations: RelaImpr by hand, the logit
t-interval, one-sided tests (scipy), the gate's power (simulation) and the two-level seeds x users
bootstrap (brute force, and coverage by simulation on data with a known AUC)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ctrbench.analysis import cluster, stats
from ctrbench.analysis.power import detectable_drop, gate_power


def test_relaimpr_by_hand_and_the_papers_own_definition():
    # MIAN vs DIEN on Books (paper Table 2): 0.8209 vs 0.8159
    # RelaImpr = (0.3209 / 0.3159 - 1) x 100 = 0.005 / 0.3159 x 100 = 1.58277...
    assert stats.relaimpr(0.8209, 0.8159) == pytest.approx(0.5 / 0.3159, abs=1e-9)
    assert stats.relaimpr(0.8209, 0.8159) == pytest.approx(1.5828, abs=1e-4)
    # the paper printed +0.61%: 100 x 0.005 / 0.8159 (plain relative change, not RelaImpr)
    assert round(stats.relative_change_pct(0.8209, 0.8159), 2) == 0.61
    assert round(stats.relative_change_pct(0.8913, 0.8836), 2) == 0.87  # Electronics, +0.87%
    assert stats.relaimpr(0.75, 0.75) == 0.0
    assert math.isnan(stats.relaimpr(0.8, 0.5)) and math.isnan(stats.relaimpr(0.8, 0.4))


def test_auc_interval_stays_inside_0_1_and_is_the_back_transformed_logit_t_interval():
    x = [0.97, 0.995]  # 2 seeds: the plain t-interval exceeds 1
    plain = stats.summarize(x)
    assert plain.ci_high > 1.0
    s = stats.summarize_auc(x)
    z = np.log(np.array(x) / (1 - np.array(x)))
    lo, hi = sps.t.interval(0.95, 1, loc=z.mean(), scale=sps.sem(z))
    assert (s.ci_low, s.ci_high) == (pytest.approx(1 / (1 + math.exp(-lo))),
                                     pytest.approx(1 / (1 + math.exp(-hi))))
    assert 0 < s.ci_low < s.mean < s.ci_high < 1 and s.mean == pytest.approx(0.9825)
    clipped = stats.summarize_auc([0.99, 1.0])  # a logit of 1 is infinite: clipped t interval
    assert clipped.ci_high == 1.0 and clipped.ci_low >= 0.0


def test_one_sided_tests_match_scipy():
    a, b = [0.80, 0.79, 0.805, 0.795], [0.81, 0.80, 0.806, 0.80]
    for alt in ("less", "greater", "two-sided"):
        assert stats.paired_ttest(a, b, alt) == pytest.approx(
            sps.ttest_rel(a, b, alternative=alt).pvalue)
        assert stats.welch_ttest(a, b[:3], alt) == pytest.approx(
            sps.ttest_ind(a, b[:3], equal_var=False, alternative=alt).pvalue)
    shift = [0.7, 0.6]  # every seed moved down by exactly 0.1
    assert stats.paired_ttest(shift, [0.8, 0.7], "less") == 0.0
    assert stats.paired_ttest(shift, [0.8, 0.7], "greater") == 1.0
    with pytest.raises(ValueError):
        stats.paired_ttest(a, b, "smaller")


def _simulated_power(drop: float, std: float, n_ref: int, n_cur: int, paired: bool,
                     tolerance: float, sims: int = 40_000) -> float:
    """The gate's rule applied to simulated seed AUCs, decided with scipy (vectorised)."""
    rng = np.random.default_rng(11)
    ref = rng.normal(0.80, std, size=(sims, n_ref))
    cur = rng.normal(0.80 - drop, std, size=(sims, n_cur))
    if paired:
        p = sps.ttest_rel(cur, ref, axis=1, alternative="less").pvalue
    else:
        p = sps.ttest_ind(cur, ref, axis=1, equal_var=False, alternative="less").pvalue
    delta = cur.mean(axis=1) - ref.mean(axis=1)
    return float(np.mean((delta < -tolerance) & (p < 0.05)))


@pytest.mark.parametrize(("std", "n_ref", "n_cur", "paired", "tol", "slack"), [
    (0.0031, 8, 8, True, 0.001, 0.012),  # the CI reference's design for MIAN
    (0.014, 3, 3, True, 0.001, 0.012),  # the old one: 3 seeds x 2 epochs
    (0.002, 5, 5, True, 0.004, 0.012),  # the tolerance dominates
    (0.003, 6, 4, False, 0.001, 0.03),  # Welch, approximated by the pooled t-test
])
def test_detectable_drop_has_80_percent_power_by_simulation(std, n_ref, n_cur, paired, tol,
                                                           slack):
    drop = detectable_drop(std, n_ref, n_cur, paired=paired, tolerance=tol)
    assert gate_power(drop, std, n_ref, n_cur, paired=paired, tolerance=tol) == pytest.approx(
        0.8, abs=1e-4)
    assert _simulated_power(drop, std, n_ref, n_cur, paired, tol) == pytest.approx(0.8,
                                                                                 abs=slack)
    # a drop half as large is caught far less often
    assert _simulated_power(drop / 2, std, n_ref, n_cur, paired, tol) < 0.6


def test_detectable_drop_of_the_old_ci_design_and_degenerate_inputs():
    # issue 11: MIAN std 0.014 at 3 seeds x 2 epochs -> several hundredths; the target is 0.01
    assert detectable_drop(0.014, 3, 3, paired=True, tolerance=0.001) > 0.04
    assert detectable_drop(0.0, 5, 5, paired=True, tolerance=0.001) == 0.001
    assert math.isnan(detectable_drop(float("nan"), 5, 5, paired=True))


# --------------------------------------------------------------------------- cluster bootstrap
def _brute_auc(scores: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    pos, neg = labels == 1, labels == 0
    s_p, s_n = scores[pos][:, None], scores[neg][None, :]
    kernel = (s_p > s_n) + 0.5 * (s_p == s_n)
    ww = w[pos][:, None] * w[neg][None, :]
    return float((kernel * ww).sum() / ww.sum())


def test_weighted_aucs_equal_brute_force_on_resampled_users():
    rng = np.random.default_rng(4)
    groups = np.repeat(rng.permutation(60) * 7, 3)  # 60 users, 3 rows each, sparse ids
    labels = rng.random(180) < 0.4
    scores = np.round(rng.random(180), 1)  # ties
    weights = cluster.user_weights(groups, 5, np.random.default_rng(9))  # (5, 180)
    # all rows of a user carry that user's draw count; the counts add up to the 60 users
    for r in range(5):
        for u in np.unique(groups):
            assert np.ptp(weights[r, groups == u]) == 0
        assert weights[r, ::3].sum() == 60
    got = cluster.weighted_aucs([scores, -scores], labels, weights)
    for r in range(5):
        assert got[0, r] == pytest.approx(_brute_auc(scores, labels, weights[r]))
        assert got[1, r] == pytest.approx(1 - got[0, r])
    ones = cluster.weighted_aucs([scores], labels, np.ones((1, 180)))
    assert ones[0, 0] == pytest.approx(stats.auc_score(scores, labels))


def test_seed_level_draws_seeds_with_replacement():
    per_seed = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # (S=2, R=3)
    reps = cluster.seed_level(per_seed, np.random.default_rng(0))
    assert set(reps.tolist()) <= {0.0, 0.5, 1.0}
    one = cluster.seed_level(np.array([[0.3, 0.4]]), np.random.default_rng(0))
    np.testing.assert_array_equal(one, [0.3, 0.4])


def test_two_level_bootstrap_covers_the_known_auc_and_the_seed_interval_does_not():
    """Coverage by simulation. A user's positive and negative share the user effect a_u; seed s
    shifts the signal to mu_s ~ N(mu, tau^2); rows have shared noise h and seed noise e. The
    population AUC of seed s is Phi(mu_s / c), c^2 = 2 (var a + var h + var e), so the target
    E_s AUC_s = Phi(mu / sqrt(c^2 + tau^2)) is known exactly."""
    rng = np.random.default_rng(2024)
    users, n_seeds, n_boot, trials = 150, 5, 300, 160
    mu, tau, sd_a, sd_h, sd_e = 1.0, 0.08, 1.0, 1.0, 0.5
    c2 = 2 * (sd_a**2 + sd_h**2 + sd_e**2)
    truth = sps.norm.cdf(mu / math.sqrt(c2 + tau**2))
    labels = np.tile([1, 0], users)
    groups = np.repeat(np.arange(users), 2)
    covered_two_level = covered_seeds_only = 0
    for _ in range(trials):
        a = np.repeat(rng.normal(0, sd_a, users), 2)  # shared by a user's two rows
        h = rng.normal(0, sd_h, 2 * users)
        mus = rng.normal(mu, tau, n_seeds)
        scores = [a + m * labels + h + rng.normal(0, sd_e, 2 * users) for m in mus]
        w = cluster.user_weights(groups, n_boot, rng)
        reps = cluster.weighted_aucs(scores, labels, w)  # (S, R)
        low, high = stats.percentile_interval(cluster.seed_level(reps, rng))
        covered_two_level += low <= truth <= high
        s = stats.summarize_auc([stats.auc_score(x, labels) for x in scores])
        covered_seeds_only += s.ci_low <= truth <= s.ci_high
    assert 0.88 <= covered_two_level / trials <= 0.99
    assert covered_seeds_only / trials < 0.8  # it ignores test-set sampling
