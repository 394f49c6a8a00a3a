"""Protocol builder: canonical tables -> samples, vocabularies and per-split column arrays.

Protocols (dataset card ``protocol``; DESIGN.md §3):

- ``din``: per user, events sorted by (time, line) (stable). Every position k >= 1 is a positive
  predicting item k from the items before it, plus ``neg_per_pos`` negatives drawn uniformly over
  the items the user never reviewed, with the same history and context. The user's last position
  goes to test, the second-to-last to valid, the rest to train.
- ``dien``: one sample per user (target = the last event, history = the events before it), users
  with a single event are dropped; ``neg_per_pos`` negatives drawn proportionally to item
  popularity (interaction counts over the whole log), never the target; users split
  ``split`` = 80/10/10 by a seeded permutation (valid and test users are unseen in train,
  so their ``user_id`` is OOV by construction).

For both, ``neg_hist_item_id``/``neg_hist_cate_id`` (DIEN's auxiliary loss) hold, for each event
of a history, one item the user never reviewed, drawn once per event (so a sample's negative
history is the same whichever sample the event appears in).

``[protocol_params]`` keys: ``seed`` (2021), ``max_len`` (30), ``neg_per_pos`` (1),
``neg_history`` (true), ``split`` ([0.8, 0.1, 0.1], dien only), ``rating_bins`` (8, quantile
buckets of the mean rating), ``neg_exclude`` ("target", dien only: "reviewed" also excludes
every item the user reviewed, see ``protocols.draw_candidates``). ``[fields]``: ``user`` and
``context`` lists (defaults below);
user fields are the derived ones in :data:`ctrbench.data.features.DERIVED_USER_FIELDS` or any
column of the reader's users table; context fields are in :data:`CONTEXT_FIELDS`.

Every row of a split has the schema's fields (int32; histories ``[N, T]`` left-aligned with
``hist_len``), ``label`` (float32), ``hist_len`` (int32), ``group`` (int64, user index),
``gap_days`` (float32, days since the user's previous event) and, when the reader supplies an
oracle, ``oracle`` (float32). Rows of one sample are adjacent: the positive, then its negatives.
Vocabularies and bucket edges come from the train rows only (see ``ctrbench.data.features``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ctrbench.cards import DatasetCard, check_keys
from ctrbench.data.canonical import CanonicalTables
from ctrbench.data.features import (
    CONTEXT_FIELDS,
    DERIVED_USER_FIELDS,
    MISSING_BUCKET_ID,
    Buckets,
    HistoryStats,
    Vocab,
    context_values,
    history_stats,
    log2_buckets,
    quantile_buckets,
)
from ctrbench.data.negatives import STREAM_NEG_HISTORY, reviewed_keys, stream, uniform_unreviewed
from ctrbench.data.protocols import (
    Events,
    draw_candidates,
    events_in_windows,
    history_windows,
    select_targets,
    sorted_events,
)
from ctrbench.data.store import SPLITS
from ctrbench.errors import CardError, DataError
from ctrbench.schema import GROUP_KEY, HIST_LEN, LABEL, ORACLE, PAD_ID, FieldSpec, Schema

log = logging.getLogger(__name__)

# Bump whenever the builder's output for the same input changes (it is part of the store key).
DATA_CODE_VERSION = 1
PROTOCOLS = ("din", "dien")
DEFAULT_USER_FIELDS = DERIVED_USER_FIELDS
DEFAULT_CONTEXT_FIELDS = ("year", "month", "weekday", "gap_bucket")
GAP_DAYS = "gap_days"
GATHER_CHUNK = 1 << 18  # samples per chunk when gathering histories (bounds temporaries)


@dataclass(frozen=True)
class ProtocolParams:
    """``[protocol_params]`` of a dataset card, validated, with defaults."""

    seed: int = 2021
    max_len: int = 30
    neg_per_pos: int = 1
    neg_history: bool = True
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    rating_bins: int = 8
    neg_exclude: str = "target"

    @classmethod
    def from_card(cls, card: DatasetCard) -> ProtocolParams:
        where = f"dataset card {card.name!r} [protocol_params]"
        data = dict(card.protocol_params)
        check_keys(where, data, [f for f in cls.__dataclass_fields__])
        for key in ("seed", "max_len", "neg_per_pos", "rating_bins"):
            if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int)):
                raise CardError(f"{where}: {key} must be an integer, not {data[key]!r}")
        if "neg_history" in data and not isinstance(data["neg_history"], bool):
            raise CardError(f"{where}: neg_history must be true or false")
        if "split" in data:
            try:
                data["split"] = tuple(float(x) for x in data["split"])
            except (TypeError, ValueError):
                raise CardError(f"{where}: split must be a list of three numbers") from None
        params = cls(**data)
        if params.neg_exclude not in ("target", "reviewed"):
            raise CardError(f"{where}: neg_exclude must be \"target\" or \"reviewed\"")
        if params.seed < 0:
            raise CardError(f"{where}: seed must be an integer >= 0, got {params.seed}")
        for key, most in LIMITS.items():
            value = getattr(params, key)
            if not 1 <= value <= most:
                raise CardError(f"{where}: {key} must be in 1..{most:,}, got {value:,}")
        split = params.split
        if (len(split) != 3 or not all(np.isfinite(split)) or min(split) < 0
                or abs(sum(split) - 1) > 1e-6):
            raise CardError(f"{where}: split must be three finite fractions summing to 1, "
                            f"got {list(split)}")
        return params


#: protocol_params' upper bounds: a history of max_len steps is stored per sample row, so an
#: unbounded value allocated without end (max_len = 10^8 on a 90-row log)
LIMITS = {"max_len": 1_000, "neg_per_pos": 100, "rating_bins": 1_000}


@dataclass(frozen=True)
class FieldChoice:
    """The card's ``[fields]``: user and context field names, validated."""

    user: tuple[str, ...]
    context: tuple[str, ...]
    user_columns: tuple[str, ...]  # the chosen columns of the users table

    @classmethod
    def from_card(cls, card: DatasetCard, users: pd.DataFrame | None) -> FieldChoice:
        where = f"dataset card {card.name!r} [fields]"
        check_keys(where, card.fields, ["user", "context"])
        for key in ("user", "context"):
            value = card.fields.get(key, [])
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise CardError(f"{where}: {key} must be a list of field names")
        user = tuple(card.fields.get("user", DEFAULT_USER_FIELDS))
        context = tuple(card.fields.get("context", DEFAULT_CONTEXT_FIELDS))
        table_cols = [c for c in (users.columns if users is not None else []) if c != "user"]
        allowed_user = [*DERIVED_USER_FIELDS, *table_cols]
        for name in user:
            if name not in allowed_user:
                raise CardError(f"{where}: unknown user field {name!r}",
                                hint=f"allowed: {', '.join(allowed_user)}")
        for name in context:
            if name not in CONTEXT_FIELDS:
                raise CardError(f"{where}: unknown context field {name!r}",
                                hint=f"allowed: {', '.join(CONTEXT_FIELDS)}")
        if len(set(user)) != len(user) or len(set(context)) != len(context):
            raise CardError(f"{where}: a field is listed twice")
        return cls(user, context, tuple(n for n in user if n in table_cols))


@dataclass
class BuiltData:
    """The builder's output: what ``store.write_store`` takes."""

    schema: Schema
    splits: dict[str, dict[str, np.ndarray]]
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> dict[str, int]:
        return {s: len(cols[LABEL]) for s, cols in self.splits.items()}


# --------------------------------------------------------------------------- vocabularies
@dataclass
class Vocabularies:
    item: Vocab
    cate: Vocab
    user_values: dict[str, Vocab | Buckets]
    context_values: dict[str, Vocab | Buckets]


def _user_raw(name: str, e: np.ndarray, ev: Events, stats: HistoryStats,
              user_columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Raw (pre-vocabulary) values of a user field for target events ``e``."""
    if name == "user_id":
        return ev.user[e]
    if name == "hist_len_bucket":
        return stats.n_before[e].astype(np.float64)
    if name == "mean_rating_bucket":
        return stats.mean_rating_before[e]
    if name == "fav_cate":
        return stats.fav_cate_before[e]
    if name == "tenure_bucket":
        return stats.tenure_days[e]
    return user_columns[name][ev.user[e]]


def _context_raw(name: str, e: np.ndarray, ev: Events, stats: HistoryStats) -> np.ndarray:
    if name == "gap_bucket":
        return stats.gap_days[e]
    return context_values(ev.ts[e])[name]


def fit_vocabularies(ev: Events, stats: HistoryStats, train: np.ndarray, cands: np.ndarray,
                     neg_hist: np.ndarray | None, fields: FieldChoice, params: ProtocolParams,
                     user_columns: Mapping[str, np.ndarray]) -> Vocabularies:
    """Vocabularies and bucket edges from the train rows only."""
    first, length = history_windows(train, stats.n_before, params.max_len)
    in_hist = events_in_windows(first, length, len(ev.user))
    item_parts = [cands.ravel(), ev.item[in_hist]]
    if neg_hist is not None:
        item_parts.append(neg_hist[in_hist])
    train_items = np.unique(np.concatenate(item_parts))
    fav = stats.fav_cate_before[train]
    cate = Vocab.fit(np.concatenate([ev.item_cate[train_items], fav[fav >= 0]]))
    user_vocabs: dict[str, Vocab | Buckets] = {}
    for name in fields.user:
        raw = _user_raw(name, train, ev, stats, user_columns)
        if name in ("hist_len_bucket", "tenure_bucket"):
            user_vocabs[name] = log2_buckets(raw)
        elif name == "mean_rating_bucket":
            user_vocabs[name] = quantile_buckets(raw, params.rating_bins)
        elif name != "fav_cate":  # fav_cate uses the shared category vocabulary
            user_vocabs[name] = Vocab.fit(raw)
    ctx_vocabs: dict[str, Vocab | Buckets] = {}
    for name in fields.context:
        raw = _context_raw(name, train, ev, stats)
        ctx_vocabs[name] = log2_buckets(raw) if name == "gap_bucket" else Vocab.fit(raw)
    return Vocabularies(Vocab.fit(train_items), cate, user_vocabs, ctx_vocabs)


def build_schema(fields: FieldChoice, vocabs: Vocabularies, params: ProtocolParams) -> Schema:
    n_items, n_cates = vocabs.item.size, vocabs.cate.size
    specs = [FieldSpec("item_id", "item", "item", n_items),
             FieldSpec("cate_id", "item", "cate", n_cates),
             FieldSpec("hist_item_id", "behavior", "item", n_items),
             FieldSpec("hist_cate_id", "behavior", "cate", n_cates)]
    if params.neg_history:
        specs += [FieldSpec("neg_hist_item_id", "neg_behavior", "item", n_items),
                  FieldSpec("neg_hist_cate_id", "neg_behavior", "cate", n_cates)]
    for name in fields.user:
        if name == "fav_cate":
            specs.append(FieldSpec(name, "user", "cate", n_cates))
        else:
            specs.append(FieldSpec(name, "user", name, vocabs.user_values[name].size))
    for name in fields.context:
        specs.append(FieldSpec(name, "context", name, vocabs.context_values[name].size))
    buckets = {n: v.edges.tolist() for n, v in {**vocabs.user_values,
                                                **vocabs.context_values}.items()
               if isinstance(v, Buckets)}
    extra = {"history_alignment": "left", "bucket_edges": buckets,
             "missing_bucket_id": MISSING_BUCKET_ID}
    return Schema(tuple(specs), max_len=params.max_len, extra=extra)


# --------------------------------------------------------------------------- columns
def _gather_histories(event_ids: np.ndarray, e: np.ndarray, n_before: np.ndarray, T: int,
                      out: np.ndarray, reps: int) -> None:
    """Fill ``out`` (``[S * reps, T]``) with the left-aligned histories of targets ``e``.

    ``event_ids`` holds the (vocabulary-mapped, int32) value of every sorted event; the history
    of target ``e`` is the events ``[e - L, e)`` with ``L = min(n_before, T)``, one 2-D gather.
    """
    view = out.reshape(len(e), reps, T)
    steps = np.arange(T)
    for lo in range(0, len(e), GATHER_CHUNK):
        chunk = e[lo:lo + GATHER_CHUNK]
        first, length = history_windows(chunk, n_before, T)
        mask = steps[None, :] < length[:, None]  # (S, T)
        idx = np.where(mask, first[:, None] + steps[None, :], 0)  # (S, T)
        view[lo:lo + GATHER_CHUNK] = np.where(mask, event_ids[idx], PAD_ID)[:, None, :]


def history_event_ids(ev: Events, neg_hist: np.ndarray | None, vocabs: Vocabularies
                      ) -> dict[str, np.ndarray]:
    """History column -> the vocabulary id (int32) of every sorted event, mapped once."""
    out = {"hist_item_id": vocabs.item.ids(ev.item), "hist_cate_id": vocabs.cate.ids(ev.cate)}
    if neg_hist is not None:
        out["neg_hist_item_id"] = vocabs.item.ids(neg_hist)
        out["neg_hist_cate_id"] = vocabs.cate.ids(ev.item_cate[neg_hist])
    return out


def assemble_split(e: np.ndarray, cands: np.ndarray, ev: Events, stats: HistoryStats,
                   event_ids: Mapping[str, np.ndarray], vocabs: Vocabularies,
                   fields: FieldChoice, params: ProtocolParams,
                   user_columns: Mapping[str, np.ndarray], oracle: Any
                   ) -> dict[str, np.ndarray]:
    """The column arrays of one split: ``S`` samples x ``1 + neg_per_pos`` rows each."""
    reps = 1 + params.neg_per_pos
    rows = len(e) * reps
    T = params.max_len
    flat = cands.ravel()  # (S * reps,) sample-major: positive then negatives

    def per_row(values: np.ndarray) -> np.ndarray:
        return np.repeat(values, reps)

    cols: dict[str, np.ndarray] = {
        "item_id": vocabs.item.ids(flat),
        "cate_id": vocabs.cate.ids(ev.item_cate[flat]),
    }
    for name, ids in event_ids.items():
        cols[name] = np.empty((rows, T), dtype=np.int32)
        _gather_histories(ids, e, stats.n_before, T, cols[name], reps)
    for name in fields.user:
        raw = _user_raw(name, e, ev, stats, user_columns)
        mapper = vocabs.cate if name == "fav_cate" else vocabs.user_values[name]
        cols[name] = per_row(mapper.ids(raw))
    for name in fields.context:
        cols[name] = per_row(vocabs.context_values[name].ids(_context_raw(name, e, ev, stats)))
    label = np.zeros((len(e), reps), dtype=np.float32)
    label[:, 0] = 1.0
    cols[LABEL] = label.ravel()
    cols[HIST_LEN] = per_row(np.minimum(stats.n_before[e], T).astype(np.int32))
    cols[GROUP_KEY] = per_row(ev.user[e].astype(np.int64))
    cols[GAP_DAYS] = per_row(stats.gap_days[e].astype(np.float32))
    if oracle is not None:
        scores = oracle.score(per_row(ev.line[e]), ev.item_names[flat])
        cols[ORACLE] = np.asarray(scores, dtype=np.float32)
    return cols


def _users_table_columns(tables: CanonicalTables, ev: Events, names: Sequence[str]
                         ) -> dict[str, np.ndarray]:
    """Users-table column -> per-user-code value codes (-1 for users missing from the table)."""
    if not names:
        return {}
    users = tables.users
    index = pd.Index(users["user"].astype(str))
    if index.has_duplicates:
        dupes = index[index.duplicated()].unique()[:3].tolist()
        raise DataError(f"the users table lists some users more than once: {dupes}")
    row = index.get_indexer(ev.user_names.astype(str))
    if not (row >= 0).any():  # an empty table, or ids of another form than the interactions'
        table_ids = index[:2].tolist()
        raise DataError(
            f"no user of the interactions is in the users table ({len(index):,} rows"
            + (f", ids like {table_ids}" if table_ids else "")
            + f"; the interactions' ids look like {ev.user_names[:2].astype(str).tolist()})",
            hint="check the users table's file and its user id column")
    out = {}
    for name in names:
        codes, _ = pd.factorize(users[name].astype(str))
        out[name] = np.where(row >= 0, codes[np.maximum(row, 0)], -1).astype(np.int64)
    return out


def data_hash(splits: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """Content hash of every column (name, dtype, shape, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for split in sorted(splits):
        for name in sorted(splits[split]):
            arr = np.ascontiguousarray(splits[split][name])
            h.update(f"{split}/{name}:{arr.dtype.str}:{arr.shape}".encode())
            h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def check_protocol(card: DatasetCard) -> ProtocolParams:
    """The card's protocol parameters; a :class:`CardError` names an unknown protocol or a
    wrong parameter (``prepare`` calls it before any raw file is read)."""
    if card.protocol not in PROTOCOLS:
        raise CardError(f"dataset card {card.name!r}: unknown protocol {card.protocol!r}",
                        hint=f"one of: {', '.join(PROTOCOLS)}")
    return ProtocolParams.from_card(card)


def build_samples(tables: CanonicalTables, card: DatasetCard) -> BuiltData:
    """Build the card's protocol from canonical tables (see the module docstring)."""
    start = time.perf_counter()
    params = check_protocol(card)
    fields = FieldChoice.from_card(card, tables.users)
    tables.validate()
    ev = sorted_events(tables)
    stats = history_stats(ev.user, ev.ts, ev.rating, ev.cate)
    targets = select_targets(ev, stats.n_before, card.protocol, params.seed, params.split)
    if len(targets["train"]) == 0:
        cause = (f"the split {list(params.split)} leaves no training user"
                 if card.protocol == "dien" and len(targets["valid"]) + len(targets["test"])
                 else "too few events per user")
        raise DataError(f"dataset {card.name!r}: no training samples ({cause})")
    keys = reviewed_keys(ev.user, ev.item, ev.n_items)
    cands = draw_candidates(ev, targets, card.protocol, params.seed, params.neg_per_pos, keys,
                            params.neg_exclude)
    neg_hist = None
    if params.neg_history:
        neg_hist = uniform_unreviewed(stream(params.seed, STREAM_NEG_HISTORY), ev.user,
                                      ev.n_items, keys)
    user_columns = _users_table_columns(tables, ev, fields.user_columns)
    vocabs = fit_vocabularies(ev, stats, targets["train"], cands["train"], neg_hist, fields,
                              params, user_columns)
    schema = build_schema(fields, vocabs, params)
    event_ids = history_event_ids(ev, neg_hist, vocabs)
    splits = {}
    for split in SPLITS:
        splits[split] = assemble_split(targets[split], cands[split], ev, stats, event_ids,
                                       vocabs, fields, params, user_columns, tables.oracle)
    built = BuiltData(schema, splits)
    rows = built.rows()
    log.info("%s (%s): rows train %d, valid %d, test %d (train+valid %d)", card.name,
             card.protocol, rows["train"], rows["valid"], rows["test"],
             rows["train"] + rows["valid"])
    built.meta = {
        "dataset": card.name, "protocol": card.protocol, "version": card.version,
        "protocol_params": {**asdict(params), "split": list(params.split)},
        "fields": {"user": list(fields.user), "context": list(fields.context)},
        "code_version": DATA_CODE_VERSION,
        "counts": {"users": len(ev.user_names), "items": ev.n_items,
                   "categories": len(np.unique(ev.cate)), "interactions": len(ev.user)},
        "rows": rows,
        "read_reports": [asdict(r) for r in tables.reports],
        "data_hash": data_hash(splits),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    return built
