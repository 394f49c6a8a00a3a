"""The exact oracle of a generated world: p(candidate | state before a review line)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ctrbench.data.synthetic.writer import ORACLE_FILE
from ctrbench.errors import DataError

SCORE_CHUNK = 250_000  # oracle rows per chunk (bounds the (N, window) temporaries)


class SyntheticOracle:
    """Exact ``p(candidate | state before review line)`` for a generated world (vectorised)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        path = Path(directory) / ORACLE_FILE
        try:
            data = np.load(path)
        except OSError as exc:
            raise DataError(f"cannot read the synthetic oracle {path}: {exc}") from None
        self.item = data["line_item"].astype(np.int64)
        self.user = data["line_user"].astype(np.int64)
        self.pos = data["line_pos"].astype(np.int64)
        self.group = data["line_group"].astype(np.int64)
        self.long_gap = data["line_long_gap"]
        self.seen_mass = data["line_seen_mass"]
        self.item_cate = data["item_cate"].astype(np.int64)
        self.item_q = data["item_q"]
        self.prior = data["prior"]
        self.mixture = data["mixture"]
        self.window = data["window"]
        self.n_cates = self.prior.shape[1]
        self.line_cate = self.item_cate[self.item]  # category of each review's item
        self._cum_window = np.concatenate([[0.0], np.cumsum(self.window)])
        # asin number -> item row (asins are "B" + the 9-digit number item_perm[row])
        perm = data["item_perm"].astype(np.int64)
        self._perm_base = int(perm.min()) if len(perm) else 0
        self._row_of_number = np.full(int(perm.max(initial=0)) - self._perm_base + 1, -1, np.int64)
        self._row_of_number[perm - self._perm_base] = np.arange(len(perm))
        n_items = len(self.item_cate)
        # (user, item) -> line of that review: to tell whether a candidate was already seen
        keys = self.user * n_items + self.item
        self._key_order = np.argsort(keys, kind="stable")
        self._keys_sorted = keys[self._key_order]

    @property
    def n_lines(self) -> int:
        return len(self.item)

    def item_index(self, candidate_items: np.ndarray) -> np.ndarray:
        """Row of each raw asin in the world's item tables (-1 when unknown), vectorised.

        An asin is ``B`` + 9 digits; anything else (wrong length or characters) is unknown.
        """
        text = np.asarray(candidate_items).astype("U11")  # one spare char detects longer ids
        codes = text.view(np.uint32).reshape(len(text), 11)
        digits = codes[:, 1:10].astype(np.int64) - ord("0")  # (N, 9)
        well_formed = ((codes[:, 0] == ord("B")) & (codes[:, 10] == 0)
                       & ((digits >= 0) & (digits <= 9)).all(axis=1))
        number = digits @ (10 ** np.arange(8, -1, -1, dtype=np.int64)) - self._perm_base
        inside = well_formed & (number >= 0) & (number < len(self._row_of_number))
        return np.where(inside, self._row_of_number[np.where(inside, number, 0)], -1)

    def score(self, event_lines: np.ndarray, candidate_items: np.ndarray) -> np.ndarray:
        lines = np.asarray(event_lines, dtype=np.int64)
        if len(lines) and (lines.min() < 0 or lines.max() >= self.n_lines):
            raise DataError("oracle asked about a review line the generator did not write")
        return self.score_index(lines, candidate_items, by_asin=True)

    def score_index(self, lines: np.ndarray, cand: np.ndarray, *, by_asin: bool = False,
                    chunk: int = SCORE_CHUNK) -> np.ndarray:
        """Like :meth:`score` with item rows (or asins) as candidates; processed in chunks."""
        out = np.empty(len(lines), dtype=np.float64)
        for start in range(0, len(lines), chunk):
            sl = slice(start, start + chunk)
            rows = self.item_index(cand[sl]) if by_asin else np.asarray(cand[sl])
            out[sl] = self._score_rows(np.asarray(lines[sl], dtype=np.int64), rows)
        return out

    def _score_rows(self, lines: np.ndarray, cand: np.ndarray) -> np.ndarray:
        known = cand >= 0
        cand = np.where(known, cand, 0)
        cate = self.item_cate[cand]
        pos = self.pos[lines]
        mix_row = np.where(pos == 0, 2, self.long_gap[lines].astype(np.int64))
        weights = self.mixture[mix_row]  # (N, 3)

        span = np.minimum(pos, len(self.window))  # (N,)
        ages = np.arange(len(self.window))
        valid = ages[None, :] < span[:, None]  # (N, W): the user's previous reviews
        prev_cate = self.line_cate[np.clip(lines[:, None] - 1 - ages[None, :], 0, None)]
        match = (prev_cate == cate[:, None]) & valid  # (N, W)
        total_w = self._cum_window[span]
        hist = (match @ self.window) / np.where(total_w > 0, total_w, 1.0)

        p_cate = (weights[:, 0] * hist + weights[:, 1] * self.prior[self.group[lines], cate]
                  + weights[:, 2] / self.n_cates)
        p = p_cate * self.item_q[cand] / (1.0 - self.seen_mass[lines])

        keys = self.user[lines] * len(self.item_cate) + cand
        at = np.minimum(np.searchsorted(self._keys_sorted, keys), len(self._keys_sorted) - 1)
        found = self._keys_sorted[at] == keys
        seen_before = found & (self._key_order[at] < lines)
        return np.where(known & ~seen_before, p, 0.0)
