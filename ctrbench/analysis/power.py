"""Power of the regression gate: the smallest AUC drop it detects with a given probability.

The gate (:mod:`ctrbench.report.check`) calls a model worse when its mean AUC drops by more than
``tolerance`` AND a one-sided t-test over seeds rejects at ``alpha``. Model of the numbers: each
seed's AUC is normal with the reference's seed std ``std``, independently on the two sides (a
code change reshuffles every random stream, so a seed is not correlated with itself across
versions; positive correlation would only add power).

- paired (both sides ran the same n seeds): D_i = cur_i - ref_i ~ N(-drop, 2 std^2); the test is
  the paired t-test, df = n - 1, se = S_D / sqrt(n).
- otherwise Welch's test: se^2 = S1^2/n1 + S2^2/n2, treated as a scaled chi-square with the
  Welch-Satterthwaite df at equal true variances (n1 != n2); exact for n1 = n2 up to the
  randomness of Welch's estimated df.

With the sample std S independent of the mean difference, the probability of a "worse" verdict is
E_S[ Phi((drop - max(tolerance, c S a)) / (sigma a)) ] (c the t critical value, a the se factor,
sigma the std of one difference), integrated over S's scaled chi distribution on a fixed
quantile grid. :func:`detectable_drop` inverts it for ``power`` (80% by default).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import stats as sps

NAN = float("nan")
_GRID = 4000  # chi-square quantiles for the expectation over S (error ~1e-4 in power)


def _design(std: float, n_ref: int, n_cur: int, paired: bool) -> tuple[float, float, float]:
    """(sigma of one unit, se factor a, df) of the gate's test for this design."""
    if paired:
        n = min(n_ref, n_cur)
        return std * math.sqrt(2.0), 1.0 / math.sqrt(n), n - 1
    a2 = 1.0 / n_ref + 1.0 / n_cur
    if n_ref < 2 or n_cur < 2:
        return std, math.sqrt(a2), 0
    df = a2**2 / (1.0 / (n_ref**2 * (n_ref - 1)) + 1.0 / (n_cur**2 * (n_cur - 1)))
    return std, math.sqrt(a2), df


def gate_power(drop: float, std: float, n_ref: int, n_cur: int, *, paired: bool,
               alpha: float = 0.05, tolerance: float = 0.0) -> float:
    """P(the gate says "worse") when the true mean AUC drop is ``drop`` (> 0 = worse)."""
    if not (np.isfinite(std) and n_ref >= 1 and n_cur >= 1):
        return NAN
    sigma, a, df = _design(max(std, 0.0), n_ref, n_cur, paired)
    if sigma == 0.0:
        return 1.0 if drop > tolerance else 0.0
    if df <= 0:  # no test possible: the threshold alone decides
        return float(sps.norm.cdf((drop - tolerance) / (sigma * a)))
    crit = float(sps.t.ppf(1.0 - alpha, df))
    u = (np.arange(_GRID) + 0.5) / _GRID
    s = sigma * np.sqrt(sps.chi2.ppf(u, df) / df)  # (GRID,) quantiles of the sample std
    margin = np.maximum(tolerance, crit * s * a)
    return float(np.mean(sps.norm.cdf((drop - margin) / (sigma * a))))


def detectable_drop(std: float, n_ref: int, n_cur: int, *, paired: bool, alpha: float = 0.05,
                    power: float = 0.8, tolerance: float = 0.0) -> float:
    """Smallest true drop in mean AUC that the gate flags with probability ``power``.

    nan when ``std`` is not finite or a side has no seed.
    """
    if not (np.isfinite(std) and n_ref >= 1 and n_cur >= 1):
        return NAN
    if std <= 0.0:
        return float(tolerance)

    def gap(d: float) -> float:
        return gate_power(d, std, n_ref, n_cur, paired=paired, alpha=alpha,
                          tolerance=tolerance) - power

    high = tolerance + std
    while gap(high) < 0:
        high *= 2.0
    return float(optimize.brentq(gap, 0.0, high, xtol=1e-7))
