"""Bad input met after the readers (a fault hunt of 2026-12-01): a users table that matches no
user, a log whose every line is malformed, a file where a folder must be, an empty split, an
infinite rating. Each was a traceback or a misleading message before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.data.audit import pair_identity
from ctrbench.data.canonical import CanonicalTables
from ctrbench.errors import DataError

CARD = """description = "a shop's orders"
reader = "table"
protocol = "{protocol}"
version = 1
[[sources]]
role = "interactions"
file = "../data/orders.csv"
{users_source}
[reader_params]
user_col = "u"
item_col = "i"
time_col = "t"
[fields]
user = ["user_id"{user_fields}]
context = ["year"]
"""
USERS_SOURCE = '[[sources]]\nrole = "users"\nfile = "../data/users.csv"\n'


def shop(tmp_path: Path, monkeypatch, orders: str, *, users: str | None = None,
         protocol: str = "din") -> None:
    """A table card ``shop`` under ``tmp_path`` (and CTRBENCH_HOME there)."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "orders.csv").write_text("u,i,t\n" + orders)
    if users is not None:
        (tmp_path / "data" / "users.csv").write_text(users)
    (tmp_path / "datasets" / "shop.toml").write_text(CARD.format(
        protocol=protocol, users_source=USERS_SOURCE if users is not None else "",
        user_fields=', "seg"' if users is not None else ""))


def orders(users: int, per_user: int = 6, scale: int = 1) -> str:
    return "".join(f"c{u},p{(u * 3 + k) % 20},{(1_600_000_000 + u * 100 + k * 86_400) * scale}\n"
                   for u in range(users) for k in range(per_user))


@pytest.mark.parametrize("users", ["u,seg\n", "u,seg\nX1,a\nX2,b\n"])
def test_a_users_table_matching_no_user_is_named_not_a_traceback(tmp_path, monkeypatch, users):
    shop(tmp_path, monkeypatch, orders(30), users=users)
    result = CliRunner().invoke(main, ["prepare", "shop"])
    assert result.exit_code == 1, result.output
    assert "no user of the interactions is in the users table" in result.output
    assert "['c0', 'c1']" in result.output and "Traceback" not in result.output


def test_every_line_malformed_names_the_file_and_the_reasons(tmp_path, monkeypatch):
    shop(tmp_path, monkeypatch, orders(30, scale=1000))  # milliseconds: out of range
    result = CliRunner().invoke(main, ["prepare", "shop"])
    assert result.exit_code == 1, result.output
    assert "orders.csv: 180 lines, 180 malformed and skipped" in result.output
    assert "line 2 (time out of range)" in result.output
    assert "are the raw files empty" not in result.output


def test_a_file_where_the_prepared_folder_goes_fails_before_the_build(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "prepared").write_text("not a folder")
    monkeypatch.setenv("CTRBENCH_HOME", str(home))
    result = CliRunner().invoke(main, ["prepare", "synthetic"])
    assert result.exit_code == 1, result.output
    assert f"{home / 'prepared'} is a file, not a directory" in result.output
    assert "preparing synthetic" not in result.output  # refused before any reading
    result = CliRunner().invoke(main, ["generate", "--out", str(home / "prepared" / "sub")])
    assert result.exit_code == 1, result.output
    assert "is a file, not a directory" in result.output


def test_an_empty_split_is_warned_at_prepare_and_audited(tmp_path, monkeypatch):
    shop(tmp_path, monkeypatch, orders(4), protocol="dien")
    result = CliRunner().invoke(main, ["prepare", "shop"])
    assert result.exit_code == 0, result.output
    assert "warning: shop: the valid split is empty" in result.output
    result = CliRunner().invoke(main, ["stats", "shop", "--audit"])
    assert result.exit_code == 0, result.output
    assert "audit: no leak found" in result.output


def test_pair_identity_of_zero_rows():
    cols = {"label": np.zeros(0, np.float32), "hist_item_id": np.zeros((0, 5), np.int64)}
    row = pair_identity("valid", cols, reps=2)
    assert row.rows == 0 and row.passed


@pytest.mark.parametrize("rating", [np.inf, 1e39])
def test_an_infinite_rating_never_reaches_the_features(rating):
    interactions = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "ts": [1, 2],
                                 "rating": [4.0, rating], "line": [0, 1]})
    items = pd.DataFrame({"item": ["x", "y"], "category": ["c", "c"]})
    with pytest.raises(DataError, match="infinite ratings"):
        CanonicalTables(interactions, items).validate()
