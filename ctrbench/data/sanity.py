"""Warnings where a prepared dataset cannot support what the models assume (``ctrbench stats``).

- **one category**: category fields (candidate, history, ``fav_cate``) carry no information,
  e.g. Amazon reviews prepared without their meta file, or a table without ``category_col``;
- **tied timestamps**: the builder orders a user's events by (time, raw line): events with the
  same time keep the order of the raw file's lines (deterministic for a given file, whose
  sha256 is part of the store's key, but arbitrary). Counted: users whose valid and test
  targets share a timestamp (``din``), samples whose target shares its time with the last
  history event (``dien``). Data with whole-day times (Amazon) or bulk-rated sessions
  (MovieLens) have many;
- **short histories**: more than :data:`SHORT_SHARE` of test positives have fewer than
  :data:`SHORT_LEN` earlier events, so sequence models have little to attend to;
- **cleaning**: repeated (user, item) events dropped, times before 1970 or in the future
  (``meta.json`` ``cleaning``; stores built before these were counted say so).
"""

from __future__ import annotations

import numpy as np

from ctrbench.data.canonical import cleaning_warnings
from ctrbench.data.store import PreparedData
from ctrbench.schema import GROUP_KEY, HIST_LEN, LABEL

SHORT_LEN = 3
SHORT_SHARE = 0.5
GAP_DAYS = "gap_days"


def tie_counts(data: PreparedData) -> tuple[int, int]:
    """(samples whose target's time equals the previous event's, samples looked at).

    din: test targets whose user also has a valid target (the previous event); dien: every
    target with a history.
    """
    test = data.split("test")
    pos = np.asarray(test[LABEL]) > 0.5
    gap = np.asarray(test[GAP_DAYS])[pos] if GAP_DAYS in test else None
    if gap is None:
        return 0, 0
    if data.meta.get("protocol", "din") == "din":
        valid = data.split("valid")
        with_valid = np.isin(np.asarray(test[GROUP_KEY])[pos], np.asarray(valid[GROUP_KEY]))
        return int(((gap == 0) & with_valid).sum()), int(with_valid.sum())
    has_history = np.asarray(test[HIST_LEN])[pos] > 0
    return int(((gap == 0) & has_history).sum()), int(has_history.sum())


def short_history_share(data: PreparedData) -> float:
    test = data.split("test")
    hist_len = np.asarray(test[HIST_LEN])[np.asarray(test[LABEL]) > 0.5]
    return float((hist_len < SHORT_LEN).mean()) if len(hist_len) else float("nan")


def sanity_warnings(data: PreparedData) -> list[str]:
    """One line per problem found (empty when none); see the module docstring."""
    out = []
    meta = data.meta
    categories = meta.get("counts", {}).get("categories")
    if categories is not None and categories <= 1:
        out.append(f"only {categories} category: category features carry no information "
                   "(Amazon reviews without their meta file? a table without category_col?)")
    tied, looked = tie_counts(data)
    if tied:
        what = ("users whose valid and test events share a timestamp" if meta.get("protocol")
                == "din" else "test targets that share their timestamp with the last history "
                "event")
        out.append(f"{tied:,} of {looked:,} {what}: ties are ordered by the raw file's line "
                   "order (deterministic for this file, arbitrary in meaning)")
    short = short_history_share(data)
    if short > SHORT_SHARE:
        out.append(f"{short:.0%} of test positives have fewer than {SHORT_LEN} earlier events: "
                   "sequence models have little history to read")
    cleaning = meta.get("cleaning")
    if cleaning is None:
        out.append("repeated events and odd times were not counted for this store (built "
                   "before ctrbench counted them); `ctrbench prepare NAME --force` counts them")
    else:
        out += cleaning_warnings(cleaning)
    return out
