"""Bad input in a `table` log (issue 12 D3, D13, D14, odd timestamps): each bad row is one
malformed line with its real line number, never a whole file rejected or a silent value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrbench.data.sources.table import TableParams, read_interactions
from ctrbench.errors import DataError

HEADER = "u,i,t\n"
GOOD = "".join(f"u{k % 3},i{k},{1_600_000_000 + 60 * k}\n" for k in range(6))  # lines 2-7


def read(tmp_path: Path, text: str | bytes, strict: bool = False, **params):
    path = tmp_path / "log.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return read_interactions(path, TableParams(user_col="u", item_col="i", time_col="t",
                                               **params), strict=strict)


@pytest.mark.parametrize("cell", ["abc", "nan", "NaN", "-"])
def test_one_bad_numeric_time_is_one_malformed_line(tmp_path, cell):
    inter, report = read(tmp_path, HEADER + GOOD + f"u1,i9,{cell}\n")
    assert len(inter) == 6 and inter["ts"].tolist()[0] == 1_600_000_000
    assert report.bad == 1 and report.first_bad == [(8, "unparseable time")]


def test_strict_names_the_real_bad_line(tmp_path):
    with pytest.raises(DataError, match="line 8: unparseable time"):
        read(tmp_path, HEADER + GOOD + "u1,i9,abc\n", strict=True)


@pytest.mark.parametrize("cell", ["1e300", "inf", "-inf", "12345678901234567890"])
def test_out_of_range_and_non_finite_times_are_malformed(tmp_path, cell):
    inter, report = read(tmp_path, HEADER + GOOD + f"u1,i9,{cell}\n")
    assert len(inter) == 6 and inter["ts"].min() > 0
    assert report.first_bad == [(8, "time out of range")]


def test_dates_beyond_pandas_range_are_read_not_a_traceback(tmp_path):
    text = HEADER + ("u1,i1,2021-03-01 10:00\nu1,i2,0001-01-01 00:00\nu1,i3,2021-13-45 10:00\n"
                     "u1,i4,2021-03-02 10:00\n")
    inter, report = read(tmp_path, text)
    assert inter["ts"].tolist() == [1_614_592_800, -62_135_596_800, 1_614_679_200]
    assert report.first_bad == [(4, "unparseable time")]


def test_extra_fields_are_malformed_and_fail_strict(tmp_path):
    text = HEADER + GOOD + "u1,i9,1600000900,extra\nu2,i10,1600000960\n"
    inter, report = read(tmp_path, text)
    assert report.first_bad == [(8, "expected 3 fields, found 4")]
    assert inter["line"].tolist()[-1] == 7  # line 9 of the file = data row 7 (0-based)
    with pytest.raises(DataError, match="line 8: expected 3 fields, found 4"):
        read(tmp_path, text, strict=True)


def test_blank_lines_are_skipped_quietly(tmp_path):
    inter, report = read(tmp_path, HEADER + "u1,i1,5\n\nu1,i2,6\n")
    assert len(inter) == 2 and report.bad == 0


def test_non_utf8_names_the_line_and_the_encoding_setting(tmp_path):
    text = (HEADER + GOOD).encode() + "u1,caf\xe9,1600000900\n".encode("latin-1")
    with pytest.raises(DataError, match="line 8: not valid utf-8") as err:
        read(tmp_path, text)
    assert 'encoding = "latin-1"' in str(err.value)
    inter, _ = read(tmp_path, text, encoding="latin-1")
    assert inter["item"].tolist()[-1] == "café"


def test_unterminated_quote_names_the_line_and_the_setting(tmp_path):
    text = HEADER + GOOD + 'u1,"i9,1600000900\nu2,i3,1600000960\n'
    with pytest.raises(DataError, match="line 8: a quoted field is never closed") as err:
        read(tmp_path, text)
    assert 'quoting = "none"' in str(err.value)
    inter, report = read(tmp_path, text, quoting="none")
    assert '"i9' in inter["item"].tolist() and report.bad == 0


def test_negative_and_future_times_are_kept(tmp_path):
    text = HEADER + "u1,i1,-86400\nu1,i2,5000000000\nu1,i3,1600000000\n"
    inter, report = read(tmp_path, text)
    assert report.bad == 0 and np.array_equal(inter["ts"], [-86400, 5_000_000_000,
                                                             1_600_000_000])


def test_missing_times_in_a_numeric_column(tmp_path):
    inter, report = read(tmp_path, HEADER + "u1,i1,5\nu1,i2,\nu1,i3,abc\nu1,i4,1e300\n")
    assert inter["ts"].tolist() == [5]
    assert report.first_bad == [(3, "missing time"), (4, "unparseable time"),
                                (5, "time out of range")]
