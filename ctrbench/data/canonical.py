"""Canonical tables: what every source reader returns and every protocol builder consumes.

- ``interactions``: one row per event, columns
  ``user`` (str), ``item`` (str), ``ts`` (int64, unix seconds), ``rating`` (float32, NaN when the
  source has none), ``line`` (int64, 0-based line/row number in the raw file; provenance, and the
  key the synthetic oracle scores by);
- ``items``: ``item`` (str), ``category`` (str), optionally more categorical columns;
- ``users``: ``user`` (str) plus categorical demographic columns (real ones, e.g. MovieLens
  gender/age/occupation/zip, or the synthetic generator's occupation), or ``None``.

Readers stream their raw files and never hold a file's text in memory; malformed lines are
counted in :class:`ReadReport` (first few line numbers kept), then skipped, unless ``strict``.
A time is malformed when it is not a finite number of seconds in years 1..9999
(:data:`MIN_TS`..:data:`MAX_TS`); times before 1970 or in the future are kept and counted
(:func:`clean_interactions`).

Every reader's output then goes through :func:`clean_interactions` (called by
``ctrbench.data.sources.read_source``): a repeated (user, item) event is dropped, keeping the
first occurrence (earliest time; on equal times the earlier raw line). A repeat would put the
candidate into its own history (the label leaks into the behaviours) and, on the DIN protocol,
make the same purchase a positive twice. The counts go to the store's ``meta.json``
(``cleaning``) and to ``ctrbench stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from ctrbench.errors import DataError

MAX_REPORTED_LINES = 5
MIN_TS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TS = 253_402_300_799  # 9999-12-31T23:59:59Z
FUTURE_SLACK_S = 86_400  # a time more than a day after "now" is in the future


@dataclass
class ReadReport:
    """Malformed-line bookkeeping for one raw file."""

    file: str
    lines: int = 0
    bad: int = 0
    first_bad: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, reason)
    format: str = ""  # the detected raw format, e.g. "amazon 2018" ("" when there is one)

    def add_bad(self, line_no: int, reason: str, strict: bool) -> None:
        """Record a malformed line; with ``strict`` raise at once."""
        if strict:
            raise DataError(f"{self.file}: line {line_no}: {reason}",
                            hint="drop --strict to skip malformed lines and report them")
        self.bad += 1
        if len(self.first_bad) < MAX_REPORTED_LINES:
            self.first_bad.append((line_no, reason))

    def summary(self) -> str:
        name = f"{self.file} ({self.format})" if self.format else self.file
        if not self.bad:
            return f"{name}: {self.lines:,} lines, none malformed"
        where = ", ".join(f"line {n} ({why})" for n, why in self.first_bad)
        return f"{name}: {self.lines:,} lines, {self.bad:,} malformed and skipped: {where}"


class Oracle(Protocol):
    """The generator's true click probability (synthetic data only)."""

    def score(self, event_lines: np.ndarray, candidate_items: np.ndarray) -> np.ndarray:
        """P(candidate is the next item | the state at the positive event on ``event_lines``).

        ``event_lines``: int64 ``[N]`` values of ``interactions.line`` of each sample's target
        event; ``candidate_items``: raw item ids ``[N]`` (str). Returns float ``[N]``.
        """
        ...


@dataclass
class CanonicalTables:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    reports: list[ReadReport] = field(default_factory=list)
    oracle: Oracle | None = None
    cleaning: dict[str, int] = field(default_factory=dict)  # see clean_interactions

    def validate(self) -> None:
        required = {"user", "item", "ts", "rating", "line"}
        missing = required - set(self.interactions.columns)
        if missing:
            raise DataError(f"reader produced interactions without {sorted(missing)}")
        if not {"item", "category"} <= set(self.items.columns):
            raise DataError("reader produced an items table without item/category")
        if self.users is not None and "user" not in self.users.columns:
            raise DataError("reader produced a users table without a user column")
        if rating_overflows(self.interactions["rating"].to_numpy()).any():
            # a reader's own check names the lines; this guard keeps an infinite rating from
            # ever reaching the per-user running means (inf - inf = NaN for every later user)
            raise DataError("reader produced infinite ratings (or ratings beyond float32)")
        if len(self.interactions) == 0:
            read = [r for r in self.reports if r.lines]
            if any(r.bad for r in read):  # every line malformed: say so, not "empty"
                raise DataError("no interactions left after reading: "
                                + "; ".join(r.summary() for r in read),
                                hint="fix the lines named (or the card's columns and formats)")
            raise DataError("no interactions left after reading (are the raw files empty?)")


#: a rating beyond this is inf once stored as float32 (the canonical rating dtype)
RATING_MAX = float(np.finfo(np.float32).max)


def rating_overflows(ratings: np.ndarray) -> np.ndarray:
    """Bool mask of ratings that are +-inf or beyond float32 (NaN, a missing rating, is not)."""
    with np.errstate(invalid="ignore"):
        return np.abs(np.asarray(ratings, dtype=np.float64)) > RATING_MAX


def time_out_of_range(seconds: np.ndarray) -> np.ndarray:
    """Bool mask: not finite or outside years 1..9999 (such a time is a malformed line)."""
    values = np.asarray(seconds, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(values) & (values >= MIN_TS) & (values <= MAX_TS))


def repeated_events(interactions: pd.DataFrame) -> np.ndarray:
    """Bool mask of the rows that repeat an earlier (user, item) event.

    "Earlier" = smaller time, then smaller ``line``: the first occurrence is kept.
    """
    if len(interactions) == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((interactions["line"].to_numpy(), interactions["ts"].to_numpy()))
    pairs = interactions[["user", "item"]].iloc[order]
    repeat = np.zeros(len(interactions), dtype=bool)
    repeat[order] = pairs.duplicated(keep="first").to_numpy()
    return repeat


def clean_interactions(tables: CanonicalTables, now: float | None = None) -> CanonicalTables:
    """Drop repeated (user, item) events (first occurrence kept) and count odd times.

    ``tables.cleaning`` gets ``repeated_user_item_dropped``, ``negative_time`` (events before
    1970-01-01) and ``future_time`` (more than a day after ``now``, default: the clock).
    """
    import time

    inter = tables.interactions
    repeat = repeated_events(inter)
    ts = inter["ts"].to_numpy(np.int64)
    now = time.time() if now is None else now
    tables.cleaning = {
        "repeated_user_item_dropped": int(repeat.sum()),
        "negative_time": int((ts < 0).sum()),
        "future_time": int((ts > now + FUTURE_SLACK_S).sum()),
    }
    if repeat.any():
        tables.interactions = inter[~repeat].reset_index(drop=True)
    return tables


def cleaning_warnings(cleaning: dict[str, int]) -> list[str]:
    """One line per cleaning count that is not zero."""
    lines = []
    if cleaning.get("repeated_user_item_dropped"):
        lines.append(f"{cleaning['repeated_user_item_dropped']:,} repeated (user, item) events "
                     "dropped (the first occurrence of each pair is kept)")
    if cleaning.get("negative_time"):
        lines.append(f"{cleaning['negative_time']:,} events dated before 1970-01-01 "
                     "(negative unix time): check the times and their unit")
    if cleaning.get("future_time"):
        lines.append(f"{cleaning['future_time']:,} events dated in the future (after this "
                     "machine's clock): check the times and their unit")
    return lines
