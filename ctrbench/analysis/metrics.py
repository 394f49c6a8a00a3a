"""Evaluation metrics, vectorised: AUC (Mann-Whitney via average ranks), logloss, gAUC.

All functions take 1-D arrays (labels 0/1, scores = probabilities or any monotone score) and
return Python floats; a metric that is undefined on the input (one class only) is ``nan``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

LOGLOSS_EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2.

    Computed as the Mann-Whitney U statistic from average ranks; ``nan`` without both classes.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    u = float(ranks[y > 0.5].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of probabilities, clipped to ``[eps, 1 - eps]``."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape")
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """gAUC: per-group AUC averaged with impression (row count) weights.

    Groups (users) whose rows are all positive or all negative are left out, as in DIN's paper.
    One sort by (group, score); average ranks within tied (group, score) runs; per-group
    Mann-Whitney sums with ``bincount``. ``nan`` when no group has both labels.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    g = np.asarray(groups).ravel()
    if not (y.shape == s.shape == g.shape):
        raise ValueError("labels, scores and groups must have the same shape")
    n = len(y)
    if n == 0:
        return float("nan")
    order = np.lexsort((s, g))
    g, s, y = g[order], s[order], y[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = g[1:] != g[:-1]
    group_idx = np.cumsum(new_group) - 1  # dense group index per sorted row
    starts = np.flatnonzero(new_group)
    rank_in_group = np.arange(n) - starts[group_idx] + 1.0  # 1-based
    new_run = new_group.copy()
    new_run[1:] |= s[1:] != s[:-1]
    run_idx = np.cumsum(new_run) - 1
    run_mean = np.bincount(run_idx, weights=rank_in_group) / np.bincount(run_idx)
    ranks = run_mean[run_idx]  # tied scores within a group share their average rank
    n_rows = np.bincount(group_idx).astype(np.float64)
    n_pos = np.bincount(group_idx, weights=y)
    rank_sum_pos = np.bincount(group_idx, weights=ranks * y)
    n_neg = n_rows - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    u = rank_sum_pos[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2
    per_group = u / (n_pos[valid] * n_neg[valid])
    weights = n_rows[valid]
    return float(np.sum(per_group * weights) / np.sum(weights))


def classification_metrics(labels: np.ndarray, probs: np.ndarray,
                           groups: np.ndarray | None = None) -> dict[str, float]:
    """``auc``, ``logloss``, ``rows`` and, when ``groups`` is given, ``gauc``."""
    out = {"auc": auc(labels, probs), "logloss": logloss(labels, probs),
           "rows": len(np.asarray(labels))}
    if groups is not None:
        out["gauc"] = group_auc(labels, probs, groups)
    return out
