"""Leftovers of ``prepare`` (tenth session): the time-column checks of the table reader judged
the first 500k-row chunk only, the raw files' read summary was said twice, and
``--no-strict-hash`` read a card's unpinned ``.gz`` files twice.

The chunk size is made tiny here (``CHUNK_ROWS``), so a few rows stand for 500k."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_faults_build import shop
from test_faults_readers3 import days, table

from ctrbench import paths
from ctrbench.cli import main
from ctrbench.data.sources import table_chunks
from ctrbench.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "amazon"


@pytest.fixture
def chunk_of_three(monkeypatch):
    monkeypatch.setattr(table_chunks, "CHUNK_ROWS", 3)


def _log(*times: str) -> str:
    return "u,i,t\n" + "".join(f"u{n % 2},i{n},{t}\n" for n, t in enumerate(times))


def _alike(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "alike" in r.getMessage()]


# --------------------------------------------------------------------------- day/month order
def test_a_day_first_date_after_the_first_chunk_decides_the_whole_file(tmp_path, caplog,
                                                                        chunk_of_three):
    """Before: the first chunk (every day <= 12) was read month first, "13/01/2023" later
    was skipped as unparseable; now the first date that reads one way only decides."""
    inter, report = table(tmp_path, _log("01/02/2023", "03/04/2023", "05/06/2023",
                                         "07/08/2023", "13/01/2023", "09/10/2023"))
    assert report.bad == 0, report.summary()
    assert days(inter) == ["2023-02-01", "2023-04-03", "2023-06-05", "2023-08-07",
                           "2023-01-13", "2023-10-09"]
    assert not _alike(caplog)


def test_a_month_first_date_after_the_first_chunk_settles_it_without_a_warning(
        tmp_path, caplog, chunk_of_three):
    inter, report = table(tmp_path, _log("01/02/2023", "03/04/2023", "05/06/2023",
                                         "01/13/2023"))
    assert report.bad == 0 and days(inter)[0] == "2023-01-02" and days(inter)[3] == "2023-01-13"
    assert not _alike(caplog)


def test_dates_read_both_ways_in_every_chunk_are_warned_once(tmp_path, caplog, chunk_of_three):
    inter, report = table(tmp_path, _log(*[f"{m:02d}/{d:02d}/2023" for m in range(1, 5)
                                           for d in (1, 2)]))
    assert report.bad == 0 and days(inter)[0] == "2023-01-01" and days(inter)[1] == "2023-01-02"
    said = _alike(caplog)
    assert len(said) == 1 and "log.csv" in said[0] and 'time_format = "%d/%m/%Y"' in said[0]


def test_a_day_first_date_in_the_first_chunk_past_the_sample_decides(tmp_path, caplog,
                                                                      monkeypatch):
    """The order was guessed from the first distinct dates of the first chunk (DATE_SAMPLE):
    a date after them that reads day first only was skipped as unparseable."""
    from ctrbench.data.sources import table_times

    monkeypatch.setattr(table_times, "DATE_SAMPLE", 2)
    inter, report = table(tmp_path, _log("01/02/2023", "03/04/2023", "13/01/2023"))
    assert report.bad == 0 and days(inter) == ["2023-02-01", "2023-04-03", "2023-01-13"]
    assert not _alike(caplog)


# --------------------------------------------------------------------------- YYYYMMDD
def _yyyymmdd_orders(users: int = 12, per_user: int = 6) -> str:
    return "".join(f"c{u},p{(u * 3 + k) % 20},202001{1 + u + k:02d}\n"
                   for u in range(users) for k in range(per_user))


def test_a_number_no_yyyymmdd_date_after_the_first_chunk_is_refused(tmp_path, monkeypatch):
    """Before: the first chunk's YYYYMMDD integers made every time a date, and 1400000000 (unix
    seconds) later in the file was skipped as unparseable, exit 0. Now refused, naming the
    file, the line and the value; no store written."""
    monkeypatch.setattr(table_chunks, "CHUNK_ROWS", 4)
    log = _yyyymmdd_orders() + "c0,p1,1400000000\n"
    shop(tmp_path, monkeypatch, log)
    result = CliRunner().invoke(main, ["prepare", "shop"])
    assert result.exit_code == 1, result.output
    line = len(log.splitlines()) + 1  # the header is line 1
    assert f"orders.csv: line {line}:" in result.output and "1400000000" in result.output
    assert 'time_unit = "s"' in result.output and "Traceback" not in result.output
    prepared = paths.prepared_root()
    assert not prepared.is_dir() or not [p for p in prepared.iterdir() if "shop" in p.name]


def test_a_stated_yyyymmdd_format_skips_a_later_number_as_unparseable(tmp_path,
                                                                    chunk_of_three):
    log = "u,i,t\nu1,i1,20140523\nu1,i2,20140601\nu2,i1,20141231\nu2,i3,1400000000\n"
    _, report = table(tmp_path, log, time_format="%Y%m%d")
    assert report.bad == 1 and report.first_bad == [(5, "unparseable time")]
    with pytest.raises(DataError, match=r"log\.csv: line 5: .*1400000000"):
        table(tmp_path, log)


def test_yyyymmdd_dates_among_unix_seconds_are_refused_naming_a_line_of_each(tmp_path,
                                                                             chunk_of_three):
    """Before: with half or fewer of the first chunk's numbers YYYYMMDD dates, the column was
    read as seconds and its dates silently became August 1970, exit 0. Now refused, in any
    chunk, naming a line of each format; a declared unit reads as before."""
    log = _log("1400000000", "1400000100", "1400000200", "1400000300", "20140523",
               "1400000400")
    with pytest.raises(DataError) as refused:
        table(tmp_path, log)
    message = str(refused.value)
    assert "line 6 holds 20140523" in message and "1970-08-22" in message
    assert "line 2 holds 1400000000" in message
    assert 'time_unit = "s"' in refused.value.hint
    inter, report = table(tmp_path, log, time_unit="s")  # declared: every number is seconds
    assert report.bad == 0 and days(inter)[4] == "1970-08-22"


def test_a_relative_clock_of_seconds_with_date_like_values_is_read_as_before(tmp_path,
                                                                             chunk_of_three):
    """Seconds since a log began (all below 10^9) may look like YYYYMMDD dates: not refused."""
    log = _log("0", "86400", "19000101", "20140523", "20140601", "30000000")
    inter, report = table(tmp_path, log)
    assert report.bad == 0 and days(inter)[0] == "1970-01-01"


# --------------------------------------------------------------------------- read summary
def test_prepare_says_each_raw_file_read_summary_once(home, tmp_path):
    """Before: said while building (progress output), then in ``prepare``'s summary."""
    built = CliRunner().invoke(main, ["prepare", "books", "--from", str(_books_mirror(tmp_path)),
                                      "--no-strict-hash"])
    assert built.exit_code == 0, built.output
    assert built.output.count("reviews_Books_5.json.gz (amazon 2014): 59 lines") == 1, \
        built.output


def test_a_build_for_run_says_each_read_summary_once(tmp_path, monkeypatch, capsys):
    """``run``, ``tune`` and ``stats`` build through ``prepare_dataset``: the summary is said
    there once (and not again for a store reused)."""
    from test_faults_build import orders

    from ctrbench.data.prepare import prepare_dataset

    shop(tmp_path, monkeypatch, orders(12))
    prepare_dataset("shop")
    assert capsys.readouterr().err.count("orders.csv: 72 lines, none malformed") == 1
    prepare_dataset("shop")
    assert "none malformed" not in capsys.readouterr().err


# --------------------------------------------------------------------------- one read
def _books_mirror(tmp_path: Path) -> Path:
    """The ``books`` card's two files (subsets: they fail its md5 and line count)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    shutil.copy(FIX / "reviews.json.gz", mirror / "reviews_Books_5.json.gz")
    shutil.copy(FIX / "meta.json.gz", mirror / "meta_Books.json.gz")
    return mirror


@pytest.fixture
def reads(monkeypatch):
    """Full reads of the raw files by name: copies, hashes and line counts."""
    from ctrbench.data import checksum_ledger, download

    seen: list[str] = []

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(path, *args, **kwargs):
            seen.append(Path(path).name.split(".tmp-")[0].lstrip("."))
            return real(path, *args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counting(download, "_copy_from_mirror")
    counting(download, "count_lines")
    counting(checksum_ledger, "hash_file")
    return seen


def test_prepare_no_strict_hash_reads_each_raw_file_once(home, tmp_path, reads):
    """Before, ``--no-strict-hash`` was a second fetch ahead of ``prepare``'s own: the meta file
    (no checksum pinned) was copied, read through, hashed and read through again."""
    from ctrbench.data.prepare import prepare

    prepare("books", from_dir=_books_mirror(tmp_path), strict_hash=False)
    assert sorted(reads) == ["meta_Books.json.gz", "meta_Books.json.gz",  # copy, line count
                             "reviews_Books_5.json.gz"], reads


def test_cli_prepare_no_strict_hash_reads_each_raw_file_once(home, tmp_path, reads):
    result = CliRunner().invoke(main, ["prepare", "books", "--from", str(_books_mirror(tmp_path)),
                                       "--no-strict-hash"])
    assert result.exit_code == 0, result.output
    assert sorted(reads) == ["meta_Books.json.gz", "meta_Books.json.gz",
                             "reviews_Books_5.json.gz"], reads


def test_an_accepted_file_is_not_read_through_again_by_later_prepares(home, tmp_path, reads):
    """A ``.gz`` kept under ``--no-strict-hash`` after its line count differed never had its
    count recorded, so every later ``prepare`` (even one reusing the store) read it through
    again; an accepted file now passes as accepted without a read. (With ``--from`` the
    mirror's copy is hashed each time by design: a changed mirror is never ignored.)"""
    from ctrbench.data.prepare import prepare

    prepare("books", from_dir=_books_mirror(tmp_path), strict_hash=False)
    reads.clear()
    assert prepare("books", strict_hash=False).reused
    assert reads == [], reads
