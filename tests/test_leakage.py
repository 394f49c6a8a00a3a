"""Each leakage rule of DESIGN.md §3 as its own test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctrbench.cards import dataset_card_from_dict
from ctrbench.data.build import build_samples
from ctrbench.data.canonical import CanonicalTables
from ctrbench.data.features import history_stats

DAY = 86_400
USER_FIELDS = ["user_id", "hist_len_bucket", "mean_rating_bucket", "fav_cate", "tenure_bucket"]
CONTEXT_FIELDS = ["year", "month", "weekday", "hour", "gap_bucket"]


def random_tables(seed: int = 0, n_users: int = 120, n_items: int = 60) -> CanonicalTables:
    """A random log with skewed item popularity and 3-15 events per user."""
    rng = np.random.default_rng(seed)
    n_events = rng.integers(3, 16, size=n_users)
    user = np.repeat(np.arange(n_users), n_events)
    popularity = 1.0 / np.arange(1, n_items + 1)
    item = rng.choice(n_items, size=len(user), p=popularity / popularity.sum())
    ts = 1_300_000_000 + rng.integers(0, 3 * 365 * DAY, size=len(user))
    inter = pd.DataFrame({
        "user": np.array([f"u{u}" for u in user], dtype=object),
        "item": np.array([f"i{i}" for i in item], dtype=object),
        "ts": ts.astype(np.int64),
        "rating": rng.integers(1, 6, size=len(user)).astype(np.float32),
        "line": np.arange(len(user), dtype=np.int64),
    })
    items = pd.DataFrame({"item": [f"i{i}" for i in range(n_items)],
                          "category": [f"c{i % 7}" for i in range(n_items)]})
    return CanonicalTables(interactions=inter, items=items)


def card(protocol: str = "din"):
    return dataset_card_from_dict({
        "name": "leak", "reader": "amazon", "protocol": protocol,
        "protocol_params": {"max_len": 5, "seed": 3},
        "fields": {"user": USER_FIELDS, "context": CONTEXT_FIELDS},
    })


def last_event_rows(inter: pd.DataFrame) -> np.ndarray:
    """Row labels of each user's last event by (ts, line)."""
    ordered = inter.sort_values(["user", "ts", "line"], kind="stable")
    return ordered.groupby("user").tail(1).index.to_numpy()


# --------------------------------------------------------------------------- past only
def test_history_stats_see_only_earlier_events():
    rng = np.random.default_rng(1)
    user = np.repeat(np.arange(20), 8)
    ts = np.sort(rng.integers(0, 1000 * DAY, size=(20, 8)), axis=1).ravel()
    rating = rng.integers(1, 6, size=len(user)).astype(np.float64)
    cate = rng.integers(0, 4, size=len(user))
    base = history_stats(user, ts, rating, cate)
    for j in (0, 3, 6):  # perturb the j-th event of every user
        at = np.arange(20) * 8 + j
        r2, c2 = rating.copy(), cate.copy()
        r2[at] = 6 - r2[at]
        c2[at] = (c2[at] + 1) % 4
        later = history_stats(user, ts, r2, c2)
        upto = np.isin(np.arange(len(user)) % 8, np.arange(j + 1))  # events <= j
        for name in ("n_before", "mean_rating_before", "fav_cate_before", "tenure_days",
                     "gap_days"):
            np.testing.assert_array_equal(getattr(later, name)[upto], getattr(base, name)[upto])
        after = np.arange(len(user)) % 8 == j + 1
        assert not np.array_equal(later.mean_rating_before[after], base.mean_rating_before[after])


def test_future_event_does_not_change_earlier_samples():
    tables = random_tables()
    base = build_samples(tables, card())
    changed = random_tables()
    inter = changed.interactions
    last = last_event_rows(inter)
    inter.loc[last, "rating"] = np.float32(6) - inter.loc[last, "rating"]
    inter.loc[last, "ts"] += 400 * DAY  # still each user's last event
    built = build_samples(changed, card())
    for split in ("train", "valid"):  # samples whose target precedes the perturbed events
        for name in [*USER_FIELDS, *CONTEXT_FIELDS, "hist_item_id", "item_id", "label"]:
            np.testing.assert_array_equal(built.splits[split][name], base.splits[split][name],
                                          err_msg=f"{split}/{name}")
    assert built.schema.extra["bucket_edges"] == base.schema.extra["bucket_edges"]
    # the perturbation itself is visible where it belongs: the test targets' gaps
    assert (built.splits["test"]["gap_days"] > base.splits["test"]["gap_days"]).all()


# --------------------------------------------------------------------------- paired context
def _one_hot(split: dict, names: list[str], sizes: dict[str, int]) -> np.ndarray:
    blocks = []
    for name in names:
        block = np.zeros((len(split[name]), sizes[name]))
        block[np.arange(len(split[name])), split[name]] = 1.0
        blocks.append(block)
    return np.hstack(blocks)


def _fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 0.5) -> np.ndarray:
    w = np.zeros(x.shape[1] + 1)
    xb = np.hstack([x, np.ones((len(x), 1))])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-xb @ w))
        w -= lr * (xb.T @ (p - y) / len(y) + 1e-4 * w)
    return w


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    ranks = pd.Series(score).rank().to_numpy()
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize("protocol", ["din", "dien"])
def test_context_and_user_fields_identical_within_pairs(protocol):
    built = build_samples(random_tables(), card(protocol))
    for split, cols in built.splits.items():
        for name in [*USER_FIELDS, *CONTEXT_FIELDS, "hist_item_id", "neg_hist_item_id",
                     "hist_len", "group", "gap_days"]:
            pairs = cols[name].reshape(-1, 2, *cols[name].shape[1:])
            assert (pairs[:, 0] == pairs[:, 1]).all(), f"{split}/{name}"


def test_logistic_regression_on_user_and_context_is_chance():
    built = build_samples(random_tables(), card("din"))
    sizes = {f.name: f.vocab_size for f in built.schema.fields}
    train, test = built.splits["train"], built.splits["test"]
    names = USER_FIELDS + CONTEXT_FIELDS
    w = _fit_logistic(_one_hot(train, names, sizes), train["label"])
    x_test = np.hstack([_one_hot(test, names, sizes), np.ones((len(test["label"]), 1))])
    assert _auc(x_test @ w, test["label"]) == pytest.approx(0.5, abs=1e-9)
    # the same model on the candidate's id is not at chance: the check can fail
    w_item = _fit_logistic(_one_hot(train, ["item_id"], sizes), train["label"])
    x_item = np.hstack([_one_hot(train, ["item_id"], sizes), np.ones((len(train["label"]), 1))])
    assert _auc(x_item @ w_item, train["label"]) > 0.6


# --------------------------------------------------------------------------- train-only vocab
def test_vocabularies_and_edges_come_from_train_only():
    tables = random_tables()
    inter = tables.interactions
    last = last_event_rows(inter)
    # every user's last event (a DIN test target) is one new item of a new category: no train
    # row holds it (not a target, not in a train history, and, reviewed by everyone, never a
    # negative), so it must map to OOV in test
    inter.loc[last, "item"] = "only_in_test"
    tables.items = pd.concat([tables.items, pd.DataFrame({"item": ["only_in_test"],
                                                          "category": ["new_cate"]})])
    inter.loc[last[0], "ts"] += 5000 * DAY  # a huge gap that exists in test only
    built = build_samples(tables, card())
    base = build_samples(random_tables(), card())
    test = built.splits["test"]
    positives = test["label"] == 1
    assert (test["item_id"][positives] == 1).all()
    assert (test["cate_id"][positives] == 1).all()
    assert (test["item_id"][~positives] >= 2).all()  # negatives were seen in train
    assert built.schema.extra["bucket_edges"] == base.schema.extra["bucket_edges"]
    top_gap = built.schema.field("gap_bucket").vocab_size - 1
    assert test["gap_bucket"].max() == top_gap  # clipped into the open top bucket
    assert built.splits["train"]["gap_bucket"].max() <= top_gap


# --------------------------------------------------------------------------- padding
@pytest.mark.parametrize("protocol", ["din", "dien"])
def test_id_zero_is_padding_only(protocol):
    built = build_samples(random_tables(), card(protocol))
    seq = {f.name for f in built.schema.fields if f.group in ("behavior", "neg_behavior")}
    for split, cols in built.splits.items():
        T = built.schema.max_len
        valid = np.arange(T)[None, :] < cols["hist_len"][:, None]
        for f in built.schema.fields:
            values = cols[f.name]
            if f.name in seq:
                assert (values[valid] >= 1).all(), f"{split}/{f.name}"
                assert (values[~valid] == 0).all(), f"{split}/{f.name}"
            else:
                assert (values >= 1).all(), f"{split}/{f.name}"
            assert (values < f.vocab_size).all(), f"{split}/{f.name}"
