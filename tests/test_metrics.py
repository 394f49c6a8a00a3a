"""Metrics against independent, slow computations (brute-force pairs, hand values, loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctrbench.analysis.metrics import auc, classification_metrics, group_auc, logloss


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg) over all pairs."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def slow_gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    total, weight = 0.0, 0.0
    for g in np.unique(groups):
        sel = groups == g
        y = labels[sel]
        if y.min() == y.max():
            continue
        total += brute_force_auc(y, scores[sel]) * sel.sum()
        weight += sel.sum()
    return total / weight


def test_auc_hand_example():
    # pos scores {0.8, 0.4}, neg {0.5, 0.4, 0.1}: pairs won 3 + (0 + 0.5 + 1) = 4.5 of 6
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.8, 0.5, 0.4, 0.4, 0.1])
    assert auc(labels, scores) == pytest.approx(4.5 / 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 6, 60) / 5.0  # many ties
    assert auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_one_class_is_nan():
    assert math.isnan(auc(np.ones(4), np.arange(4.0)))
    assert math.isnan(auc(np.zeros(4), np.arange(4.0)))


def test_logloss_hand_values_and_clipping():
    labels = np.array([1, 0, 1])
    probs = np.array([0.9, 0.2, 0.5])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.5)) / 3
    assert logloss(labels, probs) == pytest.approx(expected)
    # a confident mistake is clipped, not infinite
    assert logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    assert math.isfinite(logloss(np.array([0]), np.array([1.0])))


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_matches_slow_loop(seed):
    rng = np.random.default_rng(seed)
    n = 300
    groups = rng.integers(100, 130, n)  # arbitrary, unsorted user ids
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.random(n) + 0.3 * labels, 1)  # ties inside groups
    assert group_auc(labels, scores, groups) == pytest.approx(slow_gauc(labels, scores, groups),
                                                              abs=1e-12)


def test_gauc_weights_by_impressions_and_skips_single_class_groups():
    # group 7: 4 rows, AUC 1; group 3: 2 rows, AUC 0; group 9: only positives (skipped)
    groups = np.array([7, 7, 7, 7, 3, 3, 9, 9])
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.1, 0.9, 0.5, 0.5])
    assert group_auc(labels, scores, groups) == pytest.approx((4 * 1.0 + 2 * 0.0) / 6)


def test_classification_metrics_bundle():
    labels = np.array([1, 0, 1, 0])
    probs = np.array([0.7, 0.3, 0.6, 0.4])
    out = classification_metrics(labels, probs, np.array([1, 1, 2, 2]))
    assert out["auc"] == 1.0 and out["gauc"] == 1.0 and out["rows"] == 4
    assert out["logloss"] == pytest.approx(logloss(labels, probs))
