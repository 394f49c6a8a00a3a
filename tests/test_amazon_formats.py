"""Amazon 2018 and 2023 releases (format detection, category rule per format) and bad lines
that used to crash the reader (issue 12 D5)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ctrbench.cards import dataset_card_from_dict
from ctrbench.data.sources import read_source
from ctrbench.data.sources.amazon import read_amazon
from ctrbench.errors import CardError, DataError

FIX = Path(__file__).parent / "fixtures" / "amazon"


def read(year: str, rule: str = "last_of_last", strict: bool = True):
    return read_amazon(FIX / f"reviews_{year}.json.gz", FIX / f"meta_{year}.json.gz",
                       category_rule=rule, strict=strict)


def categories(tables) -> dict[str, str]:
    return dict(zip(tables.items["item"], tables.items["category"]))


def test_2018_categories_per_rule():
    tables = read("2018")
    assert [r.format for r in tables.reports] == ["amazon 2018", "amazon 2018"]
    cats = categories(tables)
    assert cats["0000ZW9X3Q"] == "Medical"  # the last element of the flat `category` path
    assert cats["000DT3KTDL"] == "Golf"  # meta listed twice: the first line wins
    assert cats["00HB4RZSY2"] == "Magazine Subscriptions"  # empty path -> main_cat
    assert cats["00J8LVZMA2"] == "AMAZON FASHION"  # HTML main_cat -> its alt text
    assert cats["00S1Y5R2K1"] == "<unknown>"  # no meta line
    assert len(set(cats.values())) == 7
    main = categories(read("2018", "main"))
    assert main["0000ZW9X3Q"] == "Books" and main["00J8LVZMA2"] == "AMAZON FASHION"
    # last_of_first is the same as last_of_last: a 2018 item has one path
    assert categories(read("2018", "last_of_first")) == cats


def test_2023_keys_times_and_categories():
    tables = read("2023")
    assert [r.format for r in tables.reports] == ["amazon 2023", "amazon 2023"]
    inter = tables.interactions
    # the item is parent_asin (two variants of B01CUPMQZE are one item); ms -> s
    assert "B01CUPMQZF" not in set(inter["item"])
    assert inter["ts"].iloc[0] == 1_420_070_400
    cats = categories(tables)
    assert cats["B076WQZGPM"] == "Shampoo"  # last of `categories`
    assert cats["B000B658RI"] == "Premium Beauty"  # empty path -> main_category
    assert cats["B088SZDGXG"] == "Face"  # main_category null, path present
    assert categories(read("2023", "main"))["B076WQZGPM"] == "All Beauty"


def test_main_rule_needs_2018_or_2023_meta():
    with pytest.raises(DataError, match="main_cat"):
        read_amazon(FIX / "reviews.json.gz", FIX / "meta.json.gz", category_rule="main",
                    strict=True)


def card(year: str, **params):
    return dataset_card_from_dict({
        "name": f"amazon-{year}", "reader": "amazon",
        "sources": [{"role": "reviews", "file": str(FIX / f"reviews_{year}.json.gz")},
                    {"role": "meta", "file": str(FIX / f"meta_{year}.json.gz")}],
        "reader_params": params})


def test_format_can_be_named_and_is_validated():
    files = {"reviews": FIX / "reviews_2023.json.gz", "meta": FIX / "meta_2023.json.gz"}
    tables = read_source(card("2023", reviews_format="2023", meta_format="2023"), files)
    assert len(tables.interactions) == 19
    with pytest.raises(CardError, match="meta_format must be one of 2014, 2018, 2023"):
        read_source(card("2023", meta_format="2019"), files)
    # naming the wrong release makes every line malformed, with the reason
    with pytest.raises(DataError, match="line 1: missing field 'reviewerID'"):
        read_source(card("2023", reviews_format="2014"), files, strict=True)


def _gz(path: Path, lines: list[bytes]) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    return path


def _review(**extra) -> bytes:
    record = {"reviewerID": "U1", "asin": "I1", "overall": 5.0, "unixReviewTime": 1_300_000_000}
    record.update(extra)
    return json.dumps(record).encode()


def test_bad_review_lines_are_skipped_and_counted_not_crashes(tmp_path):
    deep = b'{"reviewerID": "U9", "asin": "I9", "unixReviewTime": 1, "x": ' \
        + b"[" * 200_000 + b"]" * 200_000 + b"}"
    lines = [_review(), deep, _review(unixReviewTime=1e300), _review(unixReviewTime=2e19),
             b'{"reviewerID": "U1", "asin": "I3", "overall": 1, "unixReviewTime": Infinity}',
             b'{"reviewerID": "U1", "asin": "I4", "overall": 1, "unixReviewTime": NaN}',
             _review(asin="I2", unixReviewTime=1_300_000_100)]
    tables = read_amazon(_gz(tmp_path / "r.json.gz", lines), None,
                         category_rule="last_of_last", strict=False)
    report = tables.reports[0]
    assert len(tables.interactions) == 2 and report.bad == 5
    assert [n for n, _ in report.first_bad] == [2, 3, 4, 5, 6]
    assert "nested too deep" in report.first_bad[0][1]
    assert "out of range" in report.first_bad[1][1]
    with pytest.raises(DataError, match="line 2: JSON nested too deep"):
        read_amazon(tmp_path / "r.json.gz", None, category_rule="last_of_last", strict=True)


def test_bad_meta_escape_is_a_malformed_line(tmp_path):
    reviews = _gz(tmp_path / "r.json.gz", [_review(), _review(asin="I2", unixReviewTime=2)])
    meta = _gz(tmp_path / "m.json.gz", [
        b"{'asin': 'I1', 'categories': [['Music', '\\N{NOPE}']]}",
        b"{'asin': 'I2', 'categories': [['Music', 'Jazz']]}",
    ])
    tables = read_amazon(reviews, meta, category_rule="last_of_last", strict=False)
    assert tables.reports[1].bad == 1 and tables.reports[1].first_bad[0][0] == 1
    assert categories(tables) == {"I1": "<unknown>", "I2": "Jazz"}


@pytest.mark.parametrize(("name", "year", "categories"), [("magazines-2018", "2018", 7),
                                                           ("magazines-2023", "2023", 5)])
def test_shipped_cards_prepare_the_fixtures_with_their_categories(name, year, categories,
                                                                  tmp_path, monkeypatch):
    from dataclasses import replace

    from ctrbench.cards import SourceSpec, load_dataset_card
    from ctrbench.data.prepare import prepare

    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path))
    card = load_dataset_card(name)
    local = replace(card, sources=(
        SourceSpec("reviews", str(FIX / f"reviews_{year}.json.gz")),
        SourceSpec("meta", str(FIX / f"meta_{year}.json.gz"))),
        protocol_params={**card.protocol_params, "max_len": 4})
    meta = prepare(local).data.meta
    assert meta["counts"]["categories"] == categories  # real categories, not one <unknown>
    assert meta["cleaning"]["repeated_user_item_dropped"] == 1
    assert [r["format"] for r in meta["read_reports"]] == [f"amazon {year}"] * 2


def test_parse_first_mode_gives_the_same_result(tmp_path, monkeypatch):
    """After PRECHECK_SAMPLE lines with most items wanted, JSON lines are parsed before their
    key is looked up; a malformed line of an unwanted item is still skipped, not counted."""
    from ctrbench.data.sources import amazon

    meta = gzip.decompress((FIX / "meta_2018.json.gz").read_bytes()).splitlines()
    lines = [*meta, b'{"asin": "0NOTWANTED", "category": [BROKEN', b'{"asin": "00K7TS8CRA", x']
    path = _gz(tmp_path / "m.json.gz", lines)
    results = []
    for sample in (10_000, 2):
        monkeypatch.setattr(amazon, "PRECHECK_SAMPLE", sample)
        tables = read_amazon(FIX / "reviews_2018.json.gz", path, category_rule="last_of_last",
                             strict=False)
        results.append((categories(tables), tables.reports[1].bad,
                        tables.reports[1].first_bad))
    assert results[0] == results[1]
    assert results[0][1] == 1 and results[0][2][0][0] == len(meta) + 2
