"""Bad input the raw readers used to accept, garble or crash on (issue 12 faults 2-14): each is
a malformed line with its number and reason, or one message naming the file, never a traceback,
a click "Aborted!" or a value that poisons the features."""

from __future__ import annotations

import bz2
import errno
import functools
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ctrbench.data.sources.amazon import read_amazon
from ctrbench.data.sources.amazon_meta import meta_category, parse_meta_line
from ctrbench.data.sources.movielens import read_movielens
from ctrbench.data.sources.table import TableParams, read_interactions, table_columns
from ctrbench.errors import DataError

BOM = b"\xef\xbb\xbf"
T0 = 1_400_000_000


# --------------------------------------------------------------------------- helpers
def review(fmt: str, k: int, rating: str = "4.0") -> str:
    """One review line of release ``fmt`` with a raw JSON ``rating`` token."""
    if fmt == "2023":
        return (f'{{"user_id": "U{k}", "parent_asin": "I{k}", "timestamp": {(T0 + k) * 1000}, '
                f'"rating": {rating}}}')
    extra = ', "verified": true' if fmt == "2018" else ""
    return (f'{{"reviewerID": "U{k}", "asin": "I{k}", "unixReviewTime": {T0 + k}, '
            f'"overall": {rating}{extra}}}')


def meta(fmt: str, k: int) -> str:
    if fmt == "2014":
        return f"{{'asin': 'I{k}', 'title': 'T', 'categories': [['Music', 'C{k}']]}}"
    if fmt == "2018":
        return json.dumps({"asin": f"I{k}", "category": ["M", f"C{k}"], "main_cat": "Books"})
    return json.dumps({"parent_asin": f"I{k}", "categories": ["M", f"C{k}"],
                       "main_category": "Books"})


def write_gz(path: Path, lines: list[str], prefix: bytes = b"") -> Path:
    path.write_bytes(gzip.compress(prefix + "".join(f"{ln}\n" for ln in lines).encode()))
    return path


def ml1m(tmp_path: Path, ratings: str, users: str | None = None) -> Path:
    """An extracted ml-1m directory."""
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_text(ratings)
    (root / "movies.dat").write_text("".join(f"{i}::Movie {i} (1995)::Comedy\n"
                                             for i in range(1, 6)))
    (root / "users.dat").write_text("".join(f"{u}::M::25::4::12345\n" for u in range(1, 4))
                                    if users is None else users)
    return root


GOOD_ML = "".join(f"{u}::{i}::3::{978_300_000 + 100 * i}\n" for u in (1, 2) for i in (1, 2, 3))


def table(tmp_path: Path, text: str, **params):
    path = tmp_path / "log.csv"
    path.write_text(text)
    return read_interactions(path, TableParams(user_col="u", item_col="i", time_col="t",
                                               **params), strict=False)


# --------------------------------------------------------------------------- 2: ratings
@pytest.mark.parametrize("fmt", ["2014", "2018", "2023"])
@pytest.mark.parametrize("rating", ["1e39", "-1e39", "Infinity", "-Infinity", "NaN", '"inf"'])
def test_amazon_non_finite_rating_is_malformed(tmp_path, fmt, rating):
    lines = [review(fmt, 0), review(fmt, 1, rating), review(fmt, 2)]
    tables = read_amazon(write_gz(tmp_path / "r.json.gz", lines), None,
                         category_rule="last_of_last", strict=False)
    assert tables.reports[0].first_bad == [(2, "rating not finite")]
    assert tables.interactions["item"].tolist() == ["I0", "I2"]
    assert np.isfinite(tables.interactions["rating"]).all()
    with pytest.raises(DataError, match="line 2: rating not finite"):
        read_amazon(tmp_path / "r.json.gz", None, category_rule="last_of_last", strict=True)


def test_amazon_missing_rating_is_still_kept(tmp_path):
    line = json.dumps({"reviewerID": "U0", "asin": "I0", "unixReviewTime": T0})
    tables = read_amazon(write_gz(tmp_path / "r.json.gz", [line]), None,
                         category_rule="last_of_last", strict=True)
    assert len(tables.interactions) == 1


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "1e39", "-1e39"])
def test_table_non_finite_rating_is_malformed(tmp_path, cell):
    inter, report = table(tmp_path, f"u,i,t,r\nu1,i1,{T0},4\nu1,i2,{T0},{cell}\nu1,i3,{T0},5\n",
                          rating_col="r")
    assert report.first_bad == [(3, "rating not finite")]
    assert inter["rating"].tolist() == [4.0, 5.0]


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e39"])
def test_movielens_non_finite_rating_is_malformed(tmp_path, cell):
    tables = read_movielens(ml1m(tmp_path, GOOD_ML + f"3::1::{cell}::978300000\n"))
    report = next(r for r in tables.reports if r.file == "ratings.dat")
    assert report.first_bad == [(7, "rating not finite")]
    assert np.isfinite(tables.interactions["rating"]).all() and len(tables.interactions) == 6


# --------------------------------------------------------------------------- 3: MovieLens times
@pytest.mark.parametrize("cell", ["1e300", "99999999999999999999", "-1e20", "inf",
                                  "253402300800"])
def test_movielens_time_out_of_range_is_malformed(tmp_path, cell):
    tables = read_movielens(ml1m(tmp_path, GOOD_ML + f"3::1::4::{cell}\n3::2::4::978300000\n"))
    report = next(r for r in tables.reports if r.file == "ratings.dat")
    assert report.first_bad == [(7, "time out of range")]
    assert tables.interactions["ts"].min() == 978_300_000 and len(tables.interactions) == 7


def test_movielens_extreme_but_valid_times_are_kept(tmp_path):
    tables = read_movielens(ml1m(tmp_path, GOOD_ML + "3::1::4::-62135596800\n"
                                                     "3::2::4::253402300799\n"))
    assert tables.interactions["ts"].tolist()[-2:] == [-62_135_596_800, 253_402_300_799]


# --------------------------------------------------------------------------- 5: MovieLens files
@pytest.mark.parametrize("layout", ["ml-1m", "ml-100k"])
@pytest.mark.parametrize("member", ["users", "items", "ratings"])
def test_movielens_empty_member_is_one_message(tmp_path, layout, member):
    if layout == "ml-1m":
        names = {"ratings": "ratings.dat", "items": "movies.dat", "users": "users.dat"}
        files = {"ratings.dat": GOOD_ML, "movies.dat": "1::M (1995)::Comedy\n",
                 "users.dat": "1::M::25::4::12345\n"}
    else:
        names = {"ratings": "u.data", "items": "u.item", "users": "u.user"}
        files = {"u.data": "1\t1\t3\t978300000\n", "u.item": "1|M|x|x|u" + "|0" * 19 + "\n",
                 "u.user": "1|25|M|writer|12345\n"}
    files[names[member]] = "\n" if member == "ratings" else ""
    target = tmp_path / f"{layout}.zip"
    with zipfile.ZipFile(target, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{layout}/{name}", text)
    with pytest.raises(DataError, match=rf"{names[member]}.* is empty"):
        read_movielens(target)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_movielens_corrupt_member_is_one_message(tmp_path, compression):
    target = tmp_path / "ml-1m.zip"
    ratings = GOOD_ML * 40
    with zipfile.ZipFile(target, "w", compression=compression) as zf:
        zf.writestr("ml-1m/ratings.dat", ratings)
        zf.writestr("ml-1m/movies.dat", "1::M (1995)::Comedy\n")
        zf.writestr("ml-1m/users.dat", "1::M::25::4::12345\n")
        info = zf.getinfo("ml-1m/ratings.dat")
    data = bytearray(target.read_bytes())
    at = info.header_offset + 30 + len(info.filename) + 10
    data[at:at + 4] = b"\xff\xff\xff\xff" if compression == zipfile.ZIP_DEFLATED else b"9999"
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"ml-1m\.zip: ml-1m/ratings\.dat is corrupt"):
        read_movielens(target)


# --------------------------------------------------------------------------- 6: compressed tables
def _compressed(tmp_path: Path, suffix: str, rows: int, damage: str) -> Path:
    text = ("u,i,t\n" + "".join(f"c{k},p{k % 20},{T0 + k}\n" for k in range(rows))).encode()
    packed = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[suffix](text)
    if damage == "truncated":
        packed = packed[:len(packed) // 2]
    else:  # a run of garbage in the middle of the compressed stream
        mid = len(packed) // 2
        packed = packed[:mid] + bytes(range(7, 71)) + packed[mid + 64:]
    path = tmp_path / f"orders.csv{suffix}"
    path.write_bytes(packed)
    return path


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("rows", [30, 200_000])
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_compressed_table_names_the_file(tmp_path, suffix, rows, damage):
    path = _compressed(tmp_path, suffix, rows, damage)
    params = TableParams(user_col="u", item_col="i", time_col="t")
    with pytest.raises(DataError, match=rf"cannot read .*orders\.csv\{suffix}"):
        table_columns(path, params)
        read_interactions(path, params, strict=False)


def test_corrupt_zip_table_names_the_file(tmp_path):
    path = tmp_path / "orders.csv.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("orders.csv", "u,i,t\n" + "".join(f"c{k},p{k},{T0 + k}\n"
                                                      for k in range(50)))
    data = bytearray(path.read_bytes())
    data[60:64] = b"XXXX"
    path.write_bytes(bytes(data))
    params = TableParams(user_col="u", item_col="i", time_col="t")
    with pytest.raises(DataError, match=r"cannot read .*orders\.csv\.zip"):
        table_columns(path, params)
        read_interactions(path, params, strict=False)


def _card(root: Path, file: str) -> None:
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    (root / "datasets" / "shop.toml").write_text(
        'description = "x"\nreader = "table"\nprotocol = "din"\nversion = 1\n[[sources]]\n'
        f'role = "interactions"\nfile = "../data/{file}"\n[reader_params]\nuser_col = "u"\n'
        'item_col = "i"\ntime_col = "t"\n[fields]\nuser = ["user_id"]\ncontext = ["year"]\n')


def test_small_truncated_gzip_is_not_aborted(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ctrbench.cli import main

    (tmp_path / "data").mkdir()
    _compressed(tmp_path / "data", ".gz", 30, "truncated")
    _card(tmp_path, "orders.csv.gz")
    monkeypatch.setenv("CTRBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTRBENCH_CARDS", str(tmp_path))
    result = CliRunner().invoke(main, ["prepare", "shop"])
    assert result.exit_code == 1
    assert "Aborted" not in result.output
    assert "cannot read" in result.output and "orders.csv.gz" in result.output
    assert "Compressed file ended" in result.output


# --------------------------------------------------------------------------- 10: unreadable
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@functools.cache
def _nobody_imports_ctrbench() -> bool:
    """Whether uid 65534 can import ctrbench with this interpreter (not from tox's private
    ``.tox``, mode 0700)."""
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import ctrbench.cli"],
                           capture_output=True, timeout=120)
    return probe.returncode == 0


def _as_nobody(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``ctrbench ARGS`` as an ordinary user (uid 65534 when the tests run as root)."""
    command = [sys.executable, "-m", "ctrbench.cli", *args]
    if os.geteuid() == 0:  # setpriv, not Popen(user=): the interpreter may live under /root
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        if not _nobody_imports_ctrbench():
            pytest.skip("an ordinary user cannot import ctrbench from this environment")
        command = [*NOBODY, *command]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env},
                          timeout=300, cwd=env["CTRBENCH_CARDS"])


@pytest.fixture
def shared_dir():
    """A directory an ordinary user can reach (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="ctrbench-unreadable-"))
    root.chmod(0o777)
    yield root
    shutil.rmtree(root)


def _unreadable(path: Path) -> None:
    path.chmod(0)
    if os.geteuid() != 0 and os.access(path, os.R_OK):
        pytest.skip("this user reads files whatever their mode")


def test_unreadable_input_file_says_cannot_read(shared_dir):
    (shared_dir / "data").mkdir()
    (shared_dir / "data" / "orders.csv").write_text(
        "u,i,t\n" + "".join(f"c{k % 4},p{k},{T0 + k}\n" for k in range(24)))
    _card(shared_dir, "orders.csv")
    for p in shared_dir.rglob("*"):
        p.chmod(0o777 if p.is_dir() else 0o666)
    _unreadable(shared_dir / "data" / "orders.csv")
    env = {"CTRBENCH_HOME": str(shared_dir / "home"), "CTRBENCH_CARDS": str(shared_dir)}
    result = _as_nobody(["prepare", "shop"], env)
    assert result.returncode == 1, result.stderr
    assert "cannot read" in result.stderr and "orders.csv: Permission denied" in result.stderr
    assert "cannot write" not in result.stderr and "free some space" not in result.stderr


def test_unreadable_file_in_the_raw_cache_says_cannot_read(shared_dir):
    mirror = shared_dir / "mirror"
    mirror.mkdir()
    write_gz(mirror / "Magazine_Subscriptions_5.json.gz",
             [review("2018", k % 40) for k in range(200)])
    write_gz(mirror / "meta_Magazine_Subscriptions.json.gz", [meta("2018", k) for k in range(40)])
    for p in shared_dir.rglob("*"):
        p.chmod(0o777 if p.is_dir() else 0o666)
    env = {"CTRBENCH_HOME": str(shared_dir / "home"), "CTRBENCH_CARDS": str(shared_dir)}
    fetched = _as_nobody(["download", "magazines-2018", "--from", str(mirror)], env)
    assert fetched.returncode == 0, fetched.stderr
    cached = shared_dir / "home" / "raw" / "magazines-2018" / "Magazine_Subscriptions_5.json.gz"
    _unreadable(cached)
    result = _as_nobody(["prepare", "magazines-2018"], env)
    assert result.returncode == 1, result.stderr
    assert "cannot read" in result.stderr and "Permission denied" in result.stderr
    assert "Magazine_Subscriptions_5.json.gz" in result.stderr
    assert "cannot write" not in result.stderr


# --------------------------------------------------------------------------- 13: BOM
@pytest.mark.parametrize("fmt", ["2014", "2018", "2023"])
def test_leading_bom_loses_no_line(tmp_path, fmt):
    reviews = write_gz(tmp_path / "r.json.gz", [review(fmt, k) for k in range(5)], prefix=BOM)
    metas = write_gz(tmp_path / "m.json.gz", [meta(fmt, k) for k in range(5)], prefix=BOM)
    tables = read_amazon(reviews, metas, category_rule="last_of_last", strict=True)
    assert [r.bad for r in tables.reports] == [0, 0]
    assert tables.interactions["item"].tolist() == [f"I{k}" for k in range(5)]
    assert tables.items["category"].tolist() == [f"C{k}" for k in range(5)]


# --------------------------------------------------------------------------- 14: 2014 meta
@pytest.mark.parametrize("line", [
    """{'asin': 'A0', 'title': "see 'categories': [['Hack']] here"}""",
    """{'asin': 'A0', 'title': "x, 'categories': [['Hack']]", 'price': 1.0}""",
    """{'asin': 'A0', 'title': "x, 'categories': [['Hack']]"}""",
    """{"asin": "A0", "title": "see 'categories': [['Hack']], here"}""",
])
def test_2014_meta_category_inside_a_string_is_not_a_category(line):
    assert parse_meta_line(line) == ("A0", [])
    assert meta_category(line.encode(), "2014", "last_of_last") == ("A0", "<unknown>")


def test_2014_meta_asin_inside_a_string_is_not_the_key():
    line = """{'title': "x, 'asin': 'FAKE'", 'categories': [['C']]}"""
    with pytest.raises(ValueError, match="missing field 'asin'"):
        parse_meta_line(line)


def test_2014_meta_real_category_after_a_quoted_decoy():
    line = """{'asin': 'A0', 'title': "Bob's 'categories' \\"x\\"", 'categories': [['R', 'S']]}"""
    assert parse_meta_line(line) == ("A0", [["R", "S"]])


def test_a_refused_read_is_told_from_a_refused_write(tmp_path, monkeypatch):
    """The CLI's message for EACCES: "cannot read" when the named file exists and may not be
    opened for reading, "cannot write" otherwise (runs as root too: ``os.open`` is stubbed)."""
    from ctrbench import cli

    existing = tmp_path / "orders.csv"
    existing.write_text("u,i,t\n")
    refused = PermissionError(errno.EACCES, "Permission denied", str(existing))
    real_open = os.open

    def no_read(path, flags, *args):
        if str(path) == str(existing):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    assert not cli._unreadable(refused)  # readable: the refusal was a write
    monkeypatch.setattr(cli.os, "open", no_read)
    assert cli._unreadable(refused)
    missing = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "new.csv"))
    assert not cli._unreadable(missing)


def test_a_read_error_pandas_reports_as_a_system_error_names_the_file(tmp_path, monkeypatch):
    """pandas' C parser, warning about a bad line while the gzip read's CRC error was pending,
    raised ``SystemError: … returned a result with an exception set`` (seen under xdist, when
    the warning was the first of its worker): a traceback instead of "cannot read"."""
    from ctrbench.data.sources import table_chunks

    path = _compressed(tmp_path, ".gz", 200_000, "corrupt")  # a readable header

    def parser_fails(*args, **kwargs):
        try:
            raise gzip.BadGzipFile("CRC check failed 0x9b83b6f != 0xfd5a5579")
        except gzip.BadGzipFile:
            raise SystemError("<method 'rfind' of 'str' objects> returned a result with an "
                              "exception set") from None
        yield  # a generator, as the real one

    monkeypatch.setattr(table_chunks, "_csv_chunks", parser_fails)
    params = TableParams(user_col="u", item_col="i", time_col="t")
    with pytest.raises(DataError, match=r"cannot read .*orders\.csv\.gz.*CRC check failed"):
        read_interactions(path, params, strict=False)
