"""Vectorised event simulation: every review of a block of users, state by state (exact)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctrbench.data.synthetic.world import (
    Users,
    World,
    group_index,
    mixture_table,
    months_of,
    window_weights,
)

MAX_REJECTION_ROUNDS = 64


@dataclass
class ChunkEvents:
    """Events of a block of users, ``(n_users_in_chunk, max_len)`` matrices, -1/0 padded."""

    items: np.ndarray
    days: np.ndarray
    long_gap: np.ndarray
    group: np.ndarray
    seen_mass: np.ndarray
    lengths: np.ndarray


class Sampler:
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


def simulate_chunk(world: World, sampler: Sampler, users: Users, rows: slice,
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
