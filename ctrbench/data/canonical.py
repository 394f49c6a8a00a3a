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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from ctrbench.errors import DataError

MAX_REPORTED_LINES = 5


@dataclass
class ReadReport:
    """Malformed-line bookkeeping for one raw file."""

    file: str
    lines: int = 0
    bad: int = 0
    first_bad: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, reason)

    def add_bad(self, line_no: int, reason: str, strict: bool) -> None:
        """Record a malformed line; with ``strict`` raise at once."""
        if strict:
            raise DataError(f"{self.file}: line {line_no}: {reason}",
                            hint="drop --strict to skip malformed lines and report them")
        self.bad += 1
        if len(self.first_bad) < MAX_REPORTED_LINES:
            self.first_bad.append((line_no, reason))

    def summary(self) -> str:
        if not self.bad:
            return f"{self.file}: {self.lines:,} lines, none malformed"
        where = ", ".join(f"line {n} ({why})" for n, why in self.first_bad)
        return f"{self.file}: {self.lines:,} lines, {self.bad:,} malformed and skipped: {where}"


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

    def validate(self) -> None:
        required = {"user", "item", "ts", "rating", "line"}
        missing = required - set(self.interactions.columns)
        if missing:
            raise DataError(f"reader produced interactions without {sorted(missing)}")
        if not {"item", "category"} <= set(self.items.columns):
            raise DataError("reader produced an items table without item/category")
        if self.users is not None and "user" not in self.users.columns:
            raise DataError("reader produced a users table without a user column")
        if len(self.interactions) == 0:
            raise DataError("no interactions left after reading (are the raw files empty?)")
