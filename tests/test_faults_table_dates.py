"""YYYYMMDD integers in a table log: a number that is no such date inside the first chunk (the
rows the reading is decided on) is refused as one after it is, never a switch of the whole
column to unix seconds. Each test failed before the fix unless it says it guards old behaviour."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from test_faults_build import shop
from test_faults_readers3 import days, table

from ctrbench import paths
from ctrbench.cli import main
from ctrbench.data.sources.table import TableParams, read_interactions
from ctrbench.errors import DataError


def _rows(times: list[object]) -> str:
    """CSV rows (no header) of two users taking turns, one item per row."""
    return "".join(f"c{n % 2},p{n},{t}\n" for n, t in enumerate(times))


DATES = [20230101 + k for k in range(9)]  # 2023-01-01 .. 2023-01-09


@pytest.mark.parametrize(("odd", "at"), [(20231345, 4), (17, 4), (17, 0), (1400000000, 8)])
def test_a_number_no_yyyymmdd_date_in_the_first_chunk_is_refused(tmp_path, odd, at):
    """Before: every time read as unix seconds (2023 dates became August 1970), exit 0."""
    times = [*DATES[:at], odd, *DATES[at:]]
    with pytest.raises(DataError, match=rf"log\.csv: line {at + 2}: the time {odd} \(column "
                                        r"'t'\) is not a YYYYMMDD date") as caught:
        table(tmp_path, "u,i,t\n" + _rows(times))
    assert 'time_unit = "s"' in caught.value.hint


def test_prepare_refuses_it_with_exit_1_and_writes_no_store(tmp_path, monkeypatch):
    log = _rows([*DATES[:3], 20231345, *DATES[3:]])
    shop(tmp_path, monkeypatch, log)
    result = CliRunner().invoke(main, ["prepare", "shop"])
    assert result.exit_code == 1, result.output
    assert "orders.csv: line 5:" in result.output and "20231345" in result.output
    assert "Traceback" not in result.output
    prepared = paths.prepared_root()
    assert not prepared.is_dir() or not [p for p in prepared.iterdir() if "shop" in p.name]


def test_a_parquet_integer_column_is_refused_at_its_row(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"u": ["a", "b", "a", "b"], "i": ["x", "y", "z", "x"],
                  "t": [20230101, 20230102, 20231345, 20230104]}).to_parquet(path)
    with pytest.raises(DataError, match=r"log\.parquet: line 3: the time 20231345"):
        read_interactions(path, TableParams("u", "i", "t"), strict=False)


def test_dates_with_a_stated_format_or_unit_are_not_refused(tmp_path):
    """Guards old behaviour: the card's word decides, a bad number is then one bad line or a
    second."""
    log = "u,i,t\n" + _rows([*DATES[:3], 20231345, *DATES[3:]])
    inter, report = table(tmp_path, log, time_format="%Y%m%d")
    assert report.first_bad == [(5, "unparseable time")] and days(inter)[0] == "2023-01-01"
    inter, report = table(tmp_path, log, time_unit="s")
    assert report.bad == 0 and inter["ts"].tolist()[3] == 20231345


@pytest.mark.parametrize("times", [[1_400_000_000 + 86_400 * k for k in range(5)],
                                   [1_700_000_000 + 3_600 * k for k in range(5)],
                                   [1_400_000_000, 1_700_000_000, 1_450_000_000]])
def test_unix_seconds_still_read_as_seconds(tmp_path, caplog, times):
    """Guards old behaviour: seconds around 1.4e9 and 1.7e9 stay seconds, without a word."""
    inter, report = table(tmp_path, "u,i,t\n" + _rows(times))
    assert report.bad == 0 and inter["ts"].tolist() == times
    assert not [r for r in caplog.records if "YYYYMMDD" in r.getMessage()]
