"""The protocols' sample structure: sorted events, target selection, negatives, windows.

Events are sorted by (user, time, line); a *target* is the index of the sorted event a sample
predicts, and its history is the window of the same user's events just before it (see
``ctrbench.data.build`` for the protocols themselves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctrbench.data.canonical import CanonicalTables
from ctrbench.data.features import UNKNOWN_CATEGORY
from ctrbench.data.negatives import (
    STREAM_CANDIDATES,
    STREAM_USER_SPLIT,
    popular_excluding,
    popular_unreviewed,
    stream,
    uniform_unreviewed,
)
from ctrbench.data.store import SPLITS


@dataclass
class Events:
    """All interactions as codes, sorted by (user, ts, line)."""

    user: np.ndarray  # int64 user code
    item: np.ndarray  # int64 item code
    cate: np.ndarray  # int64 category code of the item
    ts: np.ndarray  # int64
    rating: np.ndarray  # float64
    line: np.ndarray  # int64
    user_names: np.ndarray
    item_names: np.ndarray
    cate_names: np.ndarray
    item_cate: np.ndarray  # int64 category code per item code

    @property
    def n_items(self) -> int:
        return len(self.item_names)


def _codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(column, sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def sorted_events(tables: CanonicalTables) -> Events:
    """Factorise ids, attach each item's category, sort by (user, ts, line) (stable)."""
    inter = tables.interactions
    user, user_names = _codes(inter["user"])
    item, item_names = _codes(inter["item"])
    cat_of = pd.Series(tables.items["category"].to_numpy(), index=tables.items["item"].to_numpy())
    cat_of = cat_of[~cat_of.index.duplicated(keep="first")]
    item_cat = cat_of.reindex(item_names).fillna(UNKNOWN_CATEGORY).astype(str)
    item_cate, cate_names = _codes(item_cat)
    ts = inter["ts"].to_numpy(np.int64)
    line = inter["line"].to_numpy(np.int64)
    order = np.lexsort((line, ts, user))
    return Events(
        user=user[order], item=item[order], cate=item_cate[item[order]], ts=ts[order],
        rating=inter["rating"].to_numpy(np.float64)[order], line=line[order],
        user_names=user_names, item_names=item_names, cate_names=cate_names,
        item_cate=item_cate,
    )


# --------------------------------------------------------------------------- targets
def select_targets(ev: Events, n_before: np.ndarray, protocol: str, seed: int,
                   split: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Split -> sorted indices of the target events (into the sorted events)."""
    n_events = np.bincount(ev.user)[ev.user]  # the user's number of events, per event
    if protocol == "din":
        k = n_before
        return {"train": np.flatnonzero((k >= 1) & (k <= n_events - 3)),
                "valid": np.flatnonzero((k >= 1) & (k == n_events - 2)),
                "test": np.flatnonzero((k >= 1) & (k == n_events - 1))}
    last = np.flatnonzero((n_before == n_events - 1) & (n_before >= 1))
    rng = stream(seed, STREAM_USER_SPLIT)
    shuffled = last[rng.permutation(len(last))]
    n_train = round(split[0] * len(last))
    n_valid = round(split[1] * len(last))
    parts = np.split(shuffled, [n_train, n_train + n_valid])
    return {s: np.sort(p) for s, p in zip(SPLITS, parts)}


def draw_candidates(ev: Events, targets: dict[str, np.ndarray], protocol: str, seed: int,
                    neg_per_pos: int, keys: np.ndarray, neg_exclude: str = "target"
                    ) -> dict[str, np.ndarray]:
    """Split -> ``[S, 1 + neg_per_pos]`` candidate item codes (the positive first).

    din: uniform over the items the user never reviewed (``keys`` from ``reviewed_keys``);
    dien: proportional to item popularity over the whole log, never the target, and with
    ``neg_exclude = "reviewed"`` never an item the user reviewed (else a negative can be an
    item of the user's own history while a positive never is: a label shortcut that
    ``ctrbench stats --audit`` reports).
    """
    rng = stream(seed, STREAM_CANDIDATES)
    counts = np.bincount(ev.item, minlength=ev.n_items)
    out = {}
    for split in SPLITS:
        e = targets[split]
        repeated = np.repeat(e, neg_per_pos)
        if protocol == "din":
            neg = uniform_unreviewed(rng, ev.user[repeated], ev.n_items, keys)
        elif neg_exclude == "reviewed":
            neg = popular_unreviewed(rng, ev.user[repeated], counts, keys)
        else:
            neg = popular_excluding(rng, ev.item[repeated], counts)
        out[split] = np.column_stack([ev.item[e], neg.reshape(len(e), neg_per_pos)])
    return out


def history_windows(e: np.ndarray, n_before: np.ndarray, max_len: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(first, length)`` of each target's history window ``[first, first + length)``."""
    length = np.minimum(n_before[e], max_len)
    return e - length, length


def events_in_windows(first: np.ndarray, length: np.ndarray, n_events: int) -> np.ndarray:
    """Bool ``[n_events]``: the event lies in at least one window."""
    cover = np.bincount(first, minlength=n_events + 1) - np.bincount(first + length,
                                                                    minlength=n_events + 1)
    return np.cumsum(cover[:n_events]) > 0
