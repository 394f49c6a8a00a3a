"""The raw files of a world: Amazon 2014 reviews and meta, a users CSV, the oracle tables."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.data.store import ensure_directory
from ctrbench.data.synthetic.sampler import ChunkEvents, Sampler, simulate_chunk
from ctrbench.data.synthetic.world import (
    AGE_GROUPS,
    GENDERS,
    GENERATOR_VERSION,
    OCCUPATIONS,
    Users,
    World,
    WorldParams,
    build_world,
    draw_users,
    mixture_table,
    window_weights,
)
from ctrbench.errors import DataError

REVIEWS_FILE = "reviews_Synthetic_5.json.gz"
META_FILE = "meta_Synthetic.json.gz"
USERS_FILE = "users_Synthetic.csv"
ORACLE_FILE = "oracle.npz"
PARAMS_FILE = "params.json"
TOP_CATEGORY = "Synthetic"
CHUNK_CELLS = 8_000_000  # users per chunk x categories: bounds the per-chunk state matrices

_PHRASES = ("works as described", "good value for the money", "arrived quickly",
            "does the job", "better than expected", "not what I hoped for", "solid build",
            "would buy again", "a bit pricey but fine", "stopped working after a while",
            "great gift", "easy to use", "exactly what I needed", "average quality")
_SUMMARIES = ("Great", "Good", "OK", "Disappointing", "Love it", "Five stars", "Meh",
              "Nice", "Works", "As expected")
_NAMES = ("Amazon Customer", "J. Smith", "reader", "Kindle Customer", "M. Lee", "A. Garcia",
          "techfan", "Pat", "R. Brown", "S. Chen")


def _gzip_writer(path: Path, level: int):
    """A deterministic gzip stream (no name, mtime 0): same seed -> same bytes."""
    return gzip.GzipFile(filename="", mode="wb", compresslevel=level,
                         fileobj=open(path, "wb"), mtime=0)


def _review_time(days: np.ndarray) -> list[str]:
    """``MM D, YYYY`` (month zero-padded, day not) as in the real files."""
    dt = days.astype("datetime64[D]")
    years = dt.astype("datetime64[Y]").astype(np.int64) + 1970
    months = dt.astype("datetime64[M]").astype(np.int64) % 12 + 1
    mdays = (dt - dt.astype("datetime64[M]")).astype(np.int64) + 1
    return [f"{m:02d} {d}, {y}" for m, d, y in zip(months.tolist(), mdays.tolist(),
                                                   years.tolist())]


def _time_parts(days: np.ndarray) -> list[str]:
    """The closing ``"unixReviewTime": ..., "reviewTime": ...}`` of each line (per unique day)."""
    unique, inverse = np.unique(days, return_inverse=True)
    parts = np.array([f'"unixReviewTime": {d * 86400}, "reviewTime": "{t}"}}\n'
                      for d, t in zip(unique.tolist(), _review_time(unique))], dtype=object)
    return parts[inverse].tolist()


def _middle_parts() -> np.ndarray:
    """``"reviewText": ..., "overall": ..., "summary": ...,`` for every (text, text, rating,
    summary) combination, indexed by ``((t0 * P + t1) * 5 + overall - 1) * S + summary``."""
    out = []
    for first in _PHRASES:
        for second in _PHRASES:
            body = f"{first[0].upper()}{first[1:]}, {second}."
            for overall in range(1, 6):
                for summary in _SUMMARIES:
                    out.append(f'"reviewText": "{body}", "overall": {overall}.0, '
                               f'"summary": "{summary}", ')
    return np.array(out, dtype=object)


_MIDDLE = _middle_parts()
_NAME_PARTS = np.array(["", *(f', "reviewerName": "{n}"' for n in _NAMES)], dtype=object)


def reviewer_ids(n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct 14-character ids like ``A3N7T0DY83Y4IG``."""
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    while True:
        chars = alphabet[rng.integers(0, 36, (n_users, 13))]
        ids = np.array(["A" + "".join(row) for row in chars.tolist()])
        if len(np.unique(ids)) == n_users:
            return ids


def write_reviews(fh, ev: ChunkEvents, uid: np.ndarray, users: Users, rows: slice,
                  world: World, asins: np.ndarray, rng: np.random.Generator) -> int:
    """Append one chunk's reviews (user by user, oldest first); returns the line count."""
    valid = np.arange(ev.items.shape[1])[None, :] < ev.lengths[:, None]
    user_of = np.broadcast_to(np.arange(len(ev.lengths))[:, None], valid.shape)[valid]
    item = ev.items[valid]
    day = ev.days[valid]
    n = len(item)
    bias = users.rating_bias[rows][user_of]
    overall = np.clip(np.rint(4.2 + bias + rng.normal(0, 0.8, n)), 1, 5).astype(int)
    total = np.floor(rng.exponential(2.0, n)).astype(int)
    yes = np.floor(total * rng.random(n)).astype(int)
    text = rng.integers(0, len(_PHRASES), (n, 2))
    summary = rng.integers(0, len(_SUMMARIES), n)
    name = rng.integers(0, len(_NAME_PARTS), n)  # 0: no reviewerName (about 9% of lines)
    middle = ((text[:, 0] * len(_PHRASES) + text[:, 1]) * 5 + overall - 1) * len(_SUMMARIES)
    middle += summary
    lines = [f'{{"reviewerID": "{u}", "asin": "{a}"{nm}, "helpful": [{y}, {t}], {mid}{end}'
             for u, a, nm, y, t, mid, end in zip(
                 uid[rows][user_of].tolist(), asins[item].tolist(),
                 _NAME_PARTS[name].tolist(), yes.tolist(), total.tolist(),
                 _MIDDLE[middle].tolist(), _time_parts(day))]
    fh.write("".join(lines).encode())
    return n


def cate_names(n_cates: int) -> list[str]:
    return [f"Cate {c:04d}" for c in range(n_cates)]


def write_meta(path: Path, world: World, rng: np.random.Generator,
               on_progress: Callable[[int], None] | None = None) -> None:
    """Meta lines as Python dict literals (single quotes), as in the real crawl."""
    n = world.params.n_meta_items
    asins = world.asins().tolist()
    names = cate_names(world.n_cates)
    popularity = world.item_q * np.exp(world.base_logit)[world.item_cate]  # salesRank order
    sales_rank = np.empty(n, dtype=np.int64)
    sales_rank[np.argsort(-popularity, kind="stable")] = np.arange(1, n + 1)
    price = np.round(rng.lognormal(3.0, 0.8, n), 2)
    has_price = rng.random(n) < 0.85
    extra_path = rng.random(n) < 0.2  # a broader first path: the DIN rule reads the last one
    apostrophe = rng.random(n) < 0.1
    with _gzip_writer(path, world.params.gzip_level) as fh:
        step = 200_000
        for start in range(0, n, step):
            lines = []
            for i in range(start, min(start + step, n)):
                cate = world.item_cate[i]
                title = f"Item {i}'s edition" if apostrophe[i] else f"Item {i}"
                paths = f"[['{TOP_CATEGORY}', 'Group {cate // 10}', '{names[cate]}']]"
                if extra_path[i]:
                    paths = f"[['{TOP_CATEGORY}', 'Accessories'], " + paths[1:]
                price_part = f", 'price': {price[i]}" if has_price[i] else ""
                lines.append(f"{{'asin': '{asins[i]}', 'title': {title!r}{price_part}, "
                             f"'salesRank': {{'{TOP_CATEGORY}': {sales_rank[i]}}}, "
                             f"'categories': {paths}}}\n")
            fh.write("".join(lines).encode())
            if on_progress:
                on_progress(len(lines))


def write_users(path: Path, uid: np.ndarray, users: Users) -> None:
    frame = pd.DataFrame({"reviewerID": uid,
                          "occupation": np.array(OCCUPATIONS)[users.occupation],
                          "age": np.array(AGE_GROUPS)[users.age],
                          "gender": np.array(GENDERS)[users.gender]})
    frame.to_csv(path, index=False)


def refuse_existing(out_dir: Path) -> None:
    """``generate`` writes a new directory only: an existing ``out_dir`` is a DataError."""
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists", hint="choose another --out directory")


def generate(params: WorldParams, out_dir: str | os.PathLike,
             on_progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Write reviews, meta, users and ``oracle.npz`` into ``out_dir`` (atomically: temp + rename).

    ``on_progress(stage, done, total)`` is called as work proceeds. Returns ``out_dir``.
    An existing finished ``out_dir`` is an error (callers check first).
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir)
    ensure_directory(out_dir.parent, "folder")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        _generate_into(params, tmp, on_progress)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _generate_into(params: WorldParams, out: Path,
                   on_progress: Callable[[str, int, int], None] | None) -> None:
    root = np.random.default_rng(params.seed)
    world_rng, user_rng, event_rng, text_rng, meta_rng = root.spawn(5)
    world = build_world(params, world_rng)
    users = draw_users(params, user_rng)
    uid = reviewer_ids(params.n_users, user_rng)
    asins = world.asins()
    total = int(users.lengths.sum())
    chunk = max(256, CHUNK_CELLS // params.n_cates)
    sampler = Sampler(world)

    per_line: dict[str, list[np.ndarray]] = {k: [] for k in (
        "item", "user", "pos", "group", "long_gap", "seen_mass")}
    done = 0
    with _gzip_writer(out / REVIEWS_FILE, params.gzip_level) as fh:
        for start in range(0, params.n_users, chunk):
            rows = slice(start, min(start + chunk, params.n_users))
            ev = simulate_chunk(world, sampler, users, rows, event_rng)
            done += write_reviews(fh, ev, uid, users, rows, world, asins, text_rng)
            valid = np.arange(ev.items.shape[1])[None, :] < ev.lengths[:, None]
            per_line["item"].append(ev.items[valid].astype(np.int32))
            per_line["user"].append((np.nonzero(valid)[0] + start).astype(np.int32))
            per_line["pos"].append(np.nonzero(valid)[1].astype(np.int32))
            per_line["group"].append(ev.group[valid].astype(np.int16))
            per_line["long_gap"].append(ev.long_gap[valid])
            per_line["seen_mass"].append(ev.seen_mass[valid])
            if on_progress:
                on_progress("reviews", done, total)
    meta_done = 0

    def meta_progress(lines: int) -> None:
        nonlocal meta_done
        meta_done += lines
        if on_progress:
            on_progress("meta", meta_done, params.n_meta_items)

    write_meta(out / META_FILE, world, meta_rng, meta_progress)
    write_users(out / USERS_FILE, uid, users)
    np.savez(out / ORACLE_FILE,
             **{f"line_{k}": np.concatenate(v) for k, v in per_line.items()},
             item_cate=world.item_cate, item_q=world.item_q, item_perm=world.item_perm,
             prior=world.prior, mixture=mixture_table(params), window=window_weights(params),
             user_occupation=users.occupation.astype(np.int16),
             user_age=users.age.astype(np.int16))
    (out / PARAMS_FILE).write_text(json.dumps(
        {"generator_version": GENERATOR_VERSION, "params": asdict(replace(params)),
         "key": params.key(), "reviews": total, "users": params.n_users,
         "meta": params.n_meta_items}, indent=2, sort_keys=True))
