"""The Amazon 2014 reader on fixtures cut from the real files (tests/fixtures/amazon)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from ctrbench.cards import dataset_card_from_dict
from ctrbench.data.sources import READERS, read_source
from ctrbench.data.sources.amazon import parse_meta_line, pick_category, read_amazon
from ctrbench.errors import CardError, DataError

FIX = Path(__file__).parent / "fixtures" / "amazon"
REVIEWS, META = FIX / "reviews.json.gz", FIX / "meta.json.gz"
BAD_REVIEWS, BAD_META = FIX / "reviews_malformed.json.gz", FIX / "meta_malformed.json.gz"


@pytest.fixture(scope="module")
def din_tables():
    return read_amazon(REVIEWS, META, category_rule="last_of_last", strict=True)


def test_counts_and_columns(din_tables):
    inter = din_tables.interactions
    assert len(inter) == 59
    assert inter["user"].nunique() == 12
    assert inter["item"].nunique() == 41
    assert list(inter["line"]) == list(range(59))  # 0-based line numbers, file order
    assert inter["ts"].dtype == np.int64 and inter["rating"].dtype == np.float32
    first = inter.iloc[0]
    assert (first["user"], first["item"], first["ts"], first["rating"]) == (
        "A38IRL0X2T4DPF", "5555991584", 1058140800, 5.0)
    assert sorted(inter.groupby("user").size().tolist()) == [4] * 7 + [5, 5, 6, 7, 8]
    # every reviewed item is in the items table, the two unreviewed meta items are not
    assert set(din_tables.items["item"]) == set(inter["item"])
    assert "6308051551" not in set(din_tables.items["item"])
    assert [r.lines for r in din_tables.reports] == [59, 42]
    assert all(r.bad == 0 for r in din_tables.reports)


def test_category_rules_hand_checked(din_tables):
    dien = read_amazon(REVIEWS, META, category_rule="last_of_first", strict=True)
    din_cat = dict(zip(din_tables.items["item"], din_tables.items["category"]))
    dien_cat = dict(zip(dien.items["item"], dien.items["category"]))
    # 'categories': [['CDs & Vinyl', 'Dance & Electronic'], ..., ['CDs & Vinyl', 'R&B', 'Soul']]
    assert (din_cat["B0000000ZW"], dien_cat["B0000000ZW"]) == ("Soul", "Dance & Electronic")
    assert (din_cat["B00000016W"], dien_cat["B00000016W"]) == ("Indie & Lo-Fi", "Classic Rock")
    # first and last paths both end in "Celtic New Age"
    assert din_cat["5555991584"] == dien_cat["5555991584"] == "Celtic New Age"
    # the last reviewed item has no meta line on purpose
    assert din_cat["B0000024JN"] == dien_cat["B0000024JN"] == "<unknown>"
    assert din_tables.items["category"].nunique() == 17  # 16 + <unknown>
    assert dien.items["category"].nunique() == 15


def test_meta_fast_path_matches_literal_eval():
    import ast

    with gzip.open(META, "rt", encoding="utf-8") as fh:
        lines = fh.readlines()
    for line in lines:
        record = ast.literal_eval(line)
        assert parse_meta_line(line) == (record["asin"], record.get("categories", []))
    # strings with quotes and escapes, and a categories key hidden in a description
    tricky = ("{'asin': 'X1', 'description': \"the 'categories': [['fake']] key\", "
              "'categories': [[\"Children's Music\", 'Tom \\'T\\' Jones']]}")
    assert parse_meta_line(tricky) == ("X1", [["Children's Music", "Tom 'T' Jones"]])
    assert parse_meta_line("{'asin': 'X2', 'title': 't'}") == ("X2", [])
    assert pick_category([], "last_of_last") == "<unknown>"
    assert pick_category([[]], "last_of_first") == "<unknown>"


def test_malformed_lines_counted_with_line_numbers():
    tables = read_amazon(BAD_REVIEWS, BAD_META, category_rule="last_of_last", strict=False)
    reviews, meta = tables.reports
    assert (reviews.lines, reviews.bad) == (63, 4)
    assert [n for n, _ in reviews.first_bad] == [3, 4, 5, 6]
    reasons = [why for _, why in reviews.first_bad]
    assert reasons[0] == "invalid JSON" and "asin" in reasons[1]
    assert "unixReviewTime" in reasons[2] and "object" in reasons[3]
    assert len(tables.interactions) == 59
    assert (meta.lines, meta.bad) == (8, 2)
    assert [n for n, _ in meta.first_bad] == [2, 3]
    # the truncated meta line was skipped; the good line of the same item gave its category
    cat = dict(zip(tables.items["item"], tables.items["category"]))
    assert cat["5555991584"] == "Celtic New Age"
    assert "line 3 (invalid JSON)" in reviews.summary()


def test_strict_raises_on_first_malformed_line():
    with pytest.raises(DataError, match="line 3: invalid JSON"):
        read_amazon(BAD_REVIEWS, None, category_rule="last_of_last", strict=True)
    with pytest.raises(DataError, match="line 2"):
        read_amazon(REVIEWS, BAD_META, category_rule="last_of_last", strict=True)


def test_truncated_gzip_is_a_data_error(tmp_path):
    data = REVIEWS.read_bytes()
    cut = tmp_path / "reviews_cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"reviews_cut\.json\.gz.*truncated"):
        read_amazon(cut, None, category_rule="last_of_last", strict=False)
    not_gzip = tmp_path / "plain.json.gz"
    not_gzip.write_text('{"reviewerID": "u"}\n')
    with pytest.raises(DataError, match=r"plain\.json\.gz"):
        read_amazon(not_gzip, None, category_rule="last_of_last", strict=False)
    with pytest.raises(DataError, match="not found"):
        read_amazon(tmp_path / "absent.json.gz", None, category_rule="last_of_last",
                    strict=False)


def test_snapshot_fields_off_by_default_and_on_request(din_tables):
    assert set(din_tables.interactions.columns) == {"user", "item", "ts", "rating", "line"}
    assert set(din_tables.items.columns) == {"item", "category"}
    snap = read_amazon(REVIEWS, META, category_rule="last_of_last", strict=True,
                       keep_snapshot_fields=True)
    assert {"helpful_yes", "helpful_total"} <= set(snap.interactions.columns)
    assert snap.interactions["helpful_total"].iloc[0] == 2.0
    rank = dict(zip(snap.items["item"], snap.items["sales_rank"]))
    assert rank["5555991584"] == 939190.0
    assert math.isnan(rank["B0000024JN"])


def test_registered_reader_and_bad_params():
    assert "amazon" in READERS
    card = dataset_card_from_dict({
        "name": "fixture", "reader": "amazon",
        "sources": [{"role": "reviews", "file": str(REVIEWS)}, {"role": "meta", "file": str(META)}],
        "reader_params": {"category_rule": "last_of_first"},
    })
    tables = read_source(card, {"reviews": REVIEWS, "meta": META})
    assert dict(zip(tables.items["item"], tables.items["category"]))["B0000000ZW"] == (
        "Dance & Electronic")
    bad = dataset_card_from_dict({"name": "fixture", "reader": "amazon",
                                  "reader_params": {"category_rul": "last_of_last"}})
    with pytest.raises(CardError, match="category_rule"):
        read_source(bad, {"reviews": REVIEWS})
    with pytest.raises(CardError, match="unknown category_rule"):
        read_amazon(REVIEWS, None, category_rule="first", strict=False)
