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

This module holds the parameters, the static world and the users; :mod:`.sampler` simulates the
events, :mod:`.writer` writes the raw files, :mod:`.oracle` scores candidates.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ctrbench.cards import check_keys, config_hash
from ctrbench.errors import CardError

GENERATOR_VERSION = 1
OCCUPATIONS = ("artist", "doctor", "educator", "engineer", "executive", "farmer", "homemaker",
               "lawyer", "programmer", "retired", "sales", "scientist", "student", "technician",
               "writer", "other")
AGE_GROUPS = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
AGE_SHARES = (0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06)
GENDERS = ("F", "M")
N_MONTHS = 12
START_DAY = 12418  # 2004-01-01 (days since the epoch)
START_SPAN_DAYS = 3653  # users start within ten years


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
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise CardError(f"seed must be an integer >= 0, got {self.seed!r} "
                            "(reader_params.seed, or generate --seed)")
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
