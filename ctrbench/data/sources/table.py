"""Your own interaction log as a dataset: CSV (optionally compressed) or parquet tables.

A card with ``reader = "table"`` names the files as sources (``file`` may be a path relative to
the card's directory, used in place) and maps their columns in ``[reader_params]``:

- source ``interactions`` (required): one row per event, columns ``user_col``, ``item_col``,
  ``time_col`` and optionally ``rating_col``. Time is unix time (numbers; ``time_unit`` "s" by
  default, or "ms", "us", "ns") or a date/time string parsed by pandas (``time_format``: a strftime
  format, default: inferred; time zones are converted to UTC, naive times are taken as UTC).
- source ``items`` (optional): ``item_col`` and ``category_col``; every other column is kept as a
  categorical item attribute. Without an items file, ``category_col`` may be a column of the
  interactions table (an item's first category is used); without either, every category is
  ``<unknown>``.
- source ``users`` (optional): ``user_col`` and any categorical columns (e.g. gender, age group),
  each usable as a user field in the card's ``[fields] user = [...]``.
- ``sep`` (CSV delimiter; default "," or tab for ``.tsv``) and ``encoding`` (default utf-8).

CSV files are read in chunks of ``CHUNK_ROWS`` rows and parquet files by record batches, so memory
is bounded by the kept columns. Rows with a missing user/item/time, an unparseable time or a
non-numeric rating are malformed: counted in the :class:`ReadReport` (line numbers count the CSV
header as line 1; for parquet they are 1-based row numbers) and skipped, or raised with ``strict``.
``line`` in the interactions table is the 0-based data row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctrbench.cards import DatasetCard, check_keys
from ctrbench.data.canonical import CanonicalTables, ReadReport
from ctrbench.data.features import UNKNOWN_CATEGORY
from ctrbench.data.sources import READERS
from ctrbench.errors import CardError, DataError

log = logging.getLogger(__name__)

CHUNK_ROWS = 500_000
MISSING_VALUE = "<missing>"  # a users/items attribute left empty in the user's table
PARAM_KEYS = ("user_col", "item_col", "time_col", "rating_col", "category_col", "time_unit",
              "time_format", "sep", "encoding")
REQUIRED_KEYS = ("user_col", "item_col", "time_col")
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class TableParams:
    """``[reader_params]`` of a table card, validated."""

    user_col: str
    item_col: str
    time_col: str
    rating_col: str = ""
    category_col: str = ""
    time_unit: str = "s"
    time_format: str = ""
    sep: str = ""
    encoding: str = "utf-8"

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
        if params.time_unit not in TIME_UNITS:
            raise CardError(f"{where}: time_unit must be one of {', '.join(TIME_UNITS)}")
        return params


# --------------------------------------------------------------------------- chunked reading
def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


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
        header = pd.read_csv(path, sep=_sep(path, params), nrows=0, encoding=params.encoding)
        return [str(c) for c in header.columns]
    except (OSError, ValueError, UnicodeDecodeError) as exc:
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
        raise CardError(f"{role} table {path.name}: missing column(s) {named}",
                        hint=f"columns found: {', '.join(found) or '(none)'}")
    return found


def iter_chunks(path: Path, columns: Sequence[str], params: TableParams,
                text_columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """``columns`` of ``path`` in DataFrames of at most ``CHUNK_ROWS`` rows.

    CSV: ``text_columns`` (default: all) are read as strings, the others typed by pandas' C
    parser (numbers stay numbers); parquet: the stored types.
    """
    try:
        if _is_parquet(path):
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=list(columns)):
                yield batch.to_pandas()
            return
        as_text = columns if text_columns is None else text_columns
        reader = pd.read_csv(path, sep=_sep(path, params), usecols=list(columns),
                             dtype={c: str for c in as_text}, keep_default_na=False,
                             na_values=[""], chunksize=CHUNK_ROWS, encoding=params.encoding,
                             low_memory=False)
        with reader:
            yield from reader
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _text(values: pd.Series) -> pd.Series:
    """Strings with surrounding blanks removed; missing or empty -> missing (NaN/NA)."""
    text = values.astype(str).where(values.notna()).str.strip()
    return text.where(text.str.len() > 0)


def _numbers(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(float64 values with NaN where not a number, mask of values present but not numbers)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64"), np.zeros(len(values), dtype=bool)
    text = _text(values)
    numbers = pd.to_numeric(text, errors="coerce").astype("float64")
    return numbers, (numbers.isna() & text.notna()).to_numpy()


def _seconds_from_text(text: pd.Series, params: TableParams, numeric: bool) -> pd.Series:
    """Unix seconds (float, NaN where unparseable) from numbers or date/time strings."""
    if numeric:
        return np.floor(_numbers(text)[0] / TIME_UNITS[params.time_unit])
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format=params.time_format or None)
    return _seconds_from_datetimes(parsed)


def _seconds_from_datetimes(values: pd.Series) -> pd.Series:
    if values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    seconds = (values - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return np.floor(seconds.astype("float64"))


def _looks_numeric(values: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(values):
        return True
    present = values.dropna()
    return len(present) > 0 and bool(pd.to_numeric(present, errors="coerce").notna().all())


# --------------------------------------------------------------------------- the three tables
def read_interactions(path: Path, params: TableParams, *, strict: bool
                      ) -> tuple[pd.DataFrame, ReadReport]:
    """The interactions table (canonical columns) and its report."""
    needed = {"user_col": params.user_col, "item_col": params.item_col,
              "time_col": params.time_col}
    if params.rating_col:
        needed["rating_col"] = params.rating_col
    found = require_columns(path, "interactions", needed, params)
    category_here = bool(params.category_col) and params.category_col in found
    columns = list(dict.fromkeys([*needed.values(),
                                  *([params.category_col] if category_here else [])]))
    report = ReadReport(file=path.name)
    header_lines = 0 if _is_parquet(path) else 1
    frames, numeric_time = [], None
    text_columns = [c for c in columns if c not in (params.time_col, params.rating_col)]
    for chunk in iter_chunks(path, columns, params, text_columns):
        start = report.lines
        report.lines += len(chunk)
        row = np.arange(start, start + len(chunk), dtype=np.int64)
        user, item = _text(chunk[params.user_col]), _text(chunk[params.item_col])
        raw_time = chunk[params.time_col]
        if pd.api.types.is_datetime64_any_dtype(raw_time):  # parquet timestamp column
            time_present = raw_time.notna().to_numpy()
            ts = _seconds_from_datetimes(raw_time)
        else:
            numeric_dtype = pd.api.types.is_numeric_dtype(raw_time)
            time_text = raw_time if numeric_dtype else _text(raw_time)
            time_present = time_text.notna().to_numpy()
            if numeric_time is None and time_present.any():
                numeric_time = _looks_numeric(time_text)  # decided once, on the first values
            ts = _seconds_from_text(time_text, params, bool(numeric_time))
        reason = np.full(len(chunk), "", dtype=object)
        if params.rating_col:
            rating, not_number = _numbers(chunk[params.rating_col])
            reason[not_number] = "rating is not a number"
        else:
            rating = pd.Series(np.nan, index=chunk.index)
        reason[ts.isna().to_numpy() & time_present] = "unparseable time"
        reason[~time_present] = "missing time"
        reason[item.isna().to_numpy()] = "missing item"
        reason[user.isna().to_numpy()] = "missing user"
        bad = reason != ""
        for idx in np.flatnonzero(bad):  # malformed rows only
            report.add_bad(int(row[idx]) + 1 + header_lines, str(reason[idx]), strict)
        ok = ~bad
        frame = pd.DataFrame({
            "user": user[ok].astype(str).to_numpy(dtype=object),
            "item": item[ok].astype(str).to_numpy(dtype=object),
            "ts": ts[ok].to_numpy(dtype=np.int64),
            "rating": rating[ok].to_numpy(dtype=np.float32),
            "line": row[ok],
        })
        if category_here:
            frame["category"] = _text(chunk[params.category_col])[ok].to_numpy(dtype=object)
        frames.append(frame)
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
    header_lines = 0 if _is_parquet(path) else 1
    frames = []
    for chunk in iter_chunks(path, found, params):
        start = report.lines
        report.lines += len(chunk)
        key = _text(chunk[key_col])
        for idx in np.flatnonzero(key.isna().to_numpy()):
            report.add_bad(start + int(idx) + 1 + header_lines, f"missing {key_col}", strict)
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
        items = items.merge(table, on="item", how="left")
    elif "category" in inter.columns:
        first = inter.dropna(subset=["category"]).drop_duplicates("item", keep="first")
        items = items.merge(first[["item", "category"]], on="item", how="left")
    else:
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
    inter, report = read_interactions(Path(files["interactions"]), params, strict=strict)
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
