"""Faults of `ctrbench plan`, `stats`, the protocols and table logs found by a fault hunt
(tested from the CLI where the fault shows there). Each failed before its fix."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ctrbench.cli import main
from ctrbench.data.sources import table_chunks
from ctrbench.data.sources.table import TableParams, read_interactions

CARD = """description = "a shop's orders"
reader = "table"
protocol = "{protocol}"
version = 1
[[sources]]
role = "interactions"
file = "../data/{log}"
{extra_sources}
[reader_params]
user_col = "u"
item_col = "i"
time_col = "t"
{reader_params}
[protocol_params]
{protocol_params}
"""
ITEMS_SOURCE = '[[sources]]\nrole = "items"\nfile = "../data/items.csv"\n'


def shop(tmp_path: Path, monkeypatch, log: str = "orders.csv", *, protocol: str = "din",
         items: bool = False, reader_params: str = "", protocol_params: str = "") -> Path:
    """A table card ``shop`` under ``tmp_path`` (CTRBENCH_HOME there too); the data folder."""
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "datasets" / "shop.toml").write_text(CARD.format(
        protocol=protocol, log=log, extra_sources=ITEMS_SOURCE if items else "",
        reader_params=reader_params, protocol_params=protocol_params))
    return tmp_path / "data"


def orders(users: int = 30, per_user: int = 6) -> str:
    return "u,i,t\n" + "".join(f"c{u},p{(u * 3 + k) % 20},{1_600_000_000 + u * 100 + k * 86_400}\n"
                               for u in range(users) for k in range(per_user))


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


# --------------------------------------------------------------------------- table logs
def test_day_first_dates_are_read_day_first_not_half_dropped(tmp_path):
    """dd/mm/yyyy dates whose first value is ambiguous (01/02/2023): pandas guessed month
    first from that one value, so every day > 12 was "unparseable" (here 4 of 6 rows lost)
    and the rest were silently read with day and month swapped."""
    text = "u,i,t\n" + "".join(f"u1,i{k},{d}\n" for k, d in enumerate(
        ["01/02/2023", "13/02/2023", "20/02/2023", "02/03/2023", "25/03/2023", "30/04/2023"]))
    (tmp_path / "log.csv").write_text(text)
    inter, report = read_interactions(tmp_path / "log.csv", TableParams("u", "i", "t"),
                                      strict=False)
    assert report.bad == 0
    days = pd.to_datetime(inter["ts"], unit="s").dt.strftime("%Y-%m-%d").tolist()
    assert days == ["2023-02-01", "2023-02-13", "2023-02-20", "2023-03-02", "2023-03-25",
                    "2023-04-30"]


def test_one_date_format_for_every_chunk(tmp_path, monkeypatch):
    """The date format was guessed per chunk from its first value: the same "05/06/2023" was
    5 June in one chunk and 6 May in the next."""
    monkeypatch.setattr(table_chunks, "CHUNK_ROWS", 2)
    text = "u,i,t\nu1,i1,13/01/2023\nu1,i2,05/06/2023\nu1,i3,01/02/2023\nu1,i4,05/06/2023\n"
    (tmp_path / "log.csv").write_text(text)
    inter, report = read_interactions(tmp_path / "log.csv", TableParams("u", "i", "t"),
                                      strict=False)
    assert report.bad == 0
    days = pd.to_datetime(inter["ts"], unit="s").dt.strftime("%Y-%m-%d").tolist()
    assert days == ["2023-01-13", "2023-06-05", "2023-02-01", "2023-06-05"]


def test_iso_dates_with_and_without_time_or_offset_are_all_read(tmp_path):
    """ISO 8601 times with offsets, and one day without a time: that day was unparseable."""
    text = ("u,i,t\nu1,i1,2023-01-01T00:00:00+00:00\nu1,i2,2023-01-02T03:00:00+02:00\n"
            "u1,i3,2023-01-09\nu1,i4,2023-01-10T00:00:00Z\n")
    (tmp_path / "log.csv").write_text(text)
    inter, report = read_interactions(tmp_path / "log.csv", TableParams("u", "i", "t"),
                                      strict=False)
    assert report.bad == 0
    assert inter["ts"].tolist() == [1_672_531_200, 1_672_621_200, 1_673_222_400, 1_673_308_800]


def test_a_category_col_missing_from_the_log_is_named(tmp_path, monkeypatch):
    """No items table and a category_col that is not a column of the log (a typo): before,
    "no items table and no category column", as if none had been named; then a warning and
    every category <unknown>; now an error naming the column, the file and the columns found."""
    data = shop(tmp_path, monkeypatch, reader_params='category_col = "categroy"')
    (data / "orders.csv").write_text(orders().replace("u,i,t", "u,i,t,category"))
    result = cli("prepare", "shop")
    assert result.exit_code == 1, result.output
    assert "missing column 'categroy' (reader_params.category_col)" in result.output
    assert "columns found: u, i, t, category" in result.output
    assert "no category column" not in result.output


def test_parquet_integer_ids_stored_as_floats_match_the_items_table(tmp_path, monkeypatch):
    """A parquet int column with one null is read back as float64: its ids became "5.0",
    matched no "5" of the items table, and every category was silently <unknown>."""
    data = shop(tmp_path, monkeypatch, "orders.parquet", items=True,
                reader_params='category_col = "c"')
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"u": rng.integers(0, 30, 300).astype(float),
                          "i": rng.integers(0, 60, 300).astype(float),
                          "t": rng.integers(1_600_000_000, 1_700_000_000, 300)})
    frame.loc[5, "i"] = np.nan
    frame.to_parquet(data / "orders.parquet")
    (data / "items.csv").write_text("i,c\n" + "".join(f"{k},c{k % 5}\n" for k in range(60)))
    result = cli("prepare", "shop")
    assert result.exit_code == 0, result.output
    assert "categories 5," in result.output


def test_an_items_table_matching_no_item_is_an_error(tmp_path, monkeypatch):
    """An items table whose ids are all of another form than the log's: before, every category
    silently <unknown> (the users table has had this check)."""
    data = shop(tmp_path, monkeypatch, items=True, reader_params='category_col = "c"')
    (data / "orders.csv").write_text(orders())
    (data / "items.csv").write_text("i,c\n" + "".join(f"SKU-{k},c{k % 5}\n" for k in range(20)))
    result = cli("prepare", "shop")
    assert result.exit_code == 1, result.output
    assert "no item of the interactions is in the items table" in result.output
    assert "['SKU-0', 'SKU-1']" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- protocol params
def test_a_nan_split_is_a_card_error_not_a_traceback(tmp_path, monkeypatch):
    data = shop(tmp_path, monkeypatch, protocol="dien",
                protocol_params="split = [nan, 0.5, 0.5]")
    (data / "orders.csv").write_text(orders())
    result = cli("stats", "shop")
    assert result.exit_code == 1, result.output
    assert "split" in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, ValueError)


def test_a_negative_protocol_seed_is_a_card_error_not_a_traceback(tmp_path, monkeypatch):
    data = shop(tmp_path, monkeypatch, protocol_params="seed = -1")
    (data / "orders.csv").write_text(orders())
    result = cli("prepare", "shop")
    assert result.exit_code == 1, result.output
    assert "seed" in result.output and not isinstance(result.exception, ValueError)


# --------------------------------------------------------------------------- plan
@pytest.fixture(scope="module")
def synthetic_home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")  # prepared once for the plan tests


@pytest.fixture
def planned(tmp_path, monkeypatch, synthetic_home):
    monkeypatch.setenv("CTRBENCH_HOME", str(synthetic_home))
    monkeypatch.delenv("CTRBENCH_CARDS", raising=False)
    monkeypatch.chdir(tmp_path)

    def plan(*args: str):
        return CliRunner().invoke(main, ["plan", "-m", "lr", "-d", "synthetic", "--seeds", "1",
                                         *args])
    return plan


def test_plan_refuses_a_device_run_would_refuse(planned):
    """`plan --device foo` printed commands that all fail (`run` refuses the device)."""
    result = planned("--device", "foo", "--results", "r")
    assert result.exit_code == 2, result.output
    assert "ctrbench run" not in result.output and "--device" in result.output
    assert planned("--device", "cuda:3", "--results", "r").exit_code == 0  # another host's


def test_plan_prints_one_line_per_run_whatever_the_values(planned, tmp_path):
    """A newline in --results made one command span two lines (`sed -n Np | bash` then ran
    half a command, and the other half as another one)."""
    results = tmp_path / "res\nults $HOME 'q' é"
    result = planned("--results", str(results))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("ctrbench run ")
    echoed = subprocess.run(["bash", "-c", "printf '%s\\0' " + lines[0][len("ctrbench run "):]],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    assert echoed[echoed.index("--results") + 1] == str(results.resolve())
    plain = planned("--results", str(tmp_path / "r s"))
    assert shlex.split(plain.stdout.splitlines()[0])[9] == str((tmp_path / "r s").resolve())


@pytest.mark.parametrize("cards", ["own-data", ""])
def test_plan_commands_find_cards_found_through_the_working_directory(tmp_path, monkeypatch,
                                                                      cards):
    """`export CTRBENCH_CARDS=examples/own-data` (the worked example's relative root), or a
    card in ./datasets: the commands found the card only from the directory `plan` ran in;
    a job started elsewhere stopped with "unknown dataset". Built-in cards get no prefix."""
    import shutil

    example = Path(__file__).resolve().parents[1] / "examples" / "own-data"
    shutil.copytree(example, tmp_path / "own-data")
    monkeypatch.chdir(tmp_path if cards else tmp_path / "own-data")
    monkeypatch.setenv("CTRBENCH_CARDS", cards)
    monkeypatch.setenv("CTRBENCH_HOME", "home" if cards else str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["plan", "-m", "lr", "-d", "my-shop", "--seeds", "1",
                                       "--results", "r"])
    assert result.exit_code == 0, result.output
    line = result.stdout.splitlines()[0]
    shown = subprocess.run(
        ["bash", "-c", 'ctrbench() { printf "%s\\n" "$CTRBENCH_CARDS" "$CTRBENCH_HOME"; }; '
         + line], capture_output=True, text=True, cwd="/", check=True).stdout.splitlines()
    assert shown == [str(tmp_path.resolve() / "own-data"), str(tmp_path.resolve() / "home")]
    words = shlex.split(line)
    assert line.split(" ctrbench run ")[1] == shlex.join(words[words.index("ctrbench") + 2:])


@pytest.mark.parametrize("sep", [";", "|", "\t"])
def test_a_log_with_another_delimiter_gets_a_sep_hint(tmp_path, monkeypatch, sep):
    """A semicolon-separated log: "missing column(s) 'u', 'i', 't'", columns found "u;i;t",
    without a word about `sep`."""
    data = shop(tmp_path, monkeypatch)
    (data / "orders.csv").write_text(orders().replace(",", sep))
    result = cli("prepare", "shop")
    assert result.exit_code == 1, result.output
    assert f"set [reader_params] sep = {json.dumps(sep)}" in result.output  # "\t" for a tab


@pytest.mark.parametrize("params,says", [
    ("max_len = 100000000", "max_len must be in 1..1,000"),
    ("neg_per_pos = 1000000", "neg_per_pos must be in 1..100"),
])
def test_protocol_params_beyond_their_bounds_are_card_errors(tmp_path, monkeypatch, params,
                                                             says):
    """``max_len = 10^8`` on a 90-row log kept allocating memory (killed after 60 s)."""
    data = shop(tmp_path, monkeypatch, protocol_params=params)
    (data / "orders.csv").write_text(orders())
    result = cli("prepare", "shop")
    assert result.exit_code == 1 and says in result.output, result.output


def test_a_split_that_leaves_no_training_user_says_so(tmp_path, monkeypatch):
    """``split = [1e-300, 1, 0]`` said "too few events per user"; the split was the cause."""
    data = shop(tmp_path, monkeypatch, protocol="dien", protocol_params="split = [1e-300, 1, 0]")
    (data / "orders.csv").write_text(orders())
    result = cli("prepare", "shop")
    assert result.exit_code == 1 and "leaves no training user" in result.output, result.output
