"""The time column of a user's table (:mod:`ctrbench.data.sources.table`): how its first values
say it is written (unix time in ``time_unit``; date strings in one format, day or month first;
YYYYMMDD integers), held to chunk by chunk (:class:`TimeColumn`), and the value cleaning the
table reader shares (:func:`clean_text`, :func:`as_numbers`)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from ctrbench.data.canonical import time_out_of_range
from ctrbench.errors import DataError


class TableParams(Protocol):
    """What this module reads of a table card's ``[reader_params]``
    (:class:`ctrbench.data.sources.table.TableParams`)."""

    time_col: str
    time_unit: str  # "" = "s", not declared
    time_format: str

log = logging.getLogger("ctrbench.data.sources.table")  # the reader's warnings, under its name

TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
DATE_GUESSES = 20  # distinct first dates a format is guessed from
DATE_SAMPLE = 2_000  # distinct first dates the guesses are tried on
YYYYMMDD_RANGE = (19_000_101, 21_001_231)  # integer times read as dates when all are dates
#: unix seconds from September 2001 on: in a column of undeclared seconds that also holds
#: YYYYMMDD dates (August 1970 as seconds), two formats are mixed (a relative clock of seconds
#: since a log began stays below it for 31 years)
MODERN_SECONDS = 1_000_000_000


def clean_text(values: pd.Series) -> pd.Series:
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


def as_numbers(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(float64 values with NaN where not a number, mask of values present but not numbers)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64"), np.zeros(len(values), dtype=bool)
    text = clean_text(values)
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
        values, not_number = as_numbers(raw)
        with np.errstate(invalid="ignore"):
            seconds = np.floor(values.to_numpy(np.float64) / TIME_UNITS[params.time_unit or "s"])
    else:
        seconds = _date_seconds(clean_text(raw), params, date_format)
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
    present = clean_text(values).dropna()
    return len(present) > 0 and bool(pd.to_numeric(present, errors="coerce").notna().mean()
                                     >= 0.5)


def _yyyymmdd(values: pd.Series) -> bool:
    """Whether the numbers are evidently dates written as YYYYMMDD: more than half of the
    present ones are valid such dates (19000101..21001231; as unix seconds they would all fall
    in 1970). The others are then refused, not a reason to read every time as seconds."""
    numbers = as_numbers(values)[0]
    present = int(numbers.notna().sum())
    if int(numbers.between(*YYYYMMDD_RANGE).sum()) * 2 <= present:  # no parse for seconds
        return False
    odd = _not_yyyymmdd(values, _parse_dates(clean_text(values), "%Y%m%d"))
    return int(odd.sum()) * 2 < present


def _not_yyyymmdd(values: pd.Series, seconds: np.ndarray) -> np.ndarray:
    """Mask of the numbers of ``values`` that are no date written as YYYYMMDD;
    ``seconds``: ``values`` read as "%Y%m%d" (NaN where they are not)."""
    numbers = as_numbers(values)[0].to_numpy(np.float64)
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
                    file, col, clean_text(raw).dropna().iloc[0])
        return TimeReading(fmt="%Y%m%d", yyyymmdd=True)
    text = clean_text(raw)
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


class TimeColumn:
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
                f"{self.file}: line {int(lines[bad[0]])}: the time {clean_text(raw).iloc[bad[0]]} "
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
        numbers = as_numbers(raw)[0].to_numpy(np.float64)
        if self._first_modern is None:
            modern = np.flatnonzero(numbers >= MODERN_SECONDS)
            if len(modern):
                self._first_modern = (int(lines[modern[0]]), str(clean_text(raw).iloc[modern[0]]))
        if self._first_date is None:
            candidates = np.flatnonzero((numbers >= YYYYMMDD_RANGE[0])
                                        & (numbers <= YYYYMMDD_RANGE[1]))
            if len(candidates):  # parsed only where a date can be
                subset = raw.iloc[candidates]
                dates = np.flatnonzero(~_not_yyyymmdd(
                    subset, _parse_dates(clean_text(subset), "%Y%m%d")))
                if len(dates):
                    at = candidates[dates[0]]
                    self._first_date = (int(lines[at]), str(clean_text(raw).iloc[at]))
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
