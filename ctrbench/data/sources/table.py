"""Your own interaction log as a dataset: CSV (optionally compressed) or parquet tables.

A card with ``reader = "table"`` names the files as sources (``file`` may be a path relative to
the card's directory, used in place) and maps their columns in ``[reader_params]``:

- source ``interactions`` (required): one row per event, columns ``user_col``, ``item_col``,
  ``time_col`` and optionally ``rating_col``. Time is unix time (numbers; ``time_unit`` "s" by
  default, or "ms", "us", "ns") or a date/time string parsed by pandas (``time_format``: a strftime
  format, also for integer columns; default: inferred once per file, day first or month first,
  whichever reads more of the first dates; when both read them alike, the first date of the
  file that only one reads decides, a warning when none does; time zones are converted to
  UTC, naive times are taken as UTC). Integers of which more than half in the first chunk are
  valid YYYYMMDD dates (20140523; as unix seconds, 1970) are read as dates, with a warning,
  unless ``time_unit`` is set; a number anywhere in the file that is no such date is then a
  DataError naming its line. Read as seconds that the card does not declare, a file holding
  both a YYYYMMDD date and a time from 2001 on (>= 10^9 s) is a DataError naming both lines.
- source ``items`` (optional): ``item_col`` and ``category_col``; every other column is kept as a
  categorical item attribute. Without an items file, ``category_col`` is a column of the
  interactions table (an item's first category is used; a name found in neither is a
  CardError); without ``category_col``, every category is ``<unknown>``.
- source ``users`` (optional): ``user_col`` and any categorical columns (e.g. gender, age group),
  each usable as a user field in the card's ``[fields] user = [...]``.
- ``sep`` (CSV delimiter; default "," or tab for ``.tsv``), ``encoding`` (default utf-8) and
  ``quoting`` ("minimal", the default: ``"`` quotes fields; "none": quotes are plain data).

Files are read in chunks (:mod:`ctrbench.data.sources.table_chunks`), so memory is bounded by
the kept columns. Malformed rows are counted in the :class:`ReadReport` with their file line
(the CSV header is line 1; for parquet the 1-based row) and skipped, or raised with ``strict``:
a missing user/item/time, a non-numeric rating or one that is not finite in float32 (inf, 1e39:
"rating not finite"; an empty rating is kept as NaN), more fields than the header, and a time that
cannot be read: numeric times (the column is numeric when at least half of the first chunk's
values are numbers) that are not numbers, not finite, or outside years 1..9999; date strings
pandas cannot parse. ``line`` in the interactions table is the 0-based data row (file line
minus 2 for CSV).
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.cards import DatasetCard, check_keys
from ctrbench.data.canonical import (
    CanonicalTables,
    ReadReport,
    rating_overflows,
    time_out_of_range,
)
from ctrbench.data.features import UNKNOWN_CATEGORY
from ctrbench.data.sources import (
    DECOMPRESS_ERRORS,
    RATING_NOT_FINITE,
    READERS,
    cannot_read,
)
from ctrbench.data.sources.table_chunks import Chunk, encoding_hint, is_parquet
from ctrbench.data.sources.table_chunks import iter_chunks as _iter_chunks
from ctrbench.errors import CardError, DataError

log = logging.getLogger(__name__)

MISSING_VALUE = "<missing>"  # a users/items attribute left empty in the user's table
PARAM_KEYS = ("user_col", "item_col", "time_col", "rating_col", "category_col", "time_unit",
              "time_format", "sep", "encoding", "quoting")
REQUIRED_KEYS = ("user_col", "item_col", "time_col")
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
DATE_GUESSES = 20  # distinct first dates a format is guessed from
DATE_SAMPLE = 2_000  # distinct first dates the guesses are tried on
YYYYMMDD_RANGE = (19_000_101, 21_001_231)  # integer times read as dates when all are dates
#: unix seconds from September 2001 on: in a column of undeclared seconds that also holds
#: YYYYMMDD dates (August 1970 as seconds), two formats are mixed (a relative clock of seconds
#: since a log began stays below it for 31 years)
MODERN_SECONDS = 1_000_000_000


@dataclass(frozen=True)
class TableParams:
    """``[reader_params]`` of a table card, validated."""

    user_col: str
    item_col: str
    time_col: str
    rating_col: str = ""
    category_col: str = ""
    time_unit: str = ""  # "" = "s", not declared: YYYYMMDD integers are then read as dates
    time_format: str = ""
    sep: str = ""
    encoding: str = "utf-8"
    quoting: str = "minimal"

    @classmethod
    def from_card(cls, card: DatasetCard) -> TableParams:
        where = f"dataset card {card.name!r} [reader_params]"
        check_keys(where, card.reader_params, PARAM_KEYS)
        missing = [k for k in REQUIRED_KEYS if not card.reader_params.get(k)]
        if missing:
            raise CardError(f"{where}: the table reader needs {', '.join(missing)}",
                            hint='e.g. user_col = "user_id", item_col = "item_id", '
                                 'time_col = "timestamp"')
        params = cls(**{k: str(v) for k, v in card.reader_params.items()})
        if params.time_unit and params.time_unit not in TIME_UNITS:
            raise CardError(f"{where}: time_unit must be one of {', '.join(TIME_UNITS)}")
        if params.quoting not in QUOTING:
            raise CardError(f"{where}: quoting must be one of {', '.join(QUOTING)}")
        return params


# --------------------------------------------------------------------------- chunked reading
_is_parquet = is_parquet


def _sep(path: Path, params: TableParams) -> str:
    if params.sep:
        return params.sep
    return "\t" if ".tsv" in path.suffixes else ","


def table_columns(path: Path, params: TableParams) -> list[str]:
    """Column names of a CSV or parquet file (reads only the header / schema)."""
    try:
        if _is_parquet(path):
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        header = pd.read_csv(path, sep=_sep(path, params), nrows=0, encoding=params.encoding,
                             quoting=QUOTING[params.quoting])
        return [str(c) for c in header.columns]
    except UnicodeDecodeError:
        raise DataError(f"{path.name}: line 1 (the header): not valid {params.encoding} text",
                        hint=encoding_hint(path)) from None
    except (PermissionError, *DECOMPRESS_ERRORS) as exc:
        raise cannot_read(path, exc) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the header of {path}: {exc}") from None
    except ImportError:
        raise DataError(f"{path.name}: reading parquet needs pyarrow",
                        hint="pip install 'ctrbench[parquet]'") from None


def require_columns(path: Path, role: str, needed: Mapping[str, str],
                    params: TableParams) -> list[str]:
    """Check that ``path`` has the columns ``needed`` (param name -> column); return all columns."""
    found = table_columns(path, params)
    missing = {param: col for param, col in needed.items() if col not in found}
    if missing:
        named = ", ".join(f"{col!r} (reader_params.{param})" for param, col in missing.items())
        hint = f"columns found: {', '.join(found) or '(none)'}"
        for sep in (";", "\t", "|", ","):  # one column holding them all: another delimiter
            if len(found) == 1 and all(c in found[0].split(sep) for c in needed.values()):
                hint += (f"; the file looks {sep!r}-separated: set [reader_params] "
                         f"sep = {json.dumps(sep)}")
                break
        raise CardError(f"{role} table {path.name}: missing column(s) {named}", hint=hint)
    return found


def iter_chunks(path: Path, columns: Sequence[str], params: TableParams,
                text_columns: Sequence[str] | None = None) -> Iterator[Chunk]:
    """``columns`` of ``path`` in chunks with their file lines (see ``table_chunks``)."""
    return _iter_chunks(path, columns, sep=_sep(path, params), encoding=params.encoding,
                        quoting=QUOTING[params.quoting], text_columns=text_columns)


def _text(values: pd.Series) -> pd.Series:
    """Strings with surrounding blanks removed; missing or empty -> missing (NaN/NA).

    Whole numbers of a float column (a parquet integer column with a null comes back as
    float64) are written as integers, value by value: id 5 is "5", as in a CSV file, not "5.0".
    """
    if pd.api.types.is_float_dtype(values):
        numbers = values.to_numpy(np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (
                np.abs(numbers) < 2.0**63)
        text = values.astype(str).to_numpy(dtype=object)
        text[whole] = numbers[whole].astype(np.int64).astype(str)
        values = pd.Series(text, index=values.index).where(values.notna())
    text = values.astype(str).where(values.notna()).str.strip()
    return text.where(text.str.len() > 0)


def _numbers(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(float64 values with NaN where not a number, mask of values present but not numbers)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64"), np.zeros(len(values), dtype=bool)
    text = _text(values)
    numbers = pd.to_numeric(text, errors="coerce").astype("float64")
    return numbers, (numbers.isna() & text.notna()).to_numpy()


def _date_format(text: pd.Series) -> tuple[str | None, str | None]:
    """(the strftime format for every date of the file, a rival), chosen once on the first
    chunk: among the formats pandas guesses from its first distinct values (month first and
    day first), the one that parses most of them (ties: pandas' own guess from the first
    value). Pandas alone guessed per chunk from one value, so "01/02/2023" made every later
    day > 12 unparseable and the same string could mean two dates in two chunks, and a date
    without its time ("2023-01-09") among ISO times was unparseable.

    The rival is a format that parses as many of those values and reads some of them as other
    dates (every day <= 12: month first or day first?); None when the choice is clear."""
    from pandas.tseries.api import guess_datetime_format

    values = pd.unique(text.dropna())[:DATE_SAMPLE]
    candidates: list[str] = []
    for value in values[:DATE_GUESSES]:
        for dayfirst in (False, True):
            with warnings.catch_warnings():  # "Parsing dates in %d/%m/%Y format when ..."
                warnings.simplefilter("ignore", UserWarning)
                fmt = guess_datetime_format(str(value), dayfirst=dayfirst)
            if fmt is not None and fmt not in candidates:
                candidates.append(fmt)
    if any(fmt.startswith("%Y-%m-%d") for fmt in candidates):
        candidates.append("ISO8601")  # ISO dates with and without a time or an offset
    sample = pd.Series(values, dtype=object)
    best, best_parsed, best_seconds, rival = None, 0, None, None
    for fmt in candidates:
        seconds = _parse_dates(sample, fmt)
        parsed = int(np.isfinite(seconds).sum())
        if parsed > best_parsed:
            best, best_parsed, best_seconds, rival = fmt, parsed, seconds, None
        elif (parsed == best_parsed > 0 and rival is None
              and not np.array_equal(seconds, best_seconds, equal_nan=True)):
            rival = fmt
    return best, rival


def _date_seconds(text: pd.Series, params: TableParams, fmt: str | None = None) -> np.ndarray:
    """Date/time strings -> unix seconds (NaN where unparseable or out of pandas' range)."""
    return _parse_dates(text, params.time_format or fmt)


def _parse_dates(text: pd.Series, fmt: str | None) -> np.ndarray:
    """Unix seconds of ``text`` in format ``fmt`` (None: pandas guesses), NaN where not."""
    try:
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format=fmt)
        return _seconds_from_datetimes(parsed).to_numpy(np.float64)
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        pass  # one odd value broke the vectorised parse: parse the distinct values one by one
    seconds = {}
    for value in pd.unique(text.dropna()):
        try:
            stamp = pd.Timestamp(pd.to_datetime(value, utc=True, format=fmt))
            seconds[value] = float(np.floor(stamp.timestamp()))
        except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
            seconds[value] = np.nan
    return text.map(seconds).to_numpy(np.float64, na_value=np.nan)


def _seconds(raw: pd.Series, params: TableParams, numeric: bool, date_format: str | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unix seconds as float, NaN where unreadable; mask of values that are not numbers or
    dates; mask of numbers out of range). Missing values may be flagged: the caller reports
    them as missing.

    Numeric times outside years 1..9999 or not finite are out of range (issue 12 D14).
    """
    if pd.api.types.is_datetime64_any_dtype(raw):  # parquet timestamp column
        seconds = _seconds_from_datetimes(raw).to_numpy(np.float64)
        return seconds, np.zeros(len(raw), dtype=bool), np.zeros(len(raw), dtype=bool)
    if numeric:
        values, not_number = _numbers(raw)
        with np.errstate(invalid="ignore"):
            seconds = np.floor(values.to_numpy(np.float64) / TIME_UNITS[params.time_unit or "s"])
    else:
        seconds = _date_seconds(_text(raw), params, date_format)
        not_number = np.isnan(seconds)
    out_of_range = time_out_of_range(seconds) & ~not_number
    return np.where(out_of_range, np.nan, seconds), not_number, out_of_range


def _seconds_from_datetimes(values: pd.Series) -> pd.Series:
    if values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    seconds = (values - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return np.floor(seconds.astype("float64"))


def _mostly_numeric(values: pd.Series) -> bool:
    """Numeric times when at least half of the present values are numbers (a stray "abc"
    or "nan" is then one malformed line, not a reason to parse every number as a date)."""
    if pd.api.types.is_numeric_dtype(values):
        return True
    present = _text(values).dropna()
    return len(present) > 0 and bool(pd.to_numeric(present, errors="coerce").notna().mean()
                                     >= 0.5)


def _yyyymmdd(values: pd.Series) -> bool:
    """Whether the numbers are evidently dates written as YYYYMMDD: more than half of the
    present ones are valid such dates (19000101..21001231; as unix seconds they would all fall
    in 1970). The others are then refused, not a reason to read every time as seconds."""
    numbers = _numbers(values)[0]
    present = int(numbers.notna().sum())
    if int(numbers.between(*YYYYMMDD_RANGE).sum()) * 2 <= present:  # no parse for seconds
        return False
    odd = _not_yyyymmdd(values, _parse_dates(_text(values), "%Y%m%d"))
    return int(odd.sum()) * 2 < present


def _not_yyyymmdd(values: pd.Series, seconds: np.ndarray) -> np.ndarray:
    """Mask of the numbers of ``values`` that are no date written as YYYYMMDD;
    ``seconds``: ``values`` read as "%Y%m%d" (NaN where they are not)."""
    numbers = _numbers(values)[0].to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        date = ((numbers >= YYYYMMDD_RANGE[0]) & (numbers <= YYYYMMDD_RANGE[1])
                & (numbers % 1 == 0) & np.isfinite(seconds))
    return ~np.isnan(numbers) & ~date


@dataclass
class TimeReading:
    """How the time column is read, decided on its first values and held to on every row.

    ``rival``: another date format that reads every date met so far as well as ``fmt``, as
    other dates (every day <= 12); ``ambiguity`` is the warning given if no date of the file
    settles it. ``yyyymmdd``: integers taken for YYYYMMDD dates (the card does not say so)."""

    numeric: bool = False
    fmt: str | None = None
    rival: str | None = None
    ambiguity: str = ""
    yyyymmdd: bool = False


def _time_reading(raw: pd.Series, params: TableParams, file: str) -> TimeReading:
    """How to read the time column, from its first values; says on stderr what it assumed
    where the card does not say it (YYYYMMDD integers read as dates)."""
    col = params.time_col
    if pd.api.types.is_datetime64_any_dtype(raw) or params.time_format:
        return TimeReading()
    if _mostly_numeric(raw):
        if params.time_unit or not _yyyymmdd(raw):
            return TimeReading(numeric=True)
        log.warning("%s: the time column %r holds YYYYMMDD integers (e.g. %s), not unix "
                    "seconds (all in 1970): read as dates; say so with [reader_params] "
                    'time_format = "%%Y%%m%%d", or time_unit = "s" if they are seconds',
                    file, col, _text(raw).dropna().iloc[0])
        return TimeReading(fmt="%Y%m%d", yyyymmdd=True)
    text = _text(raw)
    fmt, rival = _date_format(text)
    if rival is None or fmt.startswith(("%Y", "ISO")):  # year first: month, day
        return TimeReading(fmt=fmt)
    sample = pd.Series(pd.unique(text.dropna())[:DATE_SAMPLE], dtype=object)
    seconds = _parse_dates(sample, fmt)
    at = int(np.flatnonzero(np.isfinite(seconds))[0])  # a tie: some parse
    day = pd.Timestamp(seconds[at], unit="s").strftime("%Y-%m-%d")
    return TimeReading(fmt=fmt, rival=rival, ambiguity=(
        f'{file}: the dates of the time column {col!r} read as "{fmt}" and as "{rival}" '
        f'alike (no date of the file has a day above 12): read as "{fmt}" ({sample[at]} is '
        f'{day}); set [reader_params] time_format = "{rival}" if the other order is meant'))


class _TimeColumn:
    """The time column of one file, read chunk by chunk under one :class:`TimeReading`.

    An open day/month order is settled by the first date that only one of the two formats
    reads (the chunks read before it are then read again from their other reading, kept
    until then: 8 bytes a row); a number that is no YYYYMMDD date, where the first values
    were evidently such dates, is a DataError, in the first chunk as in any later one."""

    def __init__(self, params: TableParams, file: str):
        self.params, self.file = params, file
        self.reading: TimeReading | None = None
        self._rival: np.ndarray | None = None  # this chunk's other reading while open
        self._open: list[tuple[pd.DataFrame, np.ndarray]] = []  # (frame, its other ts)
        # undeclared seconds: the first YYYYMMDD date and the first modern time, (line, text)
        self._first_date: tuple[int, str] | None = None
        self._first_modern: tuple[int, str] | None = None

    def read(self, raw: pd.Series, present: np.ndarray, lines: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seconds, unparseable, out of range) of one chunk (see :func:`_seconds`)."""
        if self.reading is None and present.any():  # decided once, on the first values
            self.reading = _time_reading(raw, self.params, self.file)
        reading = self.reading or TimeReading()
        read = _seconds(raw, self.params, reading.numeric, reading.fmt)
        if reading.yyyymmdd:
            self._refuse_non_yyyymmdd(raw, read[0], lines)
        elif reading.numeric and not self.params.time_unit:
            self._refuse_mixed_seconds(raw, lines)
        self._rival = None
        return self._settle(raw, read) if reading.rival else read

    def _settle(self, raw: pd.Series, read: tuple) -> tuple:
        """The first date that only one order reads decides it for the whole file."""
        reading = self.reading
        other = _seconds(raw, self.params, False, reading.rival)
        one_way = np.flatnonzero(read[1] != other[1])
        if not len(one_way):
            self._rival = other[0]
            return read
        if read[1][one_way[0]]:  # the other order reads it: so it reads every date so far
            for frame, ts in self._open:
                frame["ts"] = ts
            reading.fmt, read = reading.rival, other
        reading.rival, self._open = None, []
        return read

    def _refuse_non_yyyymmdd(self, raw: pd.Series, seconds: np.ndarray,
                             lines: np.ndarray) -> None:
        bad = np.flatnonzero(_not_yyyymmdd(raw, seconds))
        if len(bad):
            raise DataError(
                f"{self.file}: line {int(lines[bad[0]])}: the time {_text(raw).iloc[bad[0]]} "
                f"(column {self.params.time_col!r}) is not a YYYYMMDD date, though every time "
                "before it was one and was read as a date",
                hint='say what the times are: [reader_params] time_unit = "s" if they are unix '
                     'seconds, or time_format = "%Y%m%d" (times that are not such dates are '
                     "then skipped as unparseable)")

    def _refuse_mixed_seconds(self, raw: pd.Series, lines: np.ndarray) -> None:
        """Times read as unix seconds that the card does not declare (half or fewer of the
        first chunk's numbers were YYYYMMDD dates): a file holding both a YYYYMMDD date and a
        time from 2001 on mixes two formats, whose dates would silently be August 1970; a
        DataError naming one line of each."""
        numbers = _numbers(raw)[0].to_numpy(np.float64)
        if self._first_modern is None:
            modern = np.flatnonzero(numbers >= MODERN_SECONDS)
            if len(modern):
                self._first_modern = (int(lines[modern[0]]), str(_text(raw).iloc[modern[0]]))
        if self._first_date is None:
            candidates = np.flatnonzero((numbers >= YYYYMMDD_RANGE[0])
                                        & (numbers <= YYYYMMDD_RANGE[1]))
            if len(candidates):  # parsed only where a date can be
                subset = raw.iloc[candidates]
                dates = np.flatnonzero(~_not_yyyymmdd(
                    subset, _parse_dates(_text(subset), "%Y%m%d")))
                if len(dates):
                    at = candidates[dates[0]]
                    self._first_date = (int(lines[at]), str(_text(raw).iloc[at]))
        if self._first_date is None or self._first_modern is None:
            return
        (date_line, date), (modern_line, modern) = self._first_date, self._first_modern
        as_seconds = pd.Timestamp(float(date), unit="s").strftime("%Y-%m-%d")
        raise DataError(
            f"{self.file}: the time column {self.params.time_col!r} mixes two formats: line "
            f"{date_line} holds {date}, a YYYYMMDD date (as unix seconds {as_seconds}), and "
            f"line {modern_line} holds {modern}, unix seconds",
            hint='say what the times are: [reader_params] time_unit = "s" reads every number '
                 'as unix seconds, time_format = "%Y%m%d" every one as a date (the others are '
                 "then skipped as unparseable); or fix the file")

    def keep(self, frame: pd.DataFrame, ok: np.ndarray) -> None:
        """Remember ``frame``'s other reading (its rows ``ok`` of the chunk) while open."""
        if self._rival is not None:
            self._open.append((frame, self._rival[ok].astype(np.int64)))

    def finish(self) -> None:
        """Warn once if no date of the file settled the day/month order."""
        if self.reading is not None and self.reading.rival:
            log.warning("%s", self.reading.ambiguity)


def _report_bad(report: ReadReport, rows: list[tuple[int, str]], strict: bool) -> None:
    for line, reason in sorted(rows):  # in file order, so --strict names the first
        report.add_bad(line, reason, strict)


# --------------------------------------------------------------------------- the three tables
def read_interactions(path: Path, params: TableParams, *, strict: bool,
                      category_in_log: bool = False) -> tuple[pd.DataFrame, ReadReport]:
    """The interactions table (canonical columns) and its report; ``category_in_log``: the
    card's ``category_col`` must be a column of this file (there is no items table), a
    CardError names it when it is not."""
    needed = {"user_col": params.user_col, "item_col": params.item_col,
              "time_col": params.time_col}
    if params.rating_col:
        needed["rating_col"] = params.rating_col
    found = require_columns(path, "interactions", needed, params)
    category_here = bool(params.category_col) and params.category_col in found
    if category_in_log and params.category_col and not category_here:
        raise CardError(f"interactions table {path.name}: missing column "
                        f"{params.category_col!r} (reader_params.category_col), and there is "
                        "no items table to take it from",
                        hint=f"columns found: {', '.join(found)}; fix the name, add the items "
                             'table as a source with role = "items", or set category_col = "" '
                             "(every category <unknown>)")
    columns = list(dict.fromkeys([*needed.values(),
                                  *([params.category_col] if category_here else [])]))
    report = ReadReport(file=path.name)
    data_start = 1 if _is_parquet(path) else 2  # the first data row's line number
    frames, times = [], _TimeColumn(params, path.name)
    text_columns = [c for c in columns if c not in (params.time_col, params.rating_col)]
    for chunk in iter_chunks(path, columns, params, text_columns):
        frame = chunk.frame
        report.lines += len(frame) + len(chunk.skipped)
        user, item = _text(frame[params.user_col]), _text(frame[params.item_col])
        raw_time = frame[params.time_col]
        time_present = (raw_time.notna() if pd.api.types.is_numeric_dtype(raw_time)
                        or pd.api.types.is_datetime64_any_dtype(raw_time)
                        else _text(raw_time).notna()).to_numpy()
        ts, unparseable, out_of_range = times.read(raw_time, time_present, chunk.lines)
        reason = np.full(len(frame), "", dtype=object)
        if params.rating_col:
            rating, not_number = _numbers(frame[params.rating_col])
            reason[rating_overflows(rating.to_numpy())] = RATING_NOT_FINITE
            reason[not_number] = "rating is not a number"
        else:
            rating = pd.Series(np.nan, index=frame.index)
        reason[out_of_range] = "time out of range"
        reason[unparseable] = "unparseable time"
        reason[~time_present] = "missing time"
        reason[item.isna().to_numpy()] = "missing item"
        reason[user.isna().to_numpy()] = "missing user"
        bad = reason != ""
        _report_bad(report, [(int(chunk.lines[i]), str(reason[i])) for i in np.flatnonzero(bad)]
                    + chunk.skipped, strict)
        ok = ~bad
        out = pd.DataFrame({
            "user": user[ok].astype(str).to_numpy(dtype=object),
            "item": item[ok].astype(str).to_numpy(dtype=object),
            "ts": ts[ok].astype(np.int64),
            "rating": rating[ok].to_numpy(dtype=np.float32),
            "line": chunk.lines[ok] - data_start,
        })
        if category_here:
            out["category"] = _text(frame[params.category_col])[ok].to_numpy(dtype=object)
        times.keep(out, ok)
        frames.append(out)
    times.finish()
    if not frames:
        raise DataError(f"{path.name}: the interactions table has no rows")
    return pd.concat(frames, ignore_index=True), report


def _read_attribute_table(path: Path, role: str, key_param: str, key_col: str,
                          extra_needed: Mapping[str, str], params: TableParams, *, strict: bool,
                          reserved: Sequence[str]) -> tuple[pd.DataFrame, ReadReport]:
    """A users or items table: the key column renamed to ``role``'s key, others as strings."""
    found = require_columns(path, role, {key_param: key_col, **extra_needed}, params)
    clash = [c for c in found if c in reserved and c not in (key_col, *extra_needed.values())]
    if clash:
        raise CardError(f"{role} table {path.name}: column(s) {', '.join(map(repr, clash))} "
                        f"would clash with the canonical {role} columns",
                        hint="rename them in the file")
    report = ReadReport(file=path.name)
    frames = []
    for piece in iter_chunks(path, found, params):
        chunk = piece.frame
        report.lines += len(chunk) + len(piece.skipped)
        key = _text(chunk[key_col])
        _report_bad(report, [(int(piece.lines[i]), f"missing {key_col}")
                             for i in np.flatnonzero(key.isna().to_numpy())] + piece.skipped,
                    strict)
        ok = key.notna().to_numpy()
        frame = pd.DataFrame({"key": key[ok].astype(str).to_numpy(dtype=object)})
        for col in found:
            if col != key_col:
                frame[col] = _text(chunk[col])[ok].fillna(MISSING_VALUE).astype(str).to_numpy(
                    dtype=object)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"key": []})
    return table.drop_duplicates("key", keep="first"), report


def _items_table(inter: pd.DataFrame, files: Mapping[str, Path], params: TableParams,
                 strict: bool, reports: list[ReadReport]) -> pd.DataFrame:
    items = pd.DataFrame({"item": pd.unique(inter["item"])})
    if "items" in files:
        if not params.category_col:
            raise CardError("an items table needs reader_params.category_col")
        table, report = _read_attribute_table(
            Path(files["items"]), "items", "item_col", params.item_col,
            {"category_col": params.category_col}, params, strict=strict,
            reserved=("item", "category"))
        reports.append(report)
        table = table.rename(columns={"key": "item", params.category_col: "category"})
        if len(items) and not items["item"].isin(table["item"]).any():
            table_ids = table["item"][:2].tolist()
            raise DataError(
                f"no item of the interactions is in the items table ({len(table):,} rows"
                + (f", ids like {table_ids}" if table_ids else "")
                + f"; the interactions' ids look like {items['item'][:2].tolist()})",
                hint="check the items table's file and its item id column "
                     "(every category would be <unknown>)")
        items = items.merge(table, on="item", how="left")
    elif "category" in inter.columns:
        first = inter.dropna(subset=["category"]).drop_duplicates("item", keep="first")
        items = items.merge(first[["item", "category"]], on="item", how="left")
    else:
        if not params.category_col:
            log.warning("no items table and no category column: every category is %s",
                        UNKNOWN_CATEGORY)
        items["category"] = UNKNOWN_CATEGORY
    items["category"] = items["category"].fillna(UNKNOWN_CATEGORY).replace(
        MISSING_VALUE, UNKNOWN_CATEGORY)
    return items.fillna(MISSING_VALUE)


def read_table(files: Mapping[str, Path], params: TableParams, *, strict: bool = False
               ) -> CanonicalTables:
    """Canonical tables from the ``interactions`` (+ ``items``, ``users``) files."""
    if "interactions" not in files:
        raise CardError("the table reader needs a source with role 'interactions'",
                        hint=f"sources given: {', '.join(sorted(files)) or '(none)'}")
    inter, report = read_interactions(Path(files["interactions"]), params, strict=strict,
                                      category_in_log="items" not in files)
    reports = [report]
    items = _items_table(inter, files, params, strict, reports)
    inter = inter.drop(columns=["category"], errors="ignore")
    users = None
    if "users" in files:
        table, users_report = _read_attribute_table(Path(files["users"]), "users", "user_col",
                                                    params.user_col, {}, params, strict=strict,
                                                    reserved=("user",))
        reports.append(users_report)
        users = table.rename(columns={"key": "user"})
        users = users[users["user"].isin(pd.unique(inter["user"]))].reset_index(drop=True)
    for r in reports:
        log.info("%s", r.summary())
    return CanonicalTables(interactions=inter, items=items, users=users, reports=reports)


@READERS.register("table")
def read(card: DatasetCard, files: Mapping[str, Path], *, strict: bool = False
         ) -> CanonicalTables:
    """The registered reader: the card's sources by role, columns from ``[reader_params]``."""
    return read_table(files, TableParams.from_card(card), strict=strict)
