"""User and context features, bucketing and vocabularies for the protocol builder.

Everything here is vectorised over events sorted by (user, time, line). User statistics at an
event use only that user's events **strictly before** it (the leakage rule); context values come
from the event's own timestamp. Vocabularies and bucket edges are *fitted* by the builder on the
training split only and *applied* to every split.

Id layout of every categorical field: 0 = padding, 1 = out of vocabulary (a value never seen in
train); bucketed fields also reserve 2 = no value (e.g. no rated review before the target), and
their buckets start at 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctrbench.schema import OOV_ID

SECONDS_PER_DAY = 86_400
UNKNOWN_CATEGORY = "<unknown>"  # the category of an item without one (e.g. no meta line)
MISSING_BUCKET_ID = 2
FIRST_BUCKET_ID = 3

DERIVED_USER_FIELDS = ("user_id", "hist_len_bucket", "mean_rating_bucket", "fav_cate",
                       "tenure_bucket")
CONTEXT_FIELDS = ("year", "month", "weekday", "hour", "gap_bucket")


# --------------------------------------------------------------------------- vocabularies
@dataclass(frozen=True)
class Vocab:
    """Sorted distinct training values; value -> id 2.., unseen -> 1 (OOV)."""

    values: np.ndarray

    @classmethod
    def fit(cls, train_values: np.ndarray) -> Vocab:
        values = np.unique(np.asarray(train_values))
        return cls(values[values >= 0] if values.dtype.kind in "iu" else values)

    @property
    def size(self) -> int:
        return len(self.values) + 2

    def ids(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if len(self.values) == 0:
            return np.full(values.shape, OOV_ID, dtype=np.int32)
        pos = np.searchsorted(self.values, values)
        found = self.values[np.minimum(pos, len(self.values) - 1)] == values
        return np.where(found, pos + 2, OOV_ID).astype(np.int32)


@dataclass(frozen=True)
class Buckets:
    """Right-open buckets over ``edges``: v < e0 -> 3, e0 <= v < e1 -> 4, ...; NaN -> 2."""

    edges: np.ndarray

    @property
    def size(self) -> int:
        return FIRST_BUCKET_ID + len(self.edges) + 1

    def ids(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        ids = FIRST_BUCKET_ID + np.searchsorted(self.edges, values, side="right")
        return np.where(np.isnan(values), MISSING_BUCKET_ID, ids).astype(np.int32)


def log2_buckets(train_values: np.ndarray) -> Buckets:
    """Edges 1, 2, 4, ... up to the largest training value (the top bucket is open-ended)."""
    values = np.asarray(train_values, dtype=np.float64)
    values = values[np.isfinite(values)]
    top = values.max() if len(values) else 0.0
    n_edges = int(np.floor(np.log2(top))) + 1 if top >= 1 else 0
    return Buckets(2.0 ** np.arange(n_edges))


def quantile_buckets(train_values: np.ndarray, n_bins: int) -> Buckets:
    """Up to ``n_bins`` buckets with edges at the training values' quantiles (deduplicated)."""
    values = np.asarray(train_values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0 or n_bins < 2:
        return Buckets(np.zeros(0))
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
    return Buckets(np.unique(edges))


# --------------------------------------------------------------------------- event statistics
@dataclass
class HistoryStats:
    """Per sorted event: statistics of the same user's events strictly before it."""

    n_before: np.ndarray  # int64 number of earlier events
    mean_rating_before: np.ndarray  # float64, NaN when no earlier rated event
    fav_cate_before: np.ndarray  # int64 category code, -1 when no earlier event
    tenure_days: np.ndarray  # float64 days since the user's first event, NaN for the first
    gap_days: np.ndarray  # float64 days since the previous event, NaN for the first


def user_starts(user: np.ndarray) -> np.ndarray:
    """For events sorted by user: the index of the user's first event, per event."""
    n = len(user)
    is_first = np.ones(n, dtype=bool)
    is_first[1:] = user[1:] != user[:-1]
    return np.maximum.accumulate(np.where(is_first, np.arange(n), 0))


def history_stats(user: np.ndarray, ts: np.ndarray, rating: np.ndarray, cate: np.ndarray
                  ) -> HistoryStats:
    """User statistics before each event (events sorted by user, then time, then line).

    ``fav_cate``: the most frequent category among the earlier events; on a tie, the category
    that reached the top count first keeps it.
    """
    n = len(user)
    idx = np.arange(n)
    start = user_starts(user)
    n_before = idx - start
    has_prev = n_before > 0

    rated = ~np.isnan(rating)
    sums = np.concatenate([[0.0], np.cumsum(np.where(rated, rating, 0.0), dtype=np.float64)])
    counts = np.concatenate([[0], np.cumsum(rated)])
    n_rated = counts[idx] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_before = np.where(n_rated > 0, (sums[idx] - sums[start]) / n_rated, np.nan)

    # running mode: count of this event's category so far (inclusive), per user
    frame = pd.DataFrame({"user": user, "cate": cate})
    count_incl = frame.groupby(["user", "cate"], sort=False).cumcount().to_numpy() + 1
    running_max = pd.Series(count_incl).groupby(user).cummax().to_numpy()
    prev_max = np.where(has_prev, np.roll(running_max, 1), 0)
    new_leader = count_incl > prev_max  # always true at a user's first event
    leader_at = np.maximum.accumulate(np.where(new_leader, idx, 0))
    fav_after = cate[leader_at]
    fav_before = np.where(has_prev, np.roll(fav_after, 1), -1).astype(np.int64)

    ts = ts.astype(np.int64)
    tenure = np.where(has_prev, (ts - ts[start]) / SECONDS_PER_DAY, np.nan)
    gap = np.where(has_prev, (ts - np.roll(ts, 1)) / SECONDS_PER_DAY, np.nan)
    return HistoryStats(n_before.astype(np.int64), mean_before, fav_before, tenure, gap)


def context_values(ts: np.ndarray) -> dict[str, np.ndarray]:
    """Calendar values of unix times (UTC): year, month (1-12), weekday (Mon=0), hour."""
    ts = np.asarray(ts, dtype=np.int64)
    months = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    days = np.floor_divide(ts, SECONDS_PER_DAY)
    return {
        "year": months // 12 + 1970,
        "month": months % 12 + 1,
        "weekday": (days + 3) % 7,  # 1970-01-01 was a Thursday
        "hour": np.floor_divide(np.mod(ts, SECONDS_PER_DAY), 3600),
    }
