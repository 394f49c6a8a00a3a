"""Raw files as users bring them, which the readers used to refuse, garble or misread (a fault
hunt on the Amazon 2014/2018/2023 and MovieLens readers): each case failed before its fix."""

from __future__ import annotations

import bz2
import gzip
import json
import zipfile
from pathlib import Path

import pytest

from ctrbench.cards import load_dataset_card
from ctrbench.data.sources import read_source
from ctrbench.data.sources.amazon import read_amazon
from ctrbench.errors import DataError

T0 = 1_588_687_728  # 2020-05-05, seconds
ML = Path(__file__).parent / "fixtures" / "movielens"


def write(path: Path, lines: list[str], gz: bool = True) -> Path:
    data = "".join(f"{ln}\n" for ln in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def review_2023(user: str, item: str, ms: int, variant: str = "") -> str:
    return json.dumps({"rating": 4.0, "title": "t", "text": "x", "images": [],
                       "asin": variant or item, "parent_asin": item, "user_id": user,
                       "timestamp": ms, "helpful_vote": 0, "verified_purchase": True})


def meta_2023(item: str, leaf: str) -> str:
    return json.dumps({"main_category": "All Beauty", "title": "x", "average_rating": 4.0,
                       "rating_number": 3, "features": [], "description": [], "price": None,
                       "images": [], "videos": [], "store": "s",
                       "categories": ["Beauty", leaf], "details": {}, "parent_asin": item,
                       "bought_together": None})


def review_2018(user: str, item: str, ts: int) -> str:
    return json.dumps({"overall": 5.0, "vote": "2", "verified": True, "reviewTime": "x",
                       "reviewerID": user, "asin": item, "style": {"Format:": " Print"},
                       "reviewerName": "n", "reviewText": "t", "summary": "s",
                       "unixReviewTime": ts})


def categories(tables) -> dict[str, str]:
    return dict(zip(tables.items["item"], tables.items["category"]))


def read(reviews: Path, meta: Path | None, **kw):
    return read_amazon(reviews, meta, category_rule="last_of_last", strict=False, **kw)


# --------------------------------------------------------------------------- plain JSON lines
def test_uncompressed_jsonl_files_read_like_gzipped_ones(tmp_path):
    """The 2023 release is also published as plain ``.jsonl`` (and users gunzip files): before,
    "truncated or not a valid gzip file", hint "download again"."""
    reviews = [review_2023("U1", "B1", T0 * 1000, "B1V1"), review_2023("U2", "B1", T0 * 1000),
               review_2023("U1", "B2", (T0 + 60) * 1000)]
    metas = [meta_2023("B1", "Shampoo"), meta_2023("B2", "Face")]
    gz = read(write(tmp_path / "r.jsonl.gz", reviews), write(tmp_path / "m.jsonl.gz", metas))
    plain = read(write(tmp_path / "r.jsonl", reviews, gz=False),
                 write(tmp_path / "m.jsonl", metas, gz=False))
    assert plain.interactions.equals(gz.interactions)
    assert categories(plain) == categories(gz) == {"B1": "Shampoo", "B2": "Face"}
    assert [r.format for r in plain.reports] == ["amazon 2023", "amazon 2023"]
    # a damaged gzip is still named as one
    (tmp_path / "cut.json.gz").write_bytes((tmp_path / "r.jsonl.gz").read_bytes()[:-12])
    with pytest.raises(DataError, match="truncated or not a valid gzip"):
        read(tmp_path / "cut.json.gz", None)
    # another compression is named, not read as lines of garbage
    (tmp_path / "r.json.bz2").write_bytes(bz2.compress(b"\n".join(r.encode() for r in reviews)))
    with pytest.raises(DataError, match=r"r\.json\.bz2 is a bzip2 file"):
        read(tmp_path / "r.json.bz2", None)


# --------------------------------------------------------------------------- format detection
def test_2018_meta_whose_first_line_has_no_category_field_is_still_read_as_2018(tmp_path):
    """A first meta line with only ``asin`` (no ``category``/``main_cat``) decided the format
    as 2014 for the whole file: every 2018 category was silently ``<unknown>``."""
    reviews = write(tmp_path / "r.json.gz", [review_2018("A1", "X1", T0),
                                             review_2018("A1", "X2", T0 + 60),
                                             review_2018("A2", "X9", T0 + 90)])
    meta = write(tmp_path / "m.json.gz", [
        json.dumps({"asin": "X9", "title": "no category fields"}),
        json.dumps({"category": ["Magazine Subscriptions", "Golf"], "main_cat": "Books",
                    "asin": "X1", "price": "$12.99", "also_buy": []}),
        json.dumps({"category": [], "main_cat": "Magazine Subscriptions", "asin": "X2"})])
    tables = read(reviews, meta)
    assert categories(tables) == {"X1": "Golf", "X2": "Magazine Subscriptions",
                                  "X9": "<unknown>"}
    assert tables.reports[1].format == "amazon 2018" and tables.reports[1].bad == 0
    # the same lines in a 2014 file (JSON re-encoded) still read as 2014
    meta14 = write(tmp_path / "m14.json.gz", [
        json.dumps({"asin": "X9", "title": "none"}),
        json.dumps({"asin": "X1", "categories": [["Music", "Jazz"]]})])
    tables = read(reviews, meta14)
    assert categories(tables)["X1"] == "Jazz" and tables.reports[1].format == "amazon 2014"


# --------------------------------------------------------------------------- 2023 times
def test_2023_timestamp_in_seconds_is_malformed_not_read_as_1970(tmp_path):
    """A 2023 review whose ``timestamp`` is in seconds (a converted file, a mixed one) was
    divided by 1000: kept as 1970-01-19 with no warning at all."""
    lines = [review_2023("U1", "B1", T0 * 1000), review_2023("U1", "B2", T0 + 60),
             review_2023("U2", "B1", (T0 + 120) * 1000)]
    tables = read(write(tmp_path / "r.jsonl.gz", lines), None)
    assert tables.interactions["ts"].tolist() == [T0, T0 + 120]
    report = tables.reports[0]
    assert report.bad == 1 and report.first_bad[0][0] == 2
    assert "seconds" in report.first_bad[0][1] and "milliseconds" in report.first_bad[0][1]
    # every line in seconds: the one message says why
    only_seconds = write(tmp_path / "s.jsonl.gz", [review_2023("U1", "B1", T0),
                                                   review_2023("U1", "B2", T0 + 1)])
    with pytest.raises(DataError, match=r"line 1 .*milliseconds"):
        read_source(load_dataset_card("magazines-2023"), {"reviews": only_seconds})


# --------------------------------------------------------------------------- meta coverage
def test_reviewed_items_without_a_meta_line_are_said(tmp_path, capsys):
    """A meta file of another category (or release) matched no reviewed item: every category
    ``<unknown>``, and ``prepare`` said "none malformed" and nothing else."""
    reviews = write(tmp_path / "r.json.gz", [review_2018("A1", f"X{k}", T0 + k)
                                             for k in range(4)])
    other = write(tmp_path / "m.json.gz", [json.dumps({"category": ["Toys", "Dolls"],
                                                       "main_cat": "Toys", "asin": f"Y{k}"})
                                           for k in range(4)])
    tables = read(reviews, other)
    assert set(categories(tables).values()) == {"<unknown>"}
    err = capsys.readouterr().err
    assert "4 of 4 reviewed items have no line in m.json.gz" in err
    partial = write(tmp_path / "p.json.gz", [json.dumps({"category": ["Toys", "Dolls"],
                                                         "asin": "X1"})])
    read(reviews, partial)
    assert "3 of 4 reviewed items have no line in p.json.gz" in capsys.readouterr().err
    read(reviews, write(tmp_path / "all.json.gz", [
        json.dumps({"category": ["T", "D"], "asin": f"X{k}"}) for k in range(4)]))
    assert "no line in" not in capsys.readouterr().err


# --------------------------------------------------------------------------- MovieLens
def _both(tmp_path: Path) -> tuple[Path, Path]:
    """A folder, and a zip, holding both ml-100k/ and ml-1m/ (a user's data folder)."""
    folder = tmp_path / "movielens"
    archive = tmp_path / "movielens.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for layout in ("ml-100k", "ml-1m"):
            (folder / layout).mkdir(parents=True)
            for path in sorted((ML / layout).iterdir()):
                (folder / layout / path.name).write_bytes(path.read_bytes())
                zf.write(path, f"{layout}/{path.name}")
    return folder, archive


@pytest.mark.parametrize("name", ["movielens-1m", "movielens-100k"])
def test_a_folder_holding_both_movielens_releases_reads_the_cards_one(tmp_path, name):
    """The ml-1m card pointed at a folder (or zip) that also holds ml-100k read u.data: the
    100k ratings, users and items under the 1m card's name, exit 0."""
    folder, archive = _both(tmp_path)
    layout = "ml-1m" if name.endswith("1m") else "ml-100k"
    card = load_dataset_card(name)
    want = read_source(card, {"archive": ML / layout}).interactions
    for source in (folder, archive):
        got = read_source(card, {"archive": source}).interactions
        assert got[["user", "item", "ts"]].equals(want[["user", "item", "ts"]]), source.name
