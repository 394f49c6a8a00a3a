"""Two-level bootstrap of AUCs: seeds x test users (clusters), vectorised over replicates.

A user's rows in a test set are not independent (in the DIN protocol a user's positive and
negative share one history), so the test-set level resamples **users** with replacement and
keeps all of a drawn user's rows (a user drawn twice counts twice): row weights = the user's
draw count. The seed level resamples the seeds of the mean with replacement. A replicate of a
seed-mean AUC is then mean_k AUC_{s_k}(users_r): training randomness and test-set sampling are
covered together. The same user draws apply to every score vector of the test set, so
differences between models (and seeds) are paired.

- :func:`user_weights`: the (R, rows) weights of R user resamples.
- :func:`weighted_aucs`: exact AUC of each score vector under each replicate's weights.
- :func:`bootstrap_aucs`: both, over chunks of replicates of at most ``CHUNK_BYTES`` of weights
  (``--bootstrap 100000`` on 6,000 rows would otherwise build 4.8 GB); the same numbers.
- :func:`seed_level`: the seed-level draw over a (seeds, R) matrix of per-seed replicates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NAN = float("nan")
#: the most bytes of one chunk's replicate weights and user draws (float64 and int64)
CHUNK_BYTES = 64 * 2**20


def _dense_users(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """(rows,) dense user index of each row, and the number of users."""
    _, user = np.unique(np.asarray(groups), return_inverse=True)
    return user.reshape(-1), int(user.max()) + 1 if user.size else 0


def _draw_weights(user: np.ndarray, n_users: int, n_boot: int, rng: np.random.Generator
                  ) -> np.ndarray:
    """(n_boot, rows) weights of ``n_boot`` user resamples drawn from ``rng``."""
    draws = rng.integers(0, n_users, size=(n_boot, n_users))  # (R, U)
    offsets = (np.arange(n_boot, dtype=np.int64) * n_users)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_users)
    return counts.reshape(n_boot, n_users)[:, user].astype(np.float64)  # (R, rows)


def user_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, rows) float weights: each replicate draws len(users) users with replacement.
    Memory n_boot x (rows + users) x 8 bytes: large runs go through :func:`bootstrap_aucs`."""
    user, n_users = _dense_users(groups)
    return _draw_weights(user, n_users, n_boot, rng)


def replicates_per_chunk(n_rows: int, n_users: int, max_bytes: int | None = None) -> int:
    """Replicates whose weights (float64, rows) and draws (int64, users) fit ``max_bytes``
    (default ``CHUNK_BYTES``); at least 1."""
    budget = CHUNK_BYTES if max_bytes is None else max_bytes
    return max(1, int(budget) // (8 * max(1, n_rows + n_users)))


def bootstrap_aucs(scores: Sequence[np.ndarray], labels: np.ndarray, groups: np.ndarray,
                   n_boot: int, rng: np.random.Generator, max_bytes: int | None = None
                   ) -> np.ndarray:
    """(k, n_boot) AUCs of the k score vectors under ``n_boot`` user resamples: equal to
    ``weighted_aucs(scores, labels, user_weights(groups, n_boot, rng))`` bit for bit (the
    chunks draw the same random stream in the same order, and a replicate's AUC depends on its
    own weights only), but the weights live one chunk of :func:`replicates_per_chunk` at a
    time (``max_bytes``, default ``CHUNK_BYTES``)."""
    user, n_users = _dense_users(groups)
    chunk = replicates_per_chunk(user.size, n_users, max_bytes)
    out = np.full((len(scores), n_boot), NAN)  # (k, R)
    for start in range(0, n_boot, chunk):
        r = min(chunk, n_boot - start)
        weights = _draw_weights(user, n_users, r, rng)  # (r, rows)
        out[:, start:start + r] = weighted_aucs(scores, labels, weights)
    return out


def weighted_aucs(scores: Sequence[np.ndarray], labels: np.ndarray, weights: np.ndarray,
                  chunk_elements: int = 4_000_000) -> np.ndarray:
    """AUC of each score vector under each weight row: (k, R).

    AUC_w = sum_{i pos, j neg} w_i w_j [s_i > s_j] + 0.5 [s_i = s_j], over sum w_pos sum w_neg;
    computed from the scores' dense ranks with one weighted ``bincount`` per class and chunk of
    replicates (no pairwise kernel, no per-row Python). nan where a replicate lacks a class.
    """
    y = np.asarray(labels).astype(bool)
    w = np.asarray(weights, dtype=np.float64)
    n_boot = w.shape[0]
    out = np.full((len(scores), n_boot), NAN)
    if n_boot == 0 or y.all() or not y.any():
        return out
    w_pos, w_neg = w[:, y], w[:, ~y]  # (R, m), (R, l)
    denom = w_pos.sum(axis=1) * w_neg.sum(axis=1)  # (R,)
    chunk = max(1, chunk_elements // max(1, y.size))
    for k, s in enumerate(scores):
        distinct, dense = np.unique(np.asarray(s, dtype=float), return_inverse=True)
        g = int(distinct.size)
        pos_rank, neg_rank = dense[y].astype(np.int64), dense[~y].astype(np.int64)
        for start in range(0, n_boot, chunk):
            r = min(chunk, n_boot - start)
            offsets = (np.arange(r, dtype=np.int64) * g)[:, None]
            g_pos = np.bincount((pos_rank + offsets).ravel(), weights=w_pos[start:start + r]
                                .ravel(), minlength=r * g).reshape(r, g)
            g_neg = np.bincount((neg_rank + offsets).ravel(), weights=w_neg[start:start + r]
                                .ravel(), minlength=r * g).reshape(r, g)
            below = np.cumsum(g_neg, axis=1) - g_neg  # negative weight strictly below a rank
            num = (g_pos * (below + 0.5 * g_neg)).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[k, start:start + r] = num / denom[start:start + r]
    return out


def seed_level(per_seed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replicates (R,) of a seed mean from per-seed replicates (S, R): replicate r averages
    column r over S seeds drawn with replacement. With one seed it is that seed's row."""
    m = np.asarray(per_seed, dtype=float)
    n_seeds, n_boot = m.shape
    draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # (R, S)
    return m[draws, np.arange(n_boot)[:, None]].mean(axis=1)
