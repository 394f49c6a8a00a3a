"""Leakage audit of a prepared store (``ctrbench stats --audit``): can a feature tell a
positive from its negatives for a reason other than the candidate itself?

The pairs are built so that a model on user and context fields alone scores AUC 0.5; that
holds by construction and so cannot catch a leak. This audit instead compares positives with
negatives (and stored features with what the history allows) on every derived quantity that
could carry the label. Each check gives one row per split; a split fails the check when:

- ``pair_identity``: a positive and one of its negatives differ in any column other than the
  candidate (item, category), the label and the oracle: user and context fields, histories,
  ``hist_len``, ``gap_days``, ``group``. Context or user values computed from the target
  event (its rating, its own time) would differ here.
- ``candidate_in_history``: the share of positives whose candidate item is in the stored
  history window differs from that of negatives (a repeated (user, item) event puts the
  positive in its own history; DIN negatives are never reviewed items, so both shares are 0).
- ``candidate_seen_before``: the same over the user's whole past before the target, which the
  ``din`` store holds in full (the first sample's history plus every earlier positive, splits
  in time order); for ``dien`` (one sample per user) only the window is known.
- ``features_after_target``: a user feature that disagrees with the history it claims to
  summarise, on rows whose whole past is in the window (``hist_len < T``): ``hist_len_bucket``
  must be the bucket of ``hist_len`` and ``fav_cate`` the history's most frequent category
  (ties: the one that reached the top count first), else the feature saw events outside the
  history, e.g. the target.

Two shares "differ" when ``|p_pos - p_neg| > max(MIN_GAP, Z * standard error)`` (a two-proportion
z-test at p < 0.001); the other checks are exact (any differing row fails). A split too small
for the test to flag even a total leak (all positives hit, no negative: e.g. up to 5 positives
and 5 negatives), or with no row for an exact check, is "too small to judge", not a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ctrbench.data.features import FIRST_BUCKET_ID
from ctrbench.data.store import SPLITS
from ctrbench.schema import GROUP_KEY, HIST_LEN, LABEL, OOV_ID, ORACLE, PAD_ID, Schema

MIN_GAP = 0.001
Z = 3.29  # two-sided p < 0.001
CANDIDATE_COLUMNS = ("item_id", "cate_id", LABEL, ORACLE)
ROW_CHUNK = 1 << 16


@dataclass(frozen=True)
class AuditRow:
    """One check on one split."""

    check: str
    split: str
    positives: float  # share (or count of differing rows) among positives
    negatives: float  # same among negatives (NaN where not defined)
    rows: int  # rows the check looked at
    passed: bool
    detail: str = ""
    judged: bool = True  # False: too few rows for the check to flag even a total leak


def _differ(p1: float, p2: float, hits: float, n1: int, n2: int) -> bool:
    """Whether shares ``p1`` of ``n1`` and ``p2`` of ``n2`` (``hits`` in all) differ."""
    pooled = hits / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 0.0) * (1 / n1 + 1 / n2))
    return abs(p1 - p2) > max(MIN_GAP, Z * se)


def _too_small(n1: int, n2: int) -> bool:
    """Whether even a total leak (every positive hit, no negative) would pass the test."""
    return not n1 or not n2 or (not _differ(1.0, 0.0, n1, n1, n2)
                                and not _differ(0.0, 1.0, n2, n1, n2))


def _share_test(check: str, split: str, pos: np.ndarray, neg: np.ndarray, detail: str = ""
                ) -> AuditRow:
    p1 = float(pos.mean()) if len(pos) else math.nan
    p2 = float(neg.mean()) if len(neg) else math.nan
    rows = len(pos) + len(neg)
    if _too_small(len(pos), len(neg)):
        counts = (f"{len(pos):,} positive{'s' * (len(pos) != 1)}, "
                  f"{len(neg):,} negative{'s' * (len(neg) != 1)}")
        return AuditRow(check, split, p1, p2, rows, True, f"too small to judge ({counts})",
                        judged=False)
    passed = not _differ(p1, p2, float(pos.sum() + neg.sum()), len(pos), len(neg))
    return AuditRow(check, split, p1, p2, rows, passed, detail)


def _in_window(cand: np.ndarray, hist: np.ndarray, hist_len: np.ndarray) -> np.ndarray:
    """Bool [N]: the candidate (not OOV) is among the first ``hist_len`` history ids."""
    out = np.zeros(len(cand), dtype=bool)
    steps = np.arange(hist.shape[1])[None, :]
    for lo in range(0, len(cand), ROW_CHUNK):
        c = np.asarray(cand[lo:lo + ROW_CHUNK])[:, None]
        h = np.asarray(hist[lo:lo + ROW_CHUNK])
        valid = steps < np.asarray(hist_len[lo:lo + ROW_CHUNK])[:, None]
        out[lo:lo + ROW_CHUNK] = ((h == c) & valid & (c != OOV_ID)).any(axis=1)
    return out


# --------------------------------------------------------------------------- the checks
def pair_identity(split: str, cols: Mapping[str, np.ndarray], reps: int) -> AuditRow:
    n = len(cols[LABEL]) // reps
    differing: dict[str, int] = {}
    for name, arr in cols.items():
        if name in CANDIDATE_COLUMNS:
            continue
        arr = np.asarray(arr)
        width = int(np.prod(arr.shape[1:], dtype=np.int64))  # named: -1 fails on 0 rows
        a = arr.reshape(n, reps, width)  # (S, reps, width)
        same = (a == a[:, :1]) | (np.isnan(a) & np.isnan(a[:, :1]) if a.dtype.kind == "f"
                                  else False)
        bad = int((~same.all(axis=(1, 2))).sum())
        if bad:
            differing[name] = bad
    worst = max(differing.values(), default=0)
    detail = ", ".join(f"{k} ({v:,} samples)" for k, v in sorted(differing.items()))
    if not n:
        return AuditRow("pair_identity", split, 0.0, math.nan, 0, True,
                        "too small to judge (0 samples)", judged=False)
    return AuditRow("pair_identity", split, float(worst), math.nan, n, not differing,
                    detail or "every non-candidate column identical within each sample")


def candidate_in_history(split: str, cols: Mapping[str, np.ndarray]) -> AuditRow:
    hit = _in_window(cols["item_id"], cols["hist_item_id"], cols[HIST_LEN])
    pos = np.asarray(cols[LABEL]) > 0.5
    return _share_test("candidate_in_history", split, hit[pos], hit[~pos])


def _whole_past(splits: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """din: bool per row, the candidate is among the user's events before the target.

    Order of a user's samples: train, valid, test, each in row order (time order). The user's
    events before sample k = the first sample's history + the positives of samples 0..k-1.
    """
    order_parts, group_parts, item_parts, label_parts = [], [], [], []
    offset = 0
    for split in SPLITS:
        cols = splits[split]
        n = len(cols[LABEL])
        order_parts.append(np.arange(offset, offset + n))
        group_parts.append(np.asarray(cols[GROUP_KEY]))
        item_parts.append(np.asarray(cols["item_id"]))
        label_parts.append(np.asarray(cols[LABEL]) > 0.5)
        offset += n
    order, group = np.concatenate(order_parts), np.concatenate(group_parts)
    item, label = np.concatenate(item_parts), np.concatenate(label_parts)
    # first time each (group, item) occurs as a positive
    key = group.astype(np.int64) * (int(item.max(initial=0)) + 1) + item
    pos_keys, pos_order = key[label], order[label]
    by_key = np.lexsort((pos_order, pos_keys))
    first_keys, first_idx = np.unique(pos_keys[by_key], return_index=True)
    first_order = pos_order[by_key][first_idx]
    at = np.minimum(np.searchsorted(first_keys, key), max(len(first_keys) - 1, 0))
    found = (first_keys[at] == key) if len(first_keys) else np.zeros(len(key), bool)
    # rows of a sample share its positive's order: compare with the sample's first row
    sample_start = np.where(label, order, 0)
    sample_start = np.maximum.accumulate(sample_start)
    seen = found & (first_order[at] < sample_start) & (item != OOV_ID)
    # plus the first sample's history (the events before the user's first target)
    first = np.unique(group, return_index=True)[1]  # row of each user's first sample
    hist = np.concatenate([np.asarray(splits[s]["hist_item_id"]) for s in SPLITS])[first]
    hist_len = np.concatenate([np.asarray(splits[s][HIST_LEN]) for s in SPLITS])[first]
    valid = np.arange(hist.shape[1])[None, :] < hist_len[:, None]  # (U, T)
    start_keys = np.unique((group[first][:, None].astype(np.int64) * (int(item.max(initial=0))
                                                                        + 1) + hist)[valid])
    in_start = np.isin(key, start_keys) & (item != OOV_ID)
    result = seen | in_start
    out, offset = {}, 0
    for split in SPLITS:
        n = len(splits[split][LABEL])
        out[split] = result[offset:offset + n]
        offset += n
    return out


def candidate_seen_before(split: str, cols: Mapping[str, np.ndarray], seen: np.ndarray | None
                          ) -> AuditRow:
    pos = np.asarray(cols[LABEL]) > 0.5
    if seen is None:  # dien: the window is all the store knows
        seen = _in_window(cols["item_id"], cols["hist_item_id"], cols[HIST_LEN])
        return _share_test("candidate_seen_before", split, seen[pos], seen[~pos],
                           "dien: history window only")
    return _share_test("candidate_seen_before", split, seen[pos], seen[~pos],
                       "whole past before the target")


def _running_mode(cates: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The builder's fav_cate rule over each row's first ``length`` ids; OOV_ID when empty."""
    n, t = cates.shape
    valid = np.arange(t)[None, :] < length[:, None]
    # count of cates[:, j] among cates[:, :j+1]  (N, T)
    same = (cates[:, :, None] == cates[:, None, :]) & valid[:, None, :]
    upto = np.tril(np.ones((t, t), dtype=bool))[None, :, :]
    count = (same & upto).sum(axis=2) * valid
    prev_max = np.concatenate([np.zeros((n, 1), count.dtype),
                               np.maximum.accumulate(count, axis=1)[:, :-1]], axis=1)
    leader = np.where((count > prev_max) & valid, np.arange(t)[None, :], -1)
    last = np.maximum.accumulate(leader, axis=1)[np.arange(n), np.maximum(length - 1, 0)]
    mode = cates[np.arange(n), np.maximum(last, 0)]
    return np.where(length > 0, mode, OOV_ID)


def features_after_target(split: str, cols: Mapping[str, np.ndarray], schema: Schema
                          ) -> AuditRow:
    hist_len = np.asarray(cols[HIST_LEN])
    complete = hist_len < schema.max_len
    checked, bad, names = 0, 0, []
    edges = schema.extra.get("bucket_edges", {})
    if "hist_len_bucket" in cols and "hist_len_bucket" in edges:
        ids = FIRST_BUCKET_ID + np.searchsorted(np.asarray(edges["hist_len_bucket"], float),
                                                hist_len.astype(float), side="right")
        stored = np.asarray(cols["hist_len_bucket"])
        wrong = np.where(complete, stored != ids, stored < ids)
        bad += int(wrong.sum())
        checked += len(stored)
        names += ["hist_len_bucket"] if wrong.any() else []
    if "fav_cate" in cols:
        hist = np.asarray(cols["hist_cate_id"])
        rows = np.flatnonzero(complete & ~((hist == OOV_ID) & (hist != PAD_ID)).any(axis=1))
        wrong_rows = 0
        for lo in range(0, len(rows), ROW_CHUNK // 4):
            take = rows[lo:lo + ROW_CHUNK // 4]
            mode = _running_mode(hist[take], hist_len[take])
            wrong_rows += int((np.asarray(cols["fav_cate"])[take] != mode).sum())
        bad += wrong_rows
        checked += len(rows)
        names += ["fav_cate"] if wrong_rows else []
    detail = (f"disagree with the history: {', '.join(names)}" if names
              else "hist_len_bucket, fav_cate agree with the history" if checked
              else "no checkable user feature")
    if not len(hist_len):
        detail = "too small to judge (0 rows)"
    return AuditRow("features_after_target", split, float(bad), math.nan, checked, bad == 0,
                    detail, judged=len(hist_len) > 0)


def audit(splits: Mapping[str, Mapping[str, np.ndarray]], schema: Schema, protocol: str,
          neg_per_pos: int) -> list[AuditRow]:
    """Every check on every split (see the module docstring)."""
    seen = _whole_past(splits) if protocol == "din" else None
    rows = []
    for split in SPLITS:
        cols = splits[split]
        rows.append(pair_identity(split, cols, 1 + neg_per_pos))
        rows.append(candidate_in_history(split, cols))
        rows.append(candidate_seen_before(split, cols, None if seen is None else seen[split]))
        rows.append(features_after_target(split, cols, schema))
    return rows


def audit_store(data) -> list[AuditRow]:
    """:func:`audit` of an opened store (``ctrbench.data.store.PreparedData``)."""
    splits = {s: data.split(s, mmap=False) for s in SPLITS}
    params = data.meta.get("protocol_params", {})
    return audit(splits, data.schema, data.meta.get("protocol", "din"),
                 int(params.get("neg_per_pos", 1)))
