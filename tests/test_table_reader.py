"""The `table` reader: a user's own CSV / parquet log declared by a card."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctrbench.cards import dataset_card_from_dict, load_dataset_card
from ctrbench.data.download import fetch_report
from ctrbench.data.sources import read_source
from ctrbench.errors import CardError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "table"
EXAMPLE = Path(__file__).parents[1] / "examples" / "own-data"
PARAMS = {"user_col": "customer", "item_col": "product", "time_col": "when",
          "rating_col": "stars", "category_col": "genre"}


def card(files: dict[str, Path], **params) -> object:
    return dataset_card_from_dict({
        "name": "mine", "reader": "table",
        "sources": [{"role": role, "file": str(path)} for role, path in files.items()],
        "reader_params": {**PARAMS, **params},
    })


def read(files: dict[str, Path], strict: bool = False, **params):
    return read_source(card(files, **params), files, strict=strict)


def unix(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


FILES = {"interactions": FIXTURES / "interactions.csv", "items": FIXTURES / "items.csv",
         "users": FIXTURES / "users.csv"}


def test_csv_tables():
    tables = read(FILES)
    inter = tables.interactions
    assert len(inter) == 12  # c1 bought p1 twice: the repeat is dropped
    assert tables.cleaning["repeated_user_item_dropped"] == 1
    assert inter["ts"].dtype == np.int64 and inter["rating"].dtype == np.float32
    first = inter.iloc[0]
    assert (first["user"], first["item"], first["ts"], first["rating"], first["line"]) == (
        "c1", "p1", unix("2021-03-01T09:00:00"), 5.0, 0)
    no_rating = inter[(inter["user"] == "c2") & (inter["item"] == "p5")].iloc[0]
    assert np.isnan(no_rating["rating"]) and no_rating["line"] == 6  # empty rating is allowed

    report = tables.reports[0]
    assert (report.lines, report.bad) == (16, 3)
    assert report.first_bad == [(7, "unparseable time"), (10, "missing item"),
                                (12, "rating is not a number")]

    categories = dict(zip(tables.items["item"], tables.items["category"]))
    assert categories == {"p1": "books", "p2": "music", "p3": "books", "p5": "games",
                          "p6": "<unknown>", "p4": "<unknown>"}
    assert tables.items.set_index("item").loc["p2", "brand"] == "<missing>"
    assert tables.reports[1].first_bad == [(5, "missing product")]

    users = tables.users.set_index("user")
    assert sorted(users.index) == ["c1", "c2", "c3"]  # c9 never interacts; c4 has no row
    assert users.loc["c2"].tolist() == ["silver", "<missing>"]
    assert list(tables.users.columns) == ["user", "segment", "region"]


def test_parquet_matches_csv(tmp_path):
    pytest.importorskip("pyarrow")  # the `parquet` extra
    csv = read({"interactions": FILES["interactions"]}, category_col="").interactions
    frame = pd.DataFrame({"customer": csv["user"], "product": csv["item"],
                          "when": pd.to_datetime(csv["ts"], unit="s"), "stars": csv["rating"]})
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    pq = read({"interactions": path}, category_col="").interactions
    pd.testing.assert_frame_equal(pq.drop(columns="line"), csv.drop(columns="line"))
    assert pq["line"].tolist() == list(range(len(csv)))
    # the same log with unix seconds as plain integers
    frame["when"] = csv["ts"].to_numpy()
    frame.to_parquet(path)
    again = read({"interactions": path}, category_col="").interactions
    assert again["ts"].tolist() == csv["ts"].tolist()


def test_unix_milliseconds_in_a_tsv_and_categories_from_the_log(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("customer\tproduct\twhen\tgenre\n"
                    "u1\ti1\t1614589200123\tbooks\n"
                    "u1\ti2\t1614675600999\t\n"
                    "u2\ti2\t1614762000000\tmusic\n")
    tables = read({"interactions": path}, time_unit="ms", rating_col="")
    assert tables.interactions["ts"].tolist() == [1614589200, 1614675600, 1614762000]
    assert tables.interactions["rating"].isna().all()
    categories = dict(zip(tables.items["item"], tables.items["category"]))
    assert categories == {"i1": "books", "i2": "music"}  # the first non-empty category
    assert tables.users is None


def test_missing_column_is_named():
    with pytest.raises(CardError) as err:
        read(FILES, time_col="timestamp")
    assert "'timestamp' (reader_params.time_col)" in str(err.value)
    assert "customer" in str(err.value)  # the columns that are there
    with pytest.raises(CardError, match=r"items table items\.csv: .*'kind' \(reader_params"):
        read(FILES, category_col="kind")
    with pytest.raises(CardError) as err:  # a wrong delimiter: the header is one column
        read(FILES, sep=";")
    assert "columns found: customer,product,when,stars,channel" in str(err.value)


def test_missing_reader_param_and_unknown_key():
    with pytest.raises(CardError, match="needs time_col"):
        read_source(dataset_card_from_dict({"name": "x", "reader": "table", "reader_params": {
            "user_col": "customer", "item_col": "product"}}), FILES)
    with pytest.raises(CardError, match="unknown key"):
        read(FILES, time_col="when", timezone="UTC")


def test_strict_raises_on_the_first_bad_row():
    with pytest.raises(DataError, match=r"interactions\.csv: line 7: unparseable time"):
        read(FILES, strict=True)


def test_worked_example_card_reads_in_place(monkeypatch, tmp_path):
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(EXAMPLE))
    example = load_dataset_card("my-shop")
    fetched = fetch_report(example)
    assert {f.status for f in fetched} == {"local"}
    tables = read_source(example, {f.role: f.path for f in fetched})
    assert tables.interactions["user"].nunique() == example.expected["users"]
    assert tables.interactions["item"].nunique() == example.expected["items"]
    assert len(tables.interactions) == example.expected["interactions"]
    assert tables.items["category"].nunique() == example.expected["categories"]
    assert sum(r.bad for r in tables.reports) == 0


def test_worked_example_prepares_and_follows_edits(monkeypatch, tmp_path):
    """The example end to end through `ctrbench prepare`; an edited log gives a new store."""
    import shutil

    from click.testing import CliRunner

    from ctrbench.cli import main

    root = tmp_path / "own-data"
    shutil.copytree(EXAMPLE, root)
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(root))
    first = CliRunner().invoke(main, ["prepare", "my-shop"])
    assert first.exit_code == 0, first.output
    orders = root / "data" / "orders.csv"
    orders.write_text(orders.read_text() + "cust001,sku001,2023-06-01 10:00:00,5\n")
    second = CliRunner().invoke(main, ["prepare", "my-shop"])
    assert second.exit_code == 0, second.output
    stores = sorted(p.name for p in (tmp_path / "home" / "prepared").iterdir())
    assert len([s for s in stores if s.startswith("my-shop-")]) == 2
