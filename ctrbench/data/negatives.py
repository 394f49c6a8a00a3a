"""Seeded negative sampling for the protocol builder (drawn once, then stored in the store).

Both samplers draw for all requests at once and redraw only the rejected ones, round after
round, so the cost is a few vectorised passes whatever the data size.
"""

from __future__ import annotations

import numpy as np

from ctrbench.errors import DataError

MAX_ROUNDS = 1000

# independent random streams derived from protocol_params.seed
STREAM_CANDIDATES = 1
STREAM_NEG_HISTORY = 2
STREAM_USER_SPLIT = 3


def stream(seed: int, purpose: int) -> np.random.Generator:
    """The generator for one purpose; purposes never share random numbers."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), purpose]))


def reviewed_keys(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted distinct ``user * n_items + item`` keys of every (user, item) event."""
    return np.unique(user.astype(np.int64) * n_items + item.astype(np.int64))


def _is_reviewed(keys: np.ndarray, user: np.ndarray, item: np.ndarray, n_items: int
                 ) -> np.ndarray:
    query = user.astype(np.int64) * n_items + item
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return keys[pos] == query


def uniform_unreviewed(rng: np.random.Generator, user: np.ndarray, n_items: int,
                       keys: np.ndarray) -> np.ndarray:
    """One item per entry of ``user``, uniform over the items that user never reviewed.

    ``keys`` from :func:`reviewed_keys`. Raises DataError if a user reviewed every item.
    """
    user = np.asarray(user, dtype=np.int64)
    n_reviewed = np.bincount(keys // n_items, minlength=int(user.max(initial=0)) + 1)
    if len(user) and n_reviewed[user].max() >= n_items:
        raise DataError("a user reviewed every item: no negative can be drawn for them",
                        hint="use a dataset with more items than any user's reviews")
    out = rng.integers(0, n_items, size=len(user))
    todo = np.flatnonzero(_is_reviewed(keys, user, out, n_items))
    for _ in range(MAX_ROUNDS):
        if len(todo) == 0:
            return out
        out[todo] = rng.integers(0, n_items, size=len(todo))
        todo = todo[_is_reviewed(keys, user[todo], out[todo], n_items)]
    raise DataError(f"negative sampling did not converge after {MAX_ROUNDS} rounds")


def popular_excluding(rng: np.random.Generator, exclude: np.ndarray, counts: np.ndarray
                      ) -> np.ndarray:
    """One item per entry of ``exclude``, drawn proportionally to ``counts``, never ``exclude``."""
    exclude = np.asarray(exclude, dtype=np.int64)
    if np.count_nonzero(counts) < 2:
        raise DataError("popularity negatives need at least two items with interactions")
    cdf = np.cumsum(counts, dtype=np.float64)
    cdf /= cdf[-1]

    def draw(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)

    out = draw(len(exclude))
    todo = np.flatnonzero(out == exclude)
    for _ in range(MAX_ROUNDS):
        if len(todo) == 0:
            return out
        out[todo] = draw(len(todo))
        todo = todo[out[todo] == exclude[todo]]
    raise DataError(f"negative sampling did not converge after {MAX_ROUNDS} rounds")


def popular_unreviewed(rng: np.random.Generator, user: np.ndarray, counts: np.ndarray,
                       keys: np.ndarray) -> np.ndarray:
    """One item per entry of ``user``, drawn proportionally to ``counts`` among the items that
    user never reviewed (``keys`` from :func:`reviewed_keys`)."""
    user = np.asarray(user, dtype=np.int64)
    n_items = len(counts)
    if np.count_nonzero(counts) < 2:
        raise DataError("popularity negatives need at least two items with interactions")
    cdf = np.cumsum(counts, dtype=np.float64)
    cdf /= cdf[-1]

    def draw(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), n_items - 1)

    out = draw(len(user))
    todo = np.flatnonzero(_is_reviewed(keys, user, out, n_items))
    for _ in range(MAX_ROUNDS):
        if len(todo) == 0:
            return out
        out[todo] = draw(len(todo))
        todo = todo[_is_reviewed(keys, user[todo], out[todo], n_items)]
    raise DataError(f"negative sampling did not converge after {MAX_ROUNDS} rounds",
                    hint="a user reviewed nearly every popular item; use neg_exclude = "
                         '"target"')
