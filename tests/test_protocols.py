"""The din and dien protocols on a hand-checked tiny log, and on the real-derived fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctrbench.cards import dataset_card_from_dict
from ctrbench.data.build import build_samples
from ctrbench.data.canonical import CanonicalTables
from ctrbench.data.negatives import popular_excluding, reviewed_keys, stream, uniform_unreviewed
from ctrbench.data.sources.amazon import read_amazon
from ctrbench.errors import CardError, DataError

DAY = 86_400
BASE = 1388534400  # 2014-01-01 00:00 UTC, a Wednesday
FIX = Path(__file__).parent / "fixtures" / "amazon"


def tiny_tables() -> CanonicalTables:
    """u1: a b c d (days 1 2 4 8), u2: b a e c (days 1 3 5 6), u3: a (day 9).

    Rows are out of time order on purpose (u1's c before its b). Item codes follow first
    appearance: a b c d e. Each of u1, u2 left exactly one item unreviewed (e, d), so their
    uniform negatives are forced.
    """
    rows = [("u1", "a", 1, 5.0), ("u2", "b", 1, 4.0), ("u1", "c", 4, 4.0), ("u1", "b", 2, 3.0),
            ("u1", "d", 8, 1.0), ("u2", "e", 5, 5.0), ("u2", "a", 3, 2.0), ("u2", "c", 6, 3.0),
            ("u3", "a", 9, 4.0)]
    inter = pd.DataFrame(rows, columns=["user", "item", "day", "rating"])
    inter["ts"] = BASE + inter.pop("day") * DAY
    inter["rating"] = inter["rating"].astype(np.float32)
    inter["line"] = np.arange(len(inter), dtype=np.int64)
    items = pd.DataFrame({"item": list("abcde"), "category": ["X", "Y", "X", "Z", "Y"]})
    return CanonicalTables(interactions=inter, items=items)


def tiny_card(protocol: str, **params) -> object:
    return dataset_card_from_dict({
        "name": "tiny", "reader": "amazon", "protocol": protocol,
        "protocol_params": {"max_len": 2, "rating_bins": 2, **params},
        "fields": {"user": ["user_id", "hist_len_bucket", "mean_rating_bucket", "fav_cate",
                            "tenure_bucket"],
                   "context": ["month", "weekday", "gap_bucket"]},
    })


def test_din_rows_hand_checked():
    built = build_samples(tiny_tables(), tiny_card("din"))
    tr, va, te = (built.splits[s] for s in ("train", "valid", "test"))
    # item vocab from train rows: candidates b e a d, histories a b, negative histories e d
    # -> codes a0 b1 d3 e4 get ids 2 3 4 5; c (valid/test only) is OOV (1).
    # category vocab X Y Z -> 2 3 4.
    np.testing.assert_array_equal(tr["label"], [1, 0, 1, 0])
    np.testing.assert_array_equal(tr["item_id"], [3, 5, 2, 4])  # b, neg e | a, neg d
    np.testing.assert_array_equal(tr["cate_id"], [3, 3, 2, 4])
    np.testing.assert_array_equal(tr["hist_item_id"], [[2, 0], [2, 0], [3, 0], [3, 0]])
    np.testing.assert_array_equal(tr["hist_cate_id"], [[2, 0], [2, 0], [3, 0], [3, 0]])
    np.testing.assert_array_equal(tr["neg_hist_item_id"], [[5, 0], [5, 0], [4, 0], [4, 0]])
    np.testing.assert_array_equal(tr["neg_hist_cate_id"], [[3, 0], [3, 0], [4, 0], [4, 0]])
    np.testing.assert_array_equal(tr["hist_len"], [1, 1, 1, 1])
    np.testing.assert_array_equal(tr["group"], [0, 0, 1, 1])
    np.testing.assert_array_equal(tr["user_id"], [2, 2, 3, 3])
    np.testing.assert_array_equal(tr["fav_cate"], [2, 2, 3, 3])  # X | Y
    np.testing.assert_array_equal(tr["gap_days"], [1, 1, 2, 2])
    np.testing.assert_array_equal(tr["gap_bucket"], [4, 4, 5, 5])  # edges [1, 2]
    np.testing.assert_array_equal(tr["mean_rating_bucket"], [4, 4, 3, 3])  # 5.0 | 4.0, edge 4.5
    np.testing.assert_array_equal(tr["weekday"], [2, 2, 3, 3])  # Fri Jan 3 | Sat Jan 4
    np.testing.assert_array_equal(tr["month"], [2, 2, 2, 2])

    # valid: u1 predicts c from [a, b]; u2 predicts e from [b, a]
    np.testing.assert_array_equal(va["item_id"], [1, 5, 5, 4])
    np.testing.assert_array_equal(va["hist_item_id"], [[2, 3], [2, 3], [3, 2], [3, 2]])
    np.testing.assert_array_equal(va["neg_hist_item_id"], [[5, 5], [5, 5], [4, 4], [4, 4]])
    np.testing.assert_array_equal(va["fav_cate"], [2, 2, 3, 3])  # ties keep the first leader
    np.testing.assert_array_equal(va["weekday"], [1, 1, 1, 1])  # Sun, Mon: never in train
    # test: u1 predicts d from the last T=2 of [a, b, c]; u2 predicts c from [a, e]
    np.testing.assert_array_equal(te["item_id"], [4, 5, 1, 4])
    np.testing.assert_array_equal(te["cate_id"], [4, 3, 2, 4])
    np.testing.assert_array_equal(te["hist_item_id"], [[3, 1], [3, 1], [2, 5], [2, 5]])
    np.testing.assert_array_equal(te["hist_cate_id"], [[3, 2], [3, 2], [2, 3], [2, 3]])
    np.testing.assert_array_equal(te["hist_len"], [2, 2, 2, 2])
    np.testing.assert_array_equal(te["gap_days"], [4, 4, 1, 1])
    np.testing.assert_array_equal(te["hist_len_bucket"], [4, 4, 4, 4])  # 3 >= top edge 1
    assert built.schema.field("item_id").vocab_size == 6
    assert built.schema.field("fav_cate").vocab == "cate"
    assert built.meta["counts"] == {"users": 3, "items": 5, "categories": 3, "interactions": 9}
    assert built.rows() == {"train": 4, "valid": 4, "test": 4}
    for split in built.splits.values():
        assert all(a.dtype == np.int32 for n, a in split.items()
                   if n not in ("label", "group", "gap_days"))


def test_din_several_negatives_share_history_and_context():
    tables = tiny_tables()
    extra = pd.DataFrame({"user": ["u1"] * 3, "item": ["f", "g", "h"],
                          "ts": [BASE + 20 * DAY] * 3, "rating": np.float32(3.0),
                          "line": [9, 10, 11]})
    tables.interactions = pd.concat([tables.interactions.iloc[:8], extra], ignore_index=True)
    built = build_samples(tables, tiny_card("din", neg_per_pos=3, max_len=30))
    te = built.splits["test"]
    assert len(te["label"]) == 2 * 4
    np.testing.assert_array_equal(te["label"], [1, 0, 0, 0, 1, 0, 0, 0])
    for name in ("hist_item_id", "neg_hist_item_id", "user_id", "weekday", "gap_bucket"):
        block = te[name].reshape(2, 4, *te[name].shape[1:])
        assert (block == block[:, :1]).all(), name


def test_dien_rows_hand_checked():
    built = build_samples(tiny_tables(), tiny_card("dien", split=[1.0, 0.0, 0.0]))
    tr = built.splits["train"]
    assert built.rows() == {"train": 4, "valid": 0, "test": 0}  # u3 (one event) is dropped
    # every item is in a train row -> ids a2 b3 c4 d5 e6; categories X2 Y3 Z4
    np.testing.assert_array_equal(tr["label"], [1, 0, 1, 0])
    np.testing.assert_array_equal(tr["group"], [0, 0, 1, 1])
    np.testing.assert_array_equal(tr["item_id"][[0, 2]], [5, 4])  # u1 -> d, u2 -> c
    np.testing.assert_array_equal(tr["hist_item_id"], [[3, 4], [3, 4], [2, 6], [2, 6]])
    np.testing.assert_array_equal(tr["hist_cate_id"], [[3, 2], [3, 2], [2, 3], [2, 3]])
    np.testing.assert_array_equal(tr["neg_hist_item_id"], [[6, 6], [6, 6], [5, 5], [5, 5]])
    np.testing.assert_array_equal(tr["neg_hist_cate_id"], [[3, 3], [3, 3], [4, 4], [4, 4]])
    np.testing.assert_array_equal(tr["hist_len"], [2, 2, 2, 2])
    np.testing.assert_array_equal(tr["user_id"], [2, 2, 3, 3])
    np.testing.assert_array_equal(tr["gap_days"], [4, 4, 1, 1])
    # popularity negatives: any other item (a is the most popular), never the target
    assert tr["item_id"][1] in {2, 3, 4, 6} and tr["item_id"][3] in {2, 3, 5, 6}


def test_dien_one_sample_per_user_popularity_negatives():
    card = tiny_card("dien", max_len=3, split=[0.5, 0.0, 0.5])
    built = build_samples(tiny_tables(), card)
    tr, va, te = (built.splits[s] for s in ("train", "valid", "test"))
    assert len(va["label"]) == 0
    np.testing.assert_array_equal(tr["label"], [1, 0])
    np.testing.assert_array_equal(te["label"], [1, 0])
    # u3 has a single event: no history, no sample; u1 and u2 are split between train and test
    assert {int(tr["group"][0]), int(te["group"][0])} == {0, 1}
    np.testing.assert_array_equal(tr["hist_len"], [3, 3])
    np.testing.assert_array_equal(te["hist_len"], [3, 3])
    # the train user's history and target are in the train vocabulary; test user ids are OOV
    assert (tr["hist_item_id"] >= 2).all() and tr["item_id"][0] >= 2
    np.testing.assert_array_equal(te["user_id"], [1, 1])
    assert tr["item_id"][1] != tr["item_id"][0]  # the negative is never the target
    # same seed -> same data; another seed -> the draws differ somewhere
    again = build_samples(tiny_tables(), card)
    assert again.meta["data_hash"] == built.meta["data_hash"]
    hashes = {build_samples(tiny_tables(), tiny_card("dien", max_len=3, seed=s)).meta["data_hash"]
              for s in range(6)}
    assert len(hashes) > 1


def test_din_row_counts_on_real_fixture():
    tables = read_amazon(FIX / "reviews.json.gz", FIX / "meta.json.gz",
                         category_rule="last_of_last", strict=True)
    card = dataset_card_from_dict({"name": "fixture", "reader": "amazon", "protocol": "din"})
    built = build_samples(tables, card)
    users, events = 12, 59  # every fixture user has >= 4 reviews
    rows = built.rows()
    # DIN's construction: (events - 2 * users) positives in train+valid, one per user in test
    assert rows["train"] + rows["valid"] == 2 * (events - 2 * users)
    assert rows["test"] == rows["valid"] == 2 * users
    assert built.meta["protocol_params"]["max_len"] == 30
    assert built.meta["read_reports"][0]["lines"] == 59


def test_uniform_negatives_avoid_reviewed_items_and_are_uniform():
    user = np.array([0, 0, 0, 1, 1])
    item = np.array([0, 1, 2, 0, 5])
    keys = reviewed_keys(user, item, 6)
    draws = uniform_unreviewed(stream(7, 1), np.repeat([0, 1], 6000), 6, keys)
    u0, u1 = draws[:6000], draws[6000:]
    assert set(u0) == {3, 4, 5} and set(u1) == {1, 2, 3, 4}
    assert np.abs(np.bincount(u0, minlength=6)[3:] / 6000 - 1 / 3).max() < 0.03
    full = reviewed_keys(np.zeros(6, int), np.arange(6), 6)
    with pytest.raises(Exception, match="every item"):
        uniform_unreviewed(stream(7, 1), np.zeros(3, int), 6, full)


def test_popularity_negatives_are_proportional_and_never_the_target():
    counts = np.array([6, 3, 1, 0])
    draws = popular_excluding(stream(3, 1), np.full(20000, 0), counts)
    assert 0 not in draws and 3 not in draws
    assert abs((draws == 1).mean() - 0.75) < 0.02  # 3 / (3 + 1) once item 0 is excluded


def test_bad_protocol_params_and_fields_are_card_errors():
    with pytest.raises(CardError, match="max_le"):
        build_samples(tiny_tables(), tiny_card("din", max_le=3))
    with pytest.raises(CardError, match="unknown protocol"):
        build_samples(tiny_tables(), tiny_card("sasrec"))
    card = dataset_card_from_dict({"name": "t", "reader": "amazon",
                                   "fields": {"user": ["gender"]}})
    with pytest.raises(CardError, match="unknown user field 'gender'"):
        build_samples(tiny_tables(), card)
    with pytest.raises(CardError, match="max_len must be an integer"):
        build_samples(tiny_tables(), tiny_card("din", max_len="30"))
    with pytest.raises(CardError, match="split"):
        build_samples(tiny_tables(), tiny_card("dien", split=[0.9, 0.2, 0.1]))


def test_users_table_columns_and_oracle():
    tables = tiny_tables()
    tables.users = pd.DataFrame({"user": ["u1", "u2"], "gender": ["F", "M"]})

    calls = []

    class RecordingOracle:
        def score(self, event_lines, candidate_items):
            calls.append((np.asarray(event_lines).copy(), list(candidate_items)))
            return np.arange(len(event_lines)) / 10.0

    tables.oracle = RecordingOracle()
    card = dataset_card_from_dict({
        "name": "tiny", "reader": "amazon", "protocol": "din",
        "protocol_params": {"max_len": 2},
        "fields": {"user": ["user_id", "gender"], "context": ["weekday"]},
    })
    built = build_samples(tables, card)
    tr, te = built.splits["train"], built.splits["test"]
    assert [f.name for f in built.schema.user] == ["user_id", "gender"]
    np.testing.assert_array_equal(tr["gender"], [2, 2, 3, 3])  # F, M in train
    np.testing.assert_array_equal(te["gender"], [2, 2, 3, 3])
    # the oracle scored every row: the target event's line and the candidate's raw id
    train_lines, train_items = calls[0]
    np.testing.assert_array_equal(train_lines, [3, 3, 6, 6])  # u1's b (line 3), u2's a (line 6)
    assert train_items == ["b", "e", "a", "d"]
    np.testing.assert_allclose(tr["oracle"], [0.0, 0.1, 0.2, 0.3])
    assert tr["oracle"].dtype == np.float32
    tables.users = pd.DataFrame({"user": ["u1", "u1"], "gender": ["F", "M"]})
    with pytest.raises(DataError, match="more than once"):
        build_samples(tables, card)
