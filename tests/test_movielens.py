"""MovieLens reader on hand-made ml-100k and ml-1m fixtures, zipped at test time."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ctrbench.cards import load_dataset_card
from ctrbench.data.canonical import ReadReport
from ctrbench.data.sources import read_source
from ctrbench.data.sources.movielens import parse_delimited, read_movielens
from ctrbench.errors import CardError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "movielens"


def make_zip(tmp_path: Path, layout: str) -> Path:
    """The fixture directory zipped like GroupLens ships it (members under ``<layout>/``)."""
    target = tmp_path / f"{layout}.zip"
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr(f"{layout}/", "")
        for path in sorted((FIXTURES / layout).iterdir()):
            zf.write(path, f"{layout}/{path.name}")
    return target


def report_of(tables, name: str):
    return next(r for r in tables.reports if r.file == name)


def test_ml100k_layout(tmp_path):
    tables = read_movielens(make_zip(tmp_path, "ml-100k"))
    inter = tables.interactions
    assert len(inter) == 25
    assert list(inter.columns) == ["user", "item", "ts", "rating", "line"]
    assert inter["ts"].dtype == np.int64 and inter["rating"].dtype == np.float32
    assert sorted(inter["user"].unique()) == ["1", "2", "3", "4", "5"]
    # user 1 rated item 4 on the 5th physical line (0-based 4): line 4 (1-based) is malformed
    row = inter[(inter["user"] == "1") & (inter["item"] == "4")].iloc[0]
    assert (row["line"], row["ts"], row["rating"]) == (4, 881524549, 1.0)

    ratings = report_of(tables, "u.data")
    assert (ratings.lines, ratings.bad) == (28, 3)
    assert [n for n, _ in ratings.first_bad] == [4, 11, 21]
    assert "expected 4 fields, found 3" in ratings.first_bad[0][1]
    assert "rating is not a number" in ratings.first_bad[1][1]
    assert "user is not a number" in ratings.first_bad[2][1]

    categories = dict(zip(tables.items["item"], tables.items["category"]))
    assert categories == {"1": "Animation", "2": "Action", "3": "Thriller", "4": "Action",
                          "5": "Drama", "6": "Drama", "7": "<unknown>", "8": "<unknown>"}
    assert report_of(tables, "u.item").first_bad[0][0] == 8  # item 8's line is truncated

    users = tables.users.set_index("user")
    assert list(tables.users.columns) == ["user", "gender", "age", "occupation", "zip"]
    assert users.loc["2"].tolist() == ["F", "53", "other", "940"]
    assert len(users) == 5 and report_of(tables, "u.user").bad == 1


def test_ml1m_layout(tmp_path):
    tables = read_movielens(make_zip(tmp_path, "ml-1m"))
    assert len(tables.interactions) == 22
    assert tables.interactions["item"].nunique() == 7
    ratings = report_of(tables, "ratings.dat")
    assert (ratings.lines, ratings.bad) == (24, 2)
    assert [n for n, _ in ratings.first_bad] == [6, 13]
    assert "found 5" in ratings.first_bad[1][1]

    categories = dict(zip(tables.items["item"], tables.items["category"]))
    assert categories == {"1": "Animation", "2": "Adventure", "3": "Comedy", "4": "Comedy",
                          "5": "Drama", "6": "Action", "7": "<unknown>"}

    users = tables.users.set_index("user")
    assert users.loc["1"].tolist() == ["F", "1", "10", "480"]
    assert users.loc["4", "zip"] == "024"  # leading zero kept: strings, not numbers
    assert users.loc["5", "zip"] == "554"
    assert users.loc["2", "age"] == "56"


def test_strict_raises_at_first_malformed_line(tmp_path):
    with pytest.raises(DataError, match=r"u\.data: line 4: expected 4 fields"):
        read_movielens(make_zip(tmp_path, "ml-100k"), strict=True)


def test_extracted_directory_and_latin1_titles(tmp_path):
    tables = read_movielens(FIXTURES / "ml-1m")
    assert len(tables.interactions) == 22  # the directory reads like the zip


def test_not_a_movielens_archive(tmp_path):
    odd = tmp_path / "odd.zip"
    with zipfile.ZipFile(odd, "w") as zf:
        zf.writestr("ml-latest/ratings.csv", "userId,movieId\n")
    with pytest.raises(DataError, match="neither an ml-100k"):
        read_movielens(odd)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a readable zip"):
        read_movielens(broken)


@pytest.mark.parametrize("name", ["movielens-100k", "movielens-1m"])
def test_registered_reader_through_the_card(tmp_path, name):
    card = load_dataset_card(name)
    layout = "ml-100k" if name.endswith("100k") else "ml-1m"
    tables = read_source(card, {"archive": make_zip(tmp_path, layout)})
    assert tables.users is not None and len(tables.users) == 5
    with pytest.raises(CardError, match="unknown key"):
        read_source(replace(card, reader_params={"rating_min": 4}),
                    {"archive": make_zip(tmp_path, layout)})


def test_parse_delimited_blank_and_overlong_lines():
    lines = ["1::10::4::100\n", "\n", "2::" + "::".join(["9"] * 20) + "\n", "3::30::5::300"]
    report = ReadReport(file="ratings.dat")
    frame = parse_delimited(lines, 10, sep="::", names=("user", "item", "rating", "ts"),
                            integer=("user", "item", "ts"), numeric=("rating",),
                            report=report, strict=False)
    assert frame["user"].tolist() == [1, 3] and frame["line"].tolist() == [10, 13]
    assert frame["ts"].tolist() == [100, 300]  # the last line has no newline: still read
    assert report.lines == 4 and report.first_bad == [(13, "more than 12 fields")]


def test_card_members_must_be_in_the_archive(tmp_path):
    card = load_dataset_card("movielens-1m")  # names ml-1m members
    with pytest.raises(DataError, match=r"lacks ml-1m/ratings\.dat"):
        read_source(card, {"archive": make_zip(tmp_path, "ml-100k")})


@pytest.mark.parametrize("name", ["movielens-100k", "movielens-1m"])
def test_card_fields_build_on_movielens_tables(tmp_path, name):
    """The card's demographic and context fields are accepted by the protocol builder."""
    from ctrbench.data.build import build_samples

    card = load_dataset_card(name)
    layout = "ml-100k" if name.endswith("100k") else "ml-1m"
    built = build_samples(read_source(card, {"archive": make_zip(tmp_path, layout)}), card)
    names = [f.name for f in built.schema.group("user")]
    assert {"gender", "age", "occupation", "zip"} <= set(names)
    assert "hour" in [f.name for f in built.schema.group("context")]
    assert built.rows()["test"] == 2 * 5  # one positive + one negative per user
