"""Repeated (user, item) events are dropped in every reader (first occurrence kept) and counted;
no positive's item is ever in its own history (issue 16.4, issue 12 D4)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctrbench.cards import dataset_card_from_dict
from ctrbench.data.build import build_samples
from ctrbench.data.canonical import CanonicalTables, clean_interactions, repeated_events
from ctrbench.data.sources import read_source
from ctrbench.schema import HIST_LEN, LABEL

FIX = Path(__file__).parent / "fixtures"


def card(reader: str, sources: dict[str, Path], protocol: str = "din", **params):
    return dataset_card_from_dict({
        "name": "dup", "reader": reader, "protocol": protocol,
        "sources": [{"role": r, "file": str(p)} for r, p in sources.items()],
        "reader_params": params, "protocol_params": {"max_len": 8, "seed": 3},
        "fields": {"user": ["user_id"], "context": ["month"]}})


def positives_in_own_history(built) -> int:
    """Positive rows whose candidate item id is among their (valid) history ids."""
    found = 0
    for cols in built.splits.values():
        pos = cols[LABEL] > 0.5
        hist, cand, n = cols["hist_item_id"][pos], cols["item_id"][pos], cols[HIST_LEN][pos]
        valid = np.arange(hist.shape[1])[None, :] < n[:, None]
        found += int(((hist == cand[:, None]) & valid).any(axis=1).sum())
    return found


def amazon_2018():
    return "amazon", {"reviews": FIX / "amazon" / "reviews_2018.json.gz",
                      "meta": FIX / "amazon" / "meta_2018.json.gz"}, {}


def amazon_2023():
    return "amazon", {"reviews": FIX / "amazon" / "reviews_2023.json.gz",
                      "meta": FIX / "amazon" / "meta_2023.json.gz"}, {}


def movielens(tmp: Path):
    folder = tmp / "ml-100k"
    shutil.copytree(FIX / "movielens" / "ml-100k", folder)
    data = (folder / "u.data").read_text().splitlines()
    user, item, _, ts = data[0].split("\t")
    data.append(f"{user}\t{item}\t1\t{int(ts) + 5000}")  # the same rating again, later
    (folder / "u.data").write_text("\n".join(data) + "\n")
    return "movielens", {"archive": folder}, {}


def table_doubled(tmp: Path):
    """The table fixture's log written twice (issue 12 D4: exact duplicate rows)."""
    rng = np.random.default_rng(0)
    text = ["customer,product,when,stars"] + [
        f"c{u},p{i},{1_600_000_000 + 3600 * (7 * u + k)},{1 + (u + k) % 5}"
        for u in range(20) for k, i in enumerate(rng.choice(40, size=6, replace=False))]
    (tmp / "once.csv").write_text("\n".join(text) + "\n")
    doubled = tmp / "doubled.csv"
    doubled.write_text("\n".join(text + text[1:]) + "\n")
    return "table", {"interactions": doubled}, {"user_col": "customer", "item_col": "product",
                                                "time_col": "when", "rating_col": "stars"}


@pytest.mark.parametrize("source", [amazon_2018, amazon_2023, movielens, table_doubled])
@pytest.mark.parametrize("protocol", ["din", "dien"])
def test_no_positive_is_in_its_own_history(source, protocol, tmp_path):
    reader, files, params = source(tmp_path) if source in (movielens, table_doubled) \
        else source()
    the_card = card(reader, files, protocol, **params)
    tables = read_source(the_card, files)
    assert tables.cleaning["repeated_user_item_dropped"] >= 1
    assert not tables.interactions.duplicated(["user", "item"]).any()
    built = build_samples(tables, the_card)
    assert positives_in_own_history(built) == 0


def test_table_doubled_file_counts_every_copy(tmp_path):
    reader, files, params = table_doubled(tmp_path)
    single = {"interactions": tmp_path / "once.csv"}
    once = read_source(card(reader, single, **params), single)
    twice = read_source(card(reader, files, **params), files)
    assert once.cleaning["repeated_user_item_dropped"] == 0
    assert twice.cleaning["repeated_user_item_dropped"] == len(once.interactions) == 120
    assert len(twice.interactions) == len(once.interactions)


def test_first_occurrence_is_kept_by_time_then_line():
    inter = pd.DataFrame({
        "user": ["a", "a", "a", "b", "a"], "item": ["x", "x", "y", "x", "x"],
        "ts": np.array([50, 10, 20, 10, 10], np.int64),
        "rating": np.ones(5, np.float32), "line": np.arange(5, dtype=np.int64)})
    # a-x at ts 10 occurs on lines 1 and 4: line 1 is first; line 0 (ts 50) is later
    assert repeated_events(inter).tolist() == [True, False, False, False, True]
    tables = clean_interactions(CanonicalTables(inter, pd.DataFrame(
        {"item": ["x", "y"], "category": ["c", "c"]})), now=100)
    assert tables.interactions["line"].tolist() == [1, 2, 3]
    assert tables.cleaning == {"repeated_user_item_dropped": 2, "negative_time": 0,
                               "future_time": 0}


def test_negative_and_future_times_are_counted():
    inter = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "x"],
                          "ts": np.array([-5, 10, 10_000_000], np.int64),
                          "rating": np.ones(3, np.float32), "line": np.arange(3)})
    tables = clean_interactions(CanonicalTables(inter, pd.DataFrame(
        {"item": ["x", "y"], "category": ["c", "c"]})), now=1_000)
    assert tables.cleaning == {"repeated_user_item_dropped": 0, "negative_time": 1,
                               "future_time": 1}
