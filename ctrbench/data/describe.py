"""Dataset statistics of a prepared store (``ctrbench stats``), next to the card's expectations.

What is measured (vectorised over the stored columns, positives = rows with label 1, i.e. one
per sample):

- sizes: users, items, categories, interactions (from the builder's ``meta.counts``), rows and
  positive rate per split;
- history length per split: min, quartiles, mean, max, share of full histories (= max_len);
- new demands (MIAN Fig. 3a): share of positives whose candidate item id is absent from its
  history, and whose candidate category is absent. Out-of-vocabulary ids (1) never match, so an
  OOV candidate counts as absent;
- inactivity (MIAN Fig. 3b): share of positives whose user was inactive for more than
  ``INACTIVE_DAYS`` days before the target (stored ``gap_days``; samples without a previous event
  are left out);
- references: AUC of the stored ``oracle`` column (synthetic data: the generator's exact
  probability) and of a popularity baseline (the candidate's positive count in train).

``DatasetStats.expected`` holds the card's ``[expected]`` values by the same keys as
``DatasetStats.values()``, e.g. ``users = 3000`` or ``oracle_auc_test = 0.89``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tabulate import tabulate

from ctrbench.analysis.metrics import auc
from ctrbench.cards import DatasetCard
from ctrbench.data.store import SPLITS, PreparedData
from ctrbench.schema import HIST_LEN, LABEL, OOV_ID, ORACLE

INACTIVE_DAYS = 30
GAP_DAYS = "gap_days"
ROW_CHUNK = 1 << 20  # rows per chunk when comparing candidates with histories

COUNT_KEYS = ("users", "items", "categories", "interactions")
SPLIT_KEYS = ("rows", "positive_rate", "hist_len_min", "hist_len_q1", "hist_len_median",
              "hist_len_q3", "hist_len_mean", "hist_len_max", "full_history_share",
              "new_item_share", "new_cate_share", "inactive_share", "oracle_auc",
              "popularity_auc")


@dataclass
class DatasetStats:
    """Statistics of one prepared dataset; ``splits[split][key]`` uses :data:`SPLIT_KEYS`."""

    name: str
    protocol: str
    max_len: int
    counts: dict[str, float]
    splits: dict[str, dict[str, float]]
    expected: dict[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        """Flat ``key -> value``: counts, then ``<split key>_<split>`` (``oracle_auc_test``)."""
        flat = dict(self.counts)
        for split, stats in self.splits.items():
            for key, value in stats.items():
                flat[f"{key}_{split}"] = value
        return flat


# --------------------------------------------------------------------------- measurements
def _positive_rows(labels: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(labels) > 0.5)


def absent_share(candidates: np.ndarray, histories: np.ndarray, hist_len: np.ndarray,
                 rows: np.ndarray | None = None) -> float:
    """Share of ``rows`` whose candidate id is not among its first ``hist_len`` history ids.

    Columns may be memory-mapped: only ``ROW_CHUNK`` rows are read at a time.
    """
    rows = np.arange(len(candidates)) if rows is None else np.asarray(rows)
    if len(rows) == 0:
        return math.nan
    absent = 0
    for lo in range(0, len(rows), ROW_CHUNK):
        take = rows[lo:lo + ROW_CHUNK]
        cand = np.asarray(candidates[take])[:, None]  # (N, 1)
        hist = np.asarray(histories[take])  # (N, T)
        valid = np.arange(hist.shape[1])[None, :] < np.asarray(hist_len[take])[:, None]
        present = ((hist == cand) & valid & (cand != OOV_ID)).any(axis=1)
        absent += int((~present).sum())
    return absent / len(rows)


def history_length_stats(hist_len: np.ndarray, max_len: int) -> dict[str, float]:
    if len(hist_len) == 0:
        return {k: math.nan for k in ("hist_len_min", "hist_len_q1", "hist_len_median",
                                      "hist_len_q3", "hist_len_mean", "hist_len_max",
                                      "full_history_share")}
    q1, median, q3 = np.percentile(hist_len, [25, 50, 75])
    return {"hist_len_min": float(hist_len.min()), "hist_len_q1": float(q1),
            "hist_len_median": float(median), "hist_len_q3": float(q3),
            "hist_len_mean": float(hist_len.mean()), "hist_len_max": float(hist_len.max()),
            "full_history_share": float((hist_len >= max_len).mean())}


def inactive_share(gap_days: np.ndarray, days: float = INACTIVE_DAYS) -> float:
    """Share of finite gaps longer than ``days`` (NaN gaps = no previous event, left out)."""
    gaps = np.asarray(gap_days, dtype=np.float64)
    known = np.isfinite(gaps)
    return float((gaps[known] > days).mean()) if known.any() else math.nan


def popularity_scores(train_items: np.ndarray, train_labels: np.ndarray, items: np.ndarray
                      ) -> np.ndarray:
    """Each candidate's number of positive train rows (the popularity baseline's score)."""
    positives = np.asarray(train_items)[np.asarray(train_labels) > 0.5]
    size = int(max(positives.max(initial=0), np.asarray(items).max(initial=0))) + 1
    return np.bincount(positives, minlength=size)[np.asarray(items)].astype(np.float64)


def split_stats(columns: Mapping[str, np.ndarray], max_len: int, popularity: np.ndarray | None
                ) -> dict[str, float]:
    """Every :data:`SPLIT_KEYS` statistic of one split's columns."""
    labels = np.asarray(columns[LABEL])
    pos = _positive_rows(labels)
    hist_len = np.asarray(columns[HIST_LEN])[pos]
    out: dict[str, float] = {"rows": float(len(labels)),
                             "positive_rate": float(labels.mean()) if len(labels) else math.nan}
    out.update(history_length_stats(hist_len, max_len))
    for key, item, hist in (("new_item_share", "item_id", "hist_item_id"),
                            ("new_cate_share", "cate_id", "hist_cate_id")):
        out[key] = absent_share(columns[item], columns[hist], columns[HIST_LEN], pos)
    out["inactive_share"] = (inactive_share(np.asarray(columns[GAP_DAYS])[pos])
                             if GAP_DAYS in columns else math.nan)
    out["oracle_auc"] = auc(labels, columns[ORACLE]) if ORACLE in columns else math.nan
    out["popularity_auc"] = auc(labels, popularity) if popularity is not None else math.nan
    return out


def describe(data: PreparedData, card: DatasetCard) -> DatasetStats:
    """Measure a prepared dataset (see the module docstring)."""
    wanted = ["item_id", "cate_id", "hist_item_id", "hist_cate_id", LABEL, HIST_LEN, GAP_DAYS,
              ORACLE]
    train = data.split("train")
    splits = {}
    for split in SPLITS:
        columns = train if split == "train" else data.split(split)
        columns = {k: v for k, v in columns.items() if k in wanted}
        popularity = popularity_scores(train["item_id"], train[LABEL], columns["item_id"])
        splits[split] = split_stats(columns, data.schema.max_len,
                                    popularity if split != "train" else None)
    counts = {k: float(data.meta.get("counts", {}).get(k, math.nan)) for k in COUNT_KEYS}
    return DatasetStats(name=card.name, protocol=data.meta.get("protocol", card.protocol),
                        max_len=data.schema.max_len, counts=counts, splits=splits,
                        expected=dict(card.expected))


# --------------------------------------------------------------------------- formatting
INTEGER_KEYS = (*COUNT_KEYS, "rows", "hist_len_min", "hist_len_max")


def _fmt(value: Any, key: str = "") -> str:
    """Counts with thousands separators, shares and AUCs with 4 decimals, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    if key in INTEGER_KEYS:
        return f"{round(value):,}"
    if key.startswith("hist_len"):
        return f"{value:.1f}"
    return f"{value:.4f}"


_LABELS = {
    "rows": "rows", "positive_rate": "positive rate",
    "hist_len_min": "history length min", "hist_len_q1": "history length q1",
    "hist_len_median": "history length median", "hist_len_q3": "history length q3",
    "hist_len_mean": "history length mean", "hist_len_max": "history length max",
    "full_history_share": "share of full histories",
    "new_item_share": "candidate item not in history (Fig. 3a)",
    "new_cate_share": "candidate category not in history",
    "inactive_share": f"inactive > {INACTIVE_DAYS} days before target (Fig. 3b)",
    "oracle_auc": "oracle AUC", "popularity_auc": "popularity AUC",
}


def format_stats(stats: DatasetStats, tablefmt: str = "simple") -> str:
    """Two tables: dataset sizes, then per-split statistics; expected values in brackets."""
    expected = stats.expected

    def cell(key: str, value: float, base_key: str) -> str:
        text = _fmt(value, base_key)
        return f"{text} [{_fmt(expected[key], base_key)}]" if key in expected else text

    sizes = [[k, cell(k, v, k)] for k, v in stats.counts.items()]
    header = f"{stats.name} ({stats.protocol}, T = {stats.max_len})"
    rows = []
    for key in SPLIT_KEYS:
        values = [stats.splits[s].get(key, math.nan) for s in stats.splits]
        if all(isinstance(v, float) and math.isnan(v) for v in values):
            continue  # e.g. no oracle on real data
        rows.append([_LABELS[key], *(cell(f"{key}_{s}", stats.splits[s].get(key, math.nan), key)
                                     for s in stats.splits)])
    note = "[expected values from the dataset card in brackets]" if expected else ""
    unmatched = sorted(set(expected) - set(stats.values()))
    if unmatched:
        note += f"\n[card [expected] keys with no measured statistic: {', '.join(unmatched)}]"
    table = {"tablefmt": tablefmt, "disable_numparse": True}
    split_align = ("left", *("right" for _ in stats.splits))
    parts = [header,
             tabulate(sizes, headers=["quantity", "value"], colalign=("left", "right"), **table),
             "",
             tabulate(rows, headers=["per split (positives)", *stats.splits],
                      colalign=split_align, **table)]
    if note:
        parts += ["", note]
    return "\n".join(parts)
