"""Readers and the audit on real-world shapes they used to misread without a word (a third fault
hunt: the "found and left" list of docs/reliability.md, then real Amazon 2014 lines reshaped as
users bring them). Each case failed before its fix."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.data.audit import candidate_in_history
from ctrbench.data.sources.amazon import read_amazon
from ctrbench.data.sources.movielens import read_movielens
from ctrbench.data.sources.table import TableParams, read_interactions
from ctrbench.errors import DataError

ML_1M = Path(__file__).parent / "fixtures" / "movielens" / "ml-1m"
T0 = 1_400_000_000  # 2014-05-13

CARD = """reader = "table"
protocol = "{protocol}"
[[sources]]
role = "interactions"
file = "../data/orders.csv"
{items}
[reader_params]
user_col = "u"
item_col = "i"
time_col = "t"
{params}
"""
ITEMS = '[[sources]]\nrole = "items"\nfile = "../data/items.csv"'


def shop(home: Path, log: str, *, params: str = "", items: str | None = None,
         protocol: str = "din") -> Path:
    """A table card ``shop`` in the ``home`` fixture's card root, over ``log`` (CSV text)."""
    data = home.parent / "data"
    data.mkdir()
    (data / "orders.csv").write_text(log)
    if items is not None:
        (data / "items.csv").write_text(items)
    (home / "shop.toml").write_text(CARD.format(protocol=protocol, params=params,
                                                items=ITEMS if items is not None else ""))
    return data


def orders(users: int = 12, per_user: int = 6, header: str = "u,i,t") -> str:
    return header + "\n" + "".join(
        f"c{u},p{(u * 3 + k) % 20},{T0 + u * 100 + k * 86_400}\n"
        for u in range(users) for k in range(per_user))


def table(tmp_path: Path, text: str, **params):
    path = tmp_path / "log.csv"
    path.write_text(text)
    return read_interactions(path, TableParams("u", "i", "t", **params), strict=False)


def days(inter: pd.DataFrame) -> list[str]:
    return pd.to_datetime(inter["ts"], unit="s").dt.strftime("%Y-%m-%d").tolist()


def categories(tables) -> dict[str, str]:
    return dict(zip(tables.items["item"], tables.items["category"]))


def gz_lines(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress("".join(f"{ln}\n" for ln in lines).encode()))
    return path


# --------------------------------------------------------------------------- Amazon 2018
def meta_2018(asin: str, path: list[str], main_cat: str = "Books") -> str:
    """A 2018 meta line with the published fields (escaped as the release escapes them)."""
    return json.dumps({"category": path, "tech1": "", "description": [], "fit": "",
                       "title": "Levi&#39;s 501 &amp; more", "also_buy": [], "tech2": "",
                       "brand": "Levi&#39;s", "feature": [], "rank": [], "also_view": [],
                       "main_cat": main_cat, "similar_item": "", "date": "", "price": "",
                       "asin": asin, "imageURL": [], "imageURLHighRes": []})


def review_2018(user: str, item: str, ts: int) -> str:
    return json.dumps({"overall": 5.0, "vote": "2", "verified": True, "reviewTime": "x",
                       "reviewerID": user, "asin": item, "reviewerName": "n",
                       "reviewText": "t", "summary": "s", "unixReviewTime": ts})


def test_html_entities_in_2018_category_names_are_unescaped(tmp_path):
    """2018 meta files escape category names (``Clothing, Shoes &amp; Jewelry``): before, the
    escaped text was the category, a name the 2014 and 2023 files of the same shelf never use."""
    reviews = gz_lines(tmp_path / "r.json.gz", [review_2018("U1", "B1", T0),
                                                review_2018("U1", "B2", T0 + 60),
                                                review_2018("U2", "B3", T0)])
    meta = gz_lines(tmp_path / "m.json.gz", [
        meta_2018("B1", ["Clothing, Shoes &amp; Jewelry", "Men", "Jeans &amp; Pants"]),
        meta_2018("B2", ["Toys &amp; Games", "Kids&#39; Puzzles"]),
        meta_2018("B3", [], main_cat="Arts, Crafts &amp; Sewing")])
    tables = read_amazon(reviews, meta, category_rule="last_of_last", strict=False)
    assert categories(tables) == {"B1": "Jeans & Pants", "B2": "Kids' Puzzles",
                                  "B3": "Arts, Crafts & Sewing"}


# --------------------------------------------------------------------------- MovieLens 1M
def test_an_ml1m_title_holding_the_separator_is_not_malformed(tmp_path):
    """``MovieID::Title::Genres`` with ``::`` inside the title: before, "expected 3 fields,
    found 4", the film's category lost. The id is the first field, the genres the last."""
    folder = shutil.copytree(ML_1M, tmp_path / "ml-1m")
    with open(folder / "movies.dat", "a", encoding="latin-1") as fh:
        fh.write("8::Star Wars:: Episode IV (1977)::Action|Sci-Fi\n"
                 "9::Why?:::Documentary\n")  # a title ending in ':' before the separator
    with open(folder / "ratings.dat", "a", encoding="latin-1") as fh:
        fh.write("1::8::5::978300900\n1::9::4::978301000\n")
    tables = read_movielens(folder)
    items_report = tables.reports[1]
    assert items_report.bad == 1  # only the fixture's own "7::Sabrina (1995)" (no genres)
    assert [n for n, _ in items_report.first_bad] == [7]
    assert categories(tables)["8"] == "Action" and categories(tables)["9"] == "Documentary"


# --------------------------------------------------------------------------- table times
YYYYMMDD_LOG = "u,i,t\nu1,i1,20140523\nu1,i2,20140601\nu2,i1,20141231\nu2,i3,20150101\n"


def test_yyyymmdd_integers_are_read_as_dates_and_said_once(tmp_path, caplog):
    """20140523 as a time: before, unix seconds, a date in August 1970, without a word."""
    inter, report = table(tmp_path, YYYYMMDD_LOG)
    assert report.bad == 0
    assert days(inter) == ["2014-05-23", "2014-06-01", "2014-12-31", "2015-01-01"]
    said = [r.getMessage() for r in caplog.records if "YYYYMMDD" in r.getMessage()]
    assert len(said) == 1 and "'t'" in said[0] and "log.csv" in said[0]
    assert 'time_format = "%Y%m%d"' in said[0]


def test_yyyymmdd_with_an_explicit_format_or_unit_is_honoured(tmp_path, caplog):
    """``time_format = "%Y%m%d"`` on a numeric column was ignored (read as seconds); an explicit
    ``time_unit = "s"`` says they really are unix seconds."""
    inter, _ = table(tmp_path, YYYYMMDD_LOG, time_format="%Y%m%d")
    assert days(inter)[0] == "2014-05-23"
    inter, _ = table(tmp_path, YYYYMMDD_LOG, time_unit="s")
    assert inter["ts"].tolist()[0] == 20140523
    assert not [r for r in caplog.records if "YYYYMMDD" in r.getMessage()]


def test_unix_seconds_are_not_taken_for_yyyymmdd(tmp_path, caplog):
    mixed = "u,i,t\nu1,i1,20140523\nu1,i2,1400000000\n"
    with pytest.raises(DataError, match="mixes two formats"):  # seventeenth session: refused
        table(tmp_path, mixed)
    inter, _ = table(tmp_path, mixed, time_unit="s")  # declared seconds: read as such
    assert inter["ts"].tolist() == [20140523, 1_400_000_000]
    inter, _ = table(tmp_path, "u,i,t\nu1,i1,20141332\nu1,i2,20140523\n")  # month 13
    assert inter["ts"].tolist()[0] == 20141332
    assert not [r for r in caplog.records if "YYYYMMDD" in r.getMessage()]


AMBIGUOUS_LOG = "u,i,t\nu1,i1,01/02/2023\nu1,i2,03/04/2023\nu2,i1,05/06/2023\n"


def test_dates_readable_day_or_month_first_are_warned_once(tmp_path, caplog):
    """Every day <= 12: both orders parse, the month-first reading was taken silently."""
    inter, report = table(tmp_path, AMBIGUOUS_LOG)
    assert report.bad == 0 and days(inter)[0] == "2023-01-02"  # month first, as before
    said = [r.getMessage() for r in caplog.records if "alike" in r.getMessage()]
    assert len(said) == 1 and "'t'" in said[0] and "log.csv" in said[0]
    assert 'time_format = "%d/%m/%Y"' in said[0]
    caplog.clear()
    inter, _ = table(tmp_path, AMBIGUOUS_LOG, time_format="%d/%m/%Y")
    assert days(inter)[0] == "2023-02-01"
    assert not [r for r in caplog.records if "alike" in r.getMessage()]


def test_unambiguous_dates_are_not_warned(tmp_path, caplog):
    table(tmp_path, "u,i,t\nu1,i1,01/02/2023\nu1,i2,03/25/2023\n")  # 25 cannot be a month
    table(tmp_path, "u,i,t\nu1,i1,2023-01-02\nu1,i2,2023-03-04\n")  # ISO: year-month-day
    assert not [r for r in caplog.records if "alike" in r.getMessage()]


# --------------------------------------------------------------------------- category_col
def test_a_category_col_found_nowhere_is_an_error(home):
    """A card naming ``category_col`` whose column is neither in the log nor in an items table
    (there is none): before, a warning and every category ``<unknown>``, exit 0; the own-data
    README promises an error."""
    shop(home, orders(), params='category_col = "genre"')
    result = CliRunner().invoke(main, ["prepare", "shop"])
    assert result.exit_code == 1, result.output
    assert "'genre' (reader_params.category_col)" in result.output
    assert "orders.csv" in result.output and "Traceback" not in result.output


def test_a_category_col_of_the_items_table_or_the_log_still_works(home, tmp_path):
    """The legitimate cases: the column in the items table (not in the log), or in the log."""
    items = "i,genre\n" + "".join(f"p{k},g{k % 3}\n" for k in range(20))
    shop(home, orders(), params='category_col = "genre"', items=items)
    result = CliRunner().invoke(main, ["stats", "shop"])
    assert result.exit_code == 0, result.output
    log = "u,i,t,genre\nu1,i1,1400000000,books\nu1,i2,1400000100,music\n"
    path = tmp_path / "log.csv"
    path.write_text(log)
    inter, _ = read_interactions(path, TableParams("u", "i", "t", category_col="genre"),
                                 strict=False, category_in_log=True)
    assert inter["category"].tolist() == ["books", "music"]


# --------------------------------------------------------------------------- audit
def test_a_split_too_small_to_judge_is_not_called_ok(home):
    """``stats --audit`` on a split of two samples: before, "ok" for a test that could not have
    flagged even a total leak (all positives hit, no negative)."""
    row = candidate_in_history("valid", {"item_id": np.array([5, 6]),
                                         "hist_item_id": np.array([[5], [7]]),
                                         "hist_len": np.array([1, 1]),
                                         "label": np.array([1.0, 0.0])})
    assert row.passed and not row.judged
    assert "too small to judge" in row.detail and "1 positive, 1 negative" in row.detail
    shop(home, orders(users=4), protocol="dien")
    result = CliRunner().invoke(main, ["stats", "shop", "--audit"])
    assert result.exit_code == 0, result.output
    assert "too small" in result.output
    assert "audit: no leak found" in result.output and "too small to judge" in result.output.split(
        "audit: no leak found")[1]


# --------------------------------------------------------------------------- real shapes
def test_a_utf16_log_is_told_to_set_utf16_not_latin1(tmp_path):
    """Excel's "Unicode Text" export (UTF-16 with a BOM, tab-separated): before, the hint said
    ``encoding = "latin-1"``, which reads it as NUL-riddled columns ("missing column(s)")."""
    path = tmp_path / "log.tsv"
    text = "u\ti\tt\r\nu1\ti1\t1400000000\r\nu1\ti2\t1400000100\r\n"
    path.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError, match='encoding = "utf-16"'):
        read_interactions(path, TableParams("u", "i", "t"), strict=False)
    inter, report = read_interactions(path, TableParams("u", "i", "t", encoding="utf-16"),
                                      strict=False)
    assert inter["ts"].tolist() == [1_400_000_000, 1_400_000_100] and report.bad == 0
