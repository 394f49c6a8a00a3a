"""A seeded synthetic world in the exact Amazon 2014 raw formats, with its exact oracle.

Generative model (quoted by the README). A world has ``C`` categories, ``n_items`` reviewable
items (plus never-reviewed items that only appear in the meta file, as in the real crawls),
``n_users`` users with an occupation (16 values) and an age group (7), and a day clock.

- **Items.** Category sizes follow a Zipf law (exponent ``cate_size_zipf``); inside a category,
  item popularity ``q(i | c)`` is Zipf (exponent ``item_zipf``) over a random rank order.
- **Users.** Occupation and age group are drawn once; each occupation prefers a random eighth of
  the categories (+``profile_strength`` logits), each age group another eighth (+``age_strength``).
  A user writes ``L_u >= min_events`` reviews (``min_events`` + geometric, capped at
  ``max_events``; with ``total_events`` set, lengths are adjusted to hit that total exactly).
- **Time.** A user starts on a uniform day in 2004-2013; before each later review the user is
  inactive for a *long gap* (31 + Exp(``long_gap_days``) days) with a user-specific probability
  ``r_u ~ Beta`` (mean ``long_gap_rate``; some users are often inactive), otherwise for
  1 + Exp(``short_gap_days``) days, at most 30 (whole days, at least 1, so per-user times are
  strictly increasing; a gap exceeds 30 days exactly when it is a long one).
- **Seasons.** A share ``seasonal_share`` of the categories peaks in a random month:
  ``S[m, c] = season_strength * cos(2 pi (m - peak_c) / 12)``.
- **Next item.** Given the state before review ``k`` (past items, occupation ``o``, age ``a``,
  month ``m``, whether a long gap preceded it), the category comes from a three-way mixture

      p(c) = pi_h * h_k(c) + pi_p * prior(c | o, a, m) + pi_u / C

  * ``h_k(c)``: recent-category affinity: a past review among the last ``window`` ones is picked
    with weight ``decay ** age`` (age 0 = the latest) and its category is copied;
  * ``prior(c | o, a, m) = softmax_c(log size_c + U[o, c] + A[a, c] + S[m, c])``: a *new demand*
    explained by profile and season only;
  * ``1 / C``: a new demand unrelated to anything.

  The weights ``(pi_h, pi_p, pi_u)`` are ``mix`` normally, ``mix_after_gap`` after a long gap
  (inactive users come back with new demands) and ``(0, pi_h + pi_p, pi_u)`` for a user's first
  review. The item then comes from ``q(i | c)``; a user never reviews an item twice (as on
  Amazon), so the draw is conditioned on unseen items (exact rejection sampling):

      p(i | state_k) = p(c_i) q(i | c_i) [i unseen] / (1 - sum_{j seen} p(c_j) q(j | c_j)).

- **Ratings and text** (no effect on choices): ``overall`` = 4.2 + a user bias + noise, rounded
  and clipped to 1..5; short review text and summary from a small phrase list.

The generator saves, per review line, what the oracle needs (the item, user, position, profile x
month group, long-gap flag and the seen mass in the denominator above) plus the world's tables in
``oracle.npz``; :class:`SyntheticOracle` scores any candidate for any review exactly, vectorised.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrbench.cards import check_keys, config_hash
from ctrbench.errors import CardError, DataError

GENERATOR_VERSION = 1
REVIEWS_FILE = "reviews_Synthetic_5.json.gz"
META_FILE = "meta_Synthetic.json.gz"
USERS_FILE = "users_Synthetic.csv"
ORACLE_FILE = "oracle.npz"
PARAMS_FILE = "params.json"
TOP_CATEGORY = "Synthetic"

OCCUPATIONS = ("artist", "doctor", "educator", "engineer", "executive", "farmer", "homemaker",
               "lawyer", "programmer", "retired", "sales", "scientist", "student", "technician",
               "writer", "other")
AGE_GROUPS = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
AGE_SHARES = (0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06)
GENDERS = ("F", "M")
N_MONTHS = 12
START_DAY = 12418  # 2004-01-01 (days since the epoch)
START_SPAN_DAYS = 3653  # users start within ten years
CHUNK_CELLS = 8_000_000  # users per chunk x categories: bounds the per-chunk state matrices
MAX_REJECTION_ROUNDS = 64
SCORE_CHUNK = 250_000  # oracle rows per chunk (bounds the (N, window) temporaries)

_PHRASES = ("works as described", "good value for the money", "arrived quickly",
            "does the job", "better than expected", "not what I hoped for", "solid build",
            "would buy again", "a bit pricey but fine", "stopped working after a while",
            "great gift", "easy to use", "exactly what I needed", "average quality")
_SUMMARIES = ("Great", "Good", "OK", "Disappointing", "Love it", "Five stars", "Meh",
              "Nice", "Works", "As expected")
_NAMES = ("Amazon Customer", "J. Smith", "reader", "Kindle Customer", "M. Lee", "A. Garcia",
          "techfan", "Pat", "R. Brown", "S. Chen")


@dataclass(frozen=True)
class WorldParams:
    """Every knob of the generative model (see the module docstring); card ``reader_params``."""

    seed: int = 0
    n_users: int = 3000
    n_items: int = 2000
    n_meta_items: int = 2200  # meta lines; items beyond n_items are never reviewed
    n_cates: int = 40
    mean_events: float = 14.0
    min_events: int = 5
    max_events: int = 60
    total_events: int = 0  # 0 = whatever the lengths sum to; else adjusted to exactly this
    cate_size_zipf: float = 0.6
    item_zipf: float = 1.0
    profile_strength: float = 3.0
    age_strength: float = 1.0
    season_strength: float = 2.5
    seasonal_share: float = 0.7
    window: int = 20
    decay: float = 0.8
    mix: tuple[float, float, float] = (0.40, 0.50, 0.10)
    mix_after_gap: tuple[float, float, float] = (0.15, 0.65, 0.20)
    long_gap_rate: float = 0.12
    long_gap_days: float = 90.0
    short_gap_days: float = 6.0
    gzip_level: int = 6

    def __post_init__(self) -> None:
        for name in ("mix", "mix_after_gap"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or min(value) < 0 or not math.isclose(sum(value), 1.0, abs_tol=1e-9):
                raise CardError(f"reader_params.{name} must be three weights >= 0 summing to 1")
            object.__setattr__(self, name, value)
        if self.n_items < self.n_cates or self.n_meta_items < self.n_items:
            raise CardError("reader_params need n_cates <= n_items <= n_meta_items")
        if self.n_users < 1 or self.n_cates < 2 or self.window < 1:
            raise CardError("reader_params need n_users >= 1, n_cates >= 2, window >= 1")
        if not 1 <= self.min_events <= self.max_events or self.mean_events < self.min_events:
            raise CardError("reader_params need 1 <= min_events <= mean_events, max_events")
        if self.total_events and not (self.n_users * self.min_events <= self.total_events
                                      <= self.n_users * self.max_events):
            raise CardError("reader_params.total_events is out of reach of min/max_events")
        if not 0 < self.decay <= 1 or not 0 <= self.long_gap_rate < 1:
            raise CardError("reader_params need 0 < decay <= 1 and 0 <= long_gap_rate < 1")

    def key(self) -> str:
        """Hash naming the generated files (changes with any parameter or the generator)."""
        return config_hash({"generator": GENERATOR_VERSION, **asdict(self)})


SCALES: dict[str, dict[str, Any]] = {
    "default": {},
    # the real reviews_Electronics_5 / meta_Electronics sizes (data README)
    "electronics": dict(n_users=192_403, n_items=63_001, n_meta_items=498_196, n_cates=801,
                        mean_events=8.78, max_events=300, total_events=1_689_188, gzip_level=1),
    # the real reviews_Books_5 / meta_Books sizes
    "books": dict(n_users=603_668, n_items=367_982, n_meta_items=2_370_585, n_cates=1600,
                  mean_events=14.74, max_events=300, total_events=8_898_041, gzip_level=1),
}


def world_params(reader_params: Mapping[str, Any], where: str = "reader_params") -> WorldParams:
    """``{"scale": "electronics", "seed": 3, ...}`` -> WorldParams (unknown keys are errors)."""
    allowed = ["scale", "category_rule", "generator_version",
               *(f.name for f in fields(WorldParams))]
    check_keys(where, reader_params, allowed)
    params = dict(reader_params)
    params.pop("category_rule", None)
    # a card may pin the generator version: the prepared store's key then changes with it
    pinned = params.pop("generator_version", GENERATOR_VERSION)
    if pinned != GENERATOR_VERSION:
        raise CardError(f"{where}: written for synthetic generator version {pinned}, this "
                        f"ctrbench has version {GENERATOR_VERSION}",
                        hint=f"set generator_version = {GENERATOR_VERSION} in the card")
    scale = params.pop("scale", "default")
    if scale not in SCALES:
        raise CardError(f"{where}: unknown scale {scale!r}", hint=f"one of {', '.join(SCALES)}")
    try:
        return WorldParams(**{**SCALES[scale], **params})
    except TypeError as exc:  # a wrongly typed value
        raise CardError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- the world
@dataclass
class World:
    """The static tables of a world (everything but the users' event streams)."""

    params: WorldParams
    item_cate: np.ndarray  # (n_meta_items,) int32 category of every item
    item_q: np.ndarray  # (n_meta_items,) float64 q(i | c_i); 0 for never-reviewed items
    item_perm: np.ndarray  # (n_meta_items,) int64 number behind each asin
    prior: np.ndarray  # (16 * 7 * 12, C) float64 prior(c | occupation, age, month)
    base_logit: np.ndarray  # (C,) log category size
    profile: np.ndarray  # (16, C) occupation logits
    age_effect: np.ndarray  # (7, C) age-group logits
    season: np.ndarray  # (12, C) month logits

    @property
    def n_cates(self) -> int:
        return self.params.n_cates

    def asins(self) -> np.ndarray:
        return asin_strings(self.item_perm)


def asin_strings(numbers: np.ndarray) -> np.ndarray:
    """Amazon-like 10-character ids: ``B`` + 9 digits."""
    return np.char.add("B", np.char.zfill(numbers.astype(str), 9))


def group_index(occupation: np.ndarray, age: np.ndarray, month: np.ndarray) -> np.ndarray:
    """Row of ``World.prior`` for (occupation, age group, month 0..11)."""
    return (occupation * len(AGE_GROUPS) + age) * N_MONTHS + month


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = (np.arange(n) + 1.0) ** -exponent
    return weights / weights.sum()


def _preferred(rng: np.random.Generator, rows: int, n_cates: int, strength: float) -> np.ndarray:
    """``rows`` x C logits: each row adds ``strength`` to a random eighth of the categories."""
    table = np.zeros((rows, n_cates))
    k = max(1, n_cates // 8)
    for row in range(rows):
        table[row, rng.choice(n_cates, size=k, replace=False)] = strength
    return table


def build_world(params: WorldParams, rng: np.random.Generator) -> World:
    """Draw the static tables: categories, item popularity, profile and season effects."""
    C, n_items, n_meta = params.n_cates, params.n_items, params.n_meta_items
    sizes = 1 + rng.multinomial(n_items - C, _zipf(C, params.cate_size_zipf))
    rng.shuffle(sizes)  # category ids carry no size information
    item_cate = np.empty(n_meta, dtype=np.int32)
    item_cate[:n_items] = rng.permutation(np.repeat(np.arange(C, dtype=np.int32), sizes))
    item_cate[n_items:] = rng.integers(0, C, n_meta - n_items)
    # a random rank order inside each category: position in a (category, noise) sort
    block_order = np.lexsort((rng.random(n_items), item_cate[:n_items]))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ranks = np.empty(n_items, dtype=np.int64)
    ranks[block_order] = np.arange(n_items) - np.repeat(starts, sizes)
    item_q = np.zeros(n_meta)
    item_q[:n_items] = (ranks + 1.0) ** -params.item_zipf
    cate_total = np.bincount(item_cate[:n_items], weights=item_q[:n_items], minlength=C)
    item_q[:n_items] /= cate_total[item_cate[:n_items]]

    base_logit = np.log(sizes.astype(np.float64))
    profile = _preferred(rng, len(OCCUPATIONS), C, params.profile_strength)
    age_effect = _preferred(rng, len(AGE_GROUPS), C, params.age_strength)
    seasonal = rng.random(C) < params.seasonal_share
    peak = rng.integers(0, N_MONTHS, C)
    months = np.arange(N_MONTHS)[:, None]
    season = params.season_strength * np.cos(2 * np.pi * (months - peak[None, :]) / N_MONTHS)
    season *= seasonal[None, :]
    logits = (base_logit[None, None, None, :] + profile[:, None, None, :]
              + age_effect[None, :, None, :] + season[None, None, :, :])
    logits = logits.reshape(-1, C)
    logits -= logits.max(axis=1, keepdims=True)
    prior = np.exp(logits)
    prior /= prior.sum(axis=1, keepdims=True)
    item_perm = rng.permutation(n_meta).astype(np.int64) + 10**8  # 9 digits, no leading zeros
    return World(params, item_cate, item_q, item_perm, prior, base_logit, profile, age_effect,
                 season)


def mixture_table(params: WorldParams) -> np.ndarray:
    """(3, 3) weights (history, prior, uniform) for rows: normal, after a long gap, first."""
    h, p, u = params.mix
    return np.array([params.mix, params.mix_after_gap, (0.0, h + p, u)])


def window_weights(params: WorldParams) -> np.ndarray:
    """``decay ** age`` for ages 0..window-1 (0 = the latest review)."""
    return params.decay ** np.arange(params.window, dtype=np.float64)


# --------------------------------------------------------------------------- users and time
@dataclass
class Users:
    occupation: np.ndarray  # (U,) int
    age: np.ndarray  # (U,) int
    gender: np.ndarray  # (U,) int
    rating_bias: np.ndarray  # (U,) float
    long_gap_rate: np.ndarray  # (U,) float
    start_day: np.ndarray  # (U,) int
    lengths: np.ndarray  # (U,) int, descending


def _lengths(params: WorldParams, rng: np.random.Generator) -> np.ndarray:
    extra_mean = params.mean_events - params.min_events
    if extra_mean > 0:
        extra = rng.geometric(1.0 / (1.0 + extra_mean), params.n_users) - 1
    else:
        extra = np.zeros(params.n_users, dtype=np.int64)
    lengths = np.minimum(params.min_events + extra, params.max_events).astype(np.int64)
    if params.total_events:
        diff = params.total_events - int(lengths.sum())
        while diff:  # move users one review at a time (vectorised per round) to hit the total
            room = lengths < params.max_events if diff > 0 else lengths > params.min_events
            candidates = np.flatnonzero(room)
            picked = rng.choice(candidates, size=min(abs(diff), len(candidates)), replace=False)
            lengths[picked] += 1 if diff > 0 else -1
            diff = params.total_events - int(lengths.sum())
    return np.sort(lengths)[::-1].copy()


def draw_users(params: WorldParams, rng: np.random.Generator) -> Users:
    U = params.n_users
    rate = params.long_gap_rate
    concentration = 2.0  # Beta(a, b) with mean `rate`: a few users are inactive very often
    return Users(
        occupation=rng.integers(0, len(OCCUPATIONS), U),
        age=rng.choice(len(AGE_GROUPS), size=U, p=np.array(AGE_SHARES) / sum(AGE_SHARES)),
        gender=rng.integers(0, len(GENDERS), U),
        rating_bias=rng.normal(0.0, 0.6, U),
        long_gap_rate=rng.beta(concentration * rate + 1e-9, concentration * (1 - rate), U),
        start_day=START_DAY + rng.integers(0, START_SPAN_DAYS, U),
        lengths=_lengths(params, rng),
    )


def months_of(days: np.ndarray) -> np.ndarray:
    """Month 0..11 of day numbers (days since 1970-01-01)."""
    return days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12


# --------------------------------------------------------------------------- event simulation
@dataclass
class ChunkEvents:
    """Events of a block of users, ``(n_users_in_chunk, max_len)`` matrices, -1/0 padded."""

    items: np.ndarray
    days: np.ndarray
    long_gap: np.ndarray
    group: np.ndarray
    seen_mass: np.ndarray
    lengths: np.ndarray


class _Sampler:
    """Vectorised draws from p0(i | state) = p(c) q(i | c) for many users at once."""

    def __init__(self, world: World) -> None:
        self.world = world
        C = world.n_cates
        n = world.params.n_items
        self.prior_cdf = (np.cumsum(world.prior, axis=1)
                          + np.arange(len(world.prior))[:, None]).ravel()
        self.items_by_cate = np.argsort(world.item_cate[:n], kind="stable")
        cates_sorted = world.item_cate[:n][self.items_by_cate]
        q_sorted = world.item_q[:n][self.items_by_cate]
        cum = np.cumsum(q_sorted)
        block_start = np.searchsorted(cates_sorted, np.arange(C))
        before = np.concatenate([[0.0], cum])[block_start]
        self.item_cdf = cum - before[cates_sorted] + cates_sorted
        self.item_cdf[np.r_[block_start[1:] - 1, n - 1]] = np.arange(1, C + 1)  # exact ends
        self.weights = window_weights(world.params)

    def categories(self, rng: np.random.Generator, comp: np.ndarray, group: np.ndarray,
                   cats: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        """Category per row for mixture component ``comp`` (0 history, 1 prior, 2 uniform).

        ``cats[rows[i], :k]`` holds row i's past categories (oldest first).
        """
        C = self.world.n_cates
        n = len(comp)
        out = rng.integers(0, C, n)  # uniform component (overwritten for the others)
        prior_rows = np.flatnonzero(comp == 1)
        if len(prior_rows):
            g = group[prior_rows]
            pos = np.searchsorted(self.prior_cdf, g + rng.random(len(g)), side="right")
            out[prior_rows] = np.minimum(pos - g * C, C - 1)
        hist_rows = np.flatnonzero(comp == 0)
        if len(hist_rows) and k > 0:
            span = min(k, len(self.weights))
            cw = np.cumsum(self.weights[:span])
            age = np.searchsorted(cw, rng.random(len(hist_rows)) * cw[-1], side="right")
            age = np.minimum(age, span - 1)
            out[hist_rows] = cats[rows[hist_rows], k - 1 - age]
        return out

    def items(self, rng: np.random.Generator, cates: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.item_cdf, cates + rng.random(len(cates)), side="right")
        return self.items_by_cate[np.minimum(pos, len(self.items_by_cate) - 1)]


def _category_probs(world: World, mix_row, group_row, hist_cats_row, k) -> np.ndarray:
    """Full p(c | state) for one user (the rare fallback when rejection sampling stalls)."""
    C = world.n_cates
    probs = mix_row[1] * world.prior[group_row] + mix_row[2] / C
    span = min(k, world.params.window)
    if span:
        w = window_weights(world.params)[:span]
        cats = hist_cats_row[k - 1 - np.arange(span)]
        probs = probs + mix_row[0] * np.bincount(cats, weights=w / w.sum(), minlength=C)
    return probs


def simulate_chunk(world: World, sampler: _Sampler, users: Users, rows: slice,
                   rng: np.random.Generator) -> ChunkEvents:
    """Simulate every review of users ``rows`` (lengths descending, so actives are a prefix)."""
    p = world.params
    C = world.n_cates
    lengths = users.lengths[rows]
    n_users, max_len = len(lengths), int(lengths.max())
    mix = mixture_table(p)
    weights = sampler.weights

    steps = np.arange(max_len)
    valid = steps[None, :] < lengths[:, None]
    is_long = rng.random((n_users, max_len)) < users.long_gap_rate[rows, None]
    is_long[:, 0] = False
    short = np.minimum(np.floor(rng.exponential(p.short_gap_days, (n_users, max_len))), 29)
    gaps = np.where(is_long, 31 + np.floor(rng.exponential(p.long_gap_days, (n_users, max_len))),
                    1 + short)  # a gap is > 30 days exactly when it is a long one
    gaps[:, 0] = 0
    days = users.start_day[rows, None] + np.cumsum(gaps, axis=1).astype(np.int64)
    group = group_index(users.occupation[rows, None], users.age[rows, None], months_of(days))
    mix_row = np.where(is_long, 1, 0)
    mix_row[:, 0] = 2

    items = np.full((n_users, max_len), -1, dtype=np.int64)
    cats = np.zeros((n_users, max_len), dtype=np.int64)
    qs = np.zeros((n_users, max_len))
    seen_mass = np.zeros((n_users, max_len))
    cate_mass = np.zeros((n_users, C))  # seen q-mass per category
    total_q = np.zeros(n_users)

    for k in range(max_len):
        n = int(np.searchsorted(-lengths, -k, side="left"))  # users with length > k
        weights_k = mix[mix_row[:n, k]]  # (n, 3)
        g = group[:n, k]
        chosen = np.full(n, -1, dtype=np.int64)
        todo = np.arange(n)
        for _ in range(MAX_REJECTION_ROUNDS):
            u = rng.random(len(todo))
            w = weights_k[todo]
            comp = (u >= w[:, 0]).astype(np.int64) + (u >= w[:, 0] + w[:, 1])
            cat = sampler.categories(rng, comp, g[todo], cats, todo, k)
            draw = sampler.items(rng, cat)
            repeat = (items[todo, :k] == draw[:, None]).any(axis=1) if k else np.zeros(
                len(todo), dtype=bool)
            chosen[todo[~repeat]] = draw[~repeat]
            todo = todo[repeat]
            if not len(todo):
                break
        for r in todo:  # exact fallback for the rare user whose favourites are exhausted
            probs = _category_probs(world, weights_k[r], g[r], cats[r], k)
            item_p = probs[world.item_cate[: p.n_items]] * world.item_q[: p.n_items]
            item_p[items[r, :k]] = 0.0
            chosen[r] = rng.choice(p.n_items, p=item_p / item_p.sum())

        if k:  # sum over seen items of p0(j | state_k), before adding the new item
            span = min(k, p.window)
            w = weights[:span] / weights[:span].sum()
            recent = cats[:n, k - 1 - np.arange(span)]  # (n, span)
            hist_term = (cate_mass[np.arange(n)[:, None], recent] * w).sum(axis=1)
            prior_term = (world.prior[g[:, None], cats[:n, :k]] * qs[:n, :k]).sum(axis=1)
            seen_mass[:n, k] = (weights_k[:, 0] * hist_term + weights_k[:, 1] * prior_term
                                + weights_k[:, 2] * total_q[:n] / C)
        cat_chosen = world.item_cate[chosen]
        q_chosen = world.item_q[chosen]
        items[:n, k] = chosen
        cats[:n, k] = cat_chosen
        qs[:n, k] = q_chosen
        cate_mass[np.arange(n), cat_chosen] += q_chosen
        total_q[:n] += q_chosen
    return ChunkEvents(items=items, days=np.where(valid, days, 0), long_gap=is_long & valid,
                       group=group, seen_mass=seen_mass, lengths=lengths)


# --------------------------------------------------------------------------- raw file writers
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


def generate(params: WorldParams, out_dir: str | os.PathLike,
             on_progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Write reviews, meta, users and ``oracle.npz`` into ``out_dir`` (atomically: temp + rename).

    ``on_progress(stage, done, total)`` is called as work proceeds. Returns ``out_dir``.
    An existing finished ``out_dir`` is an error (callers check first).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists", hint="choose another --out directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
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
    sampler = _Sampler(world)

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


# --------------------------------------------------------------------------- the oracle
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
